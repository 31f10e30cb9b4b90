//! The persistent local development CA, and the leaf certificates it issues.
//!
//! Like mkcert: the CA (ECDSA P-256, `CA:TRUE, pathlen:0`, ten years) is made once in its
//! directory and reused by every later `wssd selfsigned` and `source = "selfsigned"`, so
//! a user trusts it once and every dev certificate after that just works. The CA key
//! never leaves its directory (mode 0700, key 0600).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::inspect::{CertSummary, rfc3339, sha256_fingerprint};
use super::pair::{PemPair, parse_chain};
use super::store::{self, CERT_MODE, KEY_MODE, PRIVATE_DIR_MODE, StoreError};
use crate::config::{Domain, KeyType};

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
/// Held (flock) while the CA is being made.
const LOCK_FILE: &str = ".lock";
/// Where the dev CA in `dir` keeps its private key.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(CA_KEY_FILE)
}

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The longest leaf lifetime Apple platforms accept from a user-trusted CA.
pub const MAX_LEAF_DAYS: u32 = 825;

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the dev CA file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the dev CA in {} is unusable: {reason}; remove that directory to make a new CA (and trust the new one)", dir.display())]
    Corrupt { dir: PathBuf, reason: String },
    #[error("the dev CA in {} expired at {not_after}; remove that directory to make a new CA (and trust the new one)", dir.display())]
    Expired { dir: PathBuf, not_after: String },
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{source} ({} is the default dev CA directory, under $XDG_DATA_HOME or ~/.local/share; choose another with `wssd selfsigned --ca-dir DIR` or ca_dir = \"DIR\" in wssd.toml)", dir.display())]
    DefaultDir {
        dir: PathBuf,
        source: Box<DevCaError>,
    },
}

/// The dev CA, loaded and ready to sign.
pub struct DevCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Loads the CA from `dir`, or creates it there if the directory has none.
    /// Returns the CA and whether it was just created.
    pub fn load_or_create(dir: &Path) -> Result<(DevCa, bool), DevCaError> {
        // The user may not know where the default is, nor that it can be chosen.
        DevCa::open(dir).map_err(|e| match e {
            DevCaError::Store(_) | DevCaError::Read { .. }
                if dir == crate::config::default_ca_dir() =>
            {
                DevCaError::DefaultDir {
                    dir: dir.to_path_buf(),
                    source: Box::new(e),
                }
            }
            e => e,
        })
    }

    fn open(dir: &Path) -> Result<(DevCa, bool), DevCaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        // The key is written first and the certificate last, each atomically: with the
        // certificate there, the CA is complete (and may be read without writing).
        if cert_path.exists() {
            return DevCa::load(dir).map(|ca| (ca, false));
        }
        store::ensure_dir(dir, PRIVATE_DIR_MODE)?;
        // Two wssd processes at first use (`wssd run` and `wssd trust` in two terminals)
        // would each make a CA, and one would sign with a key the other replaced: the
        // first to lock makes it, the other waits and loads it.
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(KEY_MODE)
            .open(&lock_path)
            .and_then(|file| file.lock().map(|()| file))
            .map_err(|source| DevCaError::Read {
                path: lock_path,
                source,
            })?;
        if cert_path.exists() || key_path.exists() {
            drop(lock);
            return DevCa::load(dir).map(|ca| (ca, false));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, ca_common_name());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wssd development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // Key first: a CA certificate on disk always has its key beside it.
        store::write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
        store::write_atomic(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
        drop(lock);
        DevCa::load(dir).map(|ca| (ca, true))
    }

    fn load(dir: &Path) -> Result<DevCa, DevCaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| DevCaError::Read { path, source })
        };
        let corrupt = |reason: String| DevCaError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key_pem = read(CA_KEY_FILE)?;
        let chain = parse_chain(cert_pem.as_bytes(), &dir.join(CA_CERT_FILE))
            .map_err(|e| corrupt(e.to_string()))?;
        let cert_der = chain[0].as_ref().to_vec();
        let summary = CertSummary::from_der(&cert_der).map_err(|e| corrupt(e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| corrupt(format!("{CA_KEY_FILE} is not a usable private key")))?;
        let spki_matches = x509_parser::parse_x509_certificate(&cert_der)
            .map(|(_, c)| {
                c.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
            })
            .unwrap_or(false);
        if !spki_matches {
            return Err(corrupt(format!(
                "{CA_KEY_FILE} does not match {CA_CERT_FILE}"
            )));
        }
        if SystemTime::now() > summary.not_after {
            return Err(DevCaError::Expired {
                dir: dir.to_path_buf(),
                not_after: rfc3339(summary.not_after),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&chain[0], key).map_err(|e| corrupt(e.to_string()))?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            issuer,
            not_after: summary.not_after,
        })
    }

    /// The CA certificate file users trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the CA certificate, colon-separated hex.
    pub fn fingerprint(&self) -> String {
        sha256_fingerprint(&self.cert_der)
    }

    /// Issues a leaf for `domains`, valid from a minute ago (for clock skew) for `lifetime`,
    /// but never past the CA's own expiry.
    pub fn issue(
        &self,
        domains: &[Domain],
        lifetime: Duration,
        key_type: KeyType,
    ) -> Result<PemPair, DevCaError> {
        let key = match key_type {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
            }
        };
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.subject_alt_names = domains
            .iter()
            .map(|d| match d {
                Domain::Dns(name) => Ok(SanType::DnsName(name.clone().try_into()?)),
                Domain::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = domains.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.to_string());
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wssd development certificate");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_type == KeyType::Rsa2048 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).min(self.not_after).into();
        params.serial_number = Some(random_serial());
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: format!("{}{}", leaf.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

/// 16 random bytes with the top bit clear, so the DER INTEGER stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG does not fail on Linux; a zero serial would still be a valid one.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6;
    SerialNumber::from_slice(&bytes)
}

/// "wssd development CA user@host", so a user can tell their machines' CAs apart in a
/// trust store.
fn ca_common_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("wssd development CA {user}@{host}")
}
