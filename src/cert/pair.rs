//! Reading a certificate/key pair from disk and deciding whether it may be served.
//!
//! [`load_pair`] is the one gate every certificate passes before it reaches the resolver,
//! whatever its source (files, the dev CA, ACME): the PEM parses, the key is one rustls
//! can sign with, the key matches the leaf, the leaf is within its validity, and it
//! covers every configured domain. Errors name the file and the reason; none of them
//! ever quotes key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pki_types::pem::{self, PemObject};
use pki_types::{CertificateDer, PrivateKeyDer};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::inspect::{CertSummary, rfc3339};
use super::read::{ReadError, read_pem_file};
use crate::config::Domain;
use crate::units::format_duration;

/// A validated pair, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub summary: CertSummary,
}

impl LoadedPair {
    /// The leaf certificate, DER: two loads of the same files compare equal on this.
    pub fn leaf_der(&self) -> &[u8] {
        self.key
            .cert
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    File(#[from] ReadError),
    #[error("reading {} and {} took longer than {}s", cert.display(), key.display(), seconds)]
    TimedOut {
        cert: PathBuf,
        key: PathBuf,
        seconds: u64,
    },
    #[error("{}: no PEM CERTIFICATE block found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate is not valid before {not_before} (in {wait}; is this machine's clock right?)", path.display())]
    NotYetValid {
        path: PathBuf,
        not_before: String,
        wait: String,
    },
    #[error("{}: the certificate expired at {not_after} ({ago} ago)", path.display())]
    Expired {
        path: PathBuf,
        not_after: String,
        ago: String,
    },
    #[error("{}: the certificate does not cover {domain} (it covers {covered})", path.display())]
    NotCovered {
        path: PathBuf,
        domain: String,
        covered: String,
    },
}

impl PairError {
    /// Is a file of the pair simply not there? (Nothing written yet, or deleted.)
    pub fn is_missing(&self) -> bool {
        matches!(self, PairError::File(e) if e.is_not_found())
    }

    /// Could this be a pair caught in the middle of being written (and worth a retry)?
    pub fn may_be_mid_write(&self) -> bool {
        matches!(
            self,
            PairError::File(ReadError::Io { .. })
                | PairError::NoCertificate { .. }
                | PairError::BadPem { .. }
                | PairError::BadCertificate { .. }
                | PairError::NoKey { .. }
                | PairError::KeyMismatch { .. }
        )
    }
}

/// A pair as PEM text, fresh from a CA and not yet stored: the chain (leaf first) and
/// its PKCS#8 key. Its `Debug` shows neither.
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PemPair { .. }")
    }
}

/// Reads `cert_path` and `key_path` and validates them as a pair for `domains` at `now`.
/// The key is loaded by `provider` (the caller's, as rustls' `CertifiedKey::from_der`
/// takes it), so that the pair signs with the crypto the listener uses.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    domains: &[Domain],
    now: SystemTime,
    provider: &CryptoProvider,
) -> Result<LoadedPair, PairError> {
    let cert_pem = read_pem_file(cert_path)?;
    let key_pem = read_pem_file(key_path)?;
    pair_from_pem(
        &cert_pem, &key_pem, cert_path, key_path, domains, now, provider,
    )
}

/// Validates PEM bytes as a pair; the paths only name the files in errors.
pub fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    domains: &[Domain],
    now: SystemTime,
    provider: &CryptoProvider,
) -> Result<LoadedPair, PairError> {
    pair_from_pem_with_skew(
        cert_pem,
        key_pem,
        cert_path,
        key_path,
        domains,
        now,
        Duration::ZERO,
        provider,
    )
}

/// Like [`pair_from_pem`], accepting a `not_before` up to `skew` after `now`: for a
/// certificate fresh from a CA that does not backdate, on a machine whose clock is a
/// little behind. `not_after` is checked against `now` itself, so a certificate with a
/// lifetime shorter than `skew` is still good.
// The bytes, the paths that name them in errors, and what they are checked against: a
// struct for them would only rename the arguments at its two callers.
#[allow(clippy::too_many_arguments)]
pub fn pair_from_pem_with_skew(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    domains: &[Domain],
    now: SystemTime,
    skew: Duration,
    provider: &CryptoProvider,
) -> Result<LoadedPair, PairError> {
    let chain = parse_chain(cert_pem, cert_path)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => PairError::NoKey {
            path: key_path.to_path_buf(),
        },
        // Never echo the key file's contents: describe the fault only.
        other => PairError::BadPem {
            path: key_path.to_path_buf(),
            reason: pem_reason(&other),
        },
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| PairError::BadKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(PairError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    let leaf = certified
        .cert
        .first()
        .map(|c| c.as_ref())
        .unwrap_or_default();
    let summary = CertSummary::from_der(leaf).map_err(|e| PairError::BadCertificate {
        path: cert_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if now + skew < summary.not_before {
        let wait = summary.not_before.duration_since(now).unwrap_or_default();
        return Err(PairError::NotYetValid {
            path: cert_path.to_path_buf(),
            not_before: rfc3339(summary.not_before),
            wait: format_duration(wait),
        });
    }
    if now > summary.not_after {
        let ago = now.duration_since(summary.not_after).unwrap_or_default();
        return Err(PairError::Expired {
            path: cert_path.to_path_buf(),
            not_after: rfc3339(summary.not_after),
            ago: format_duration(ago),
        });
    }
    if let Some(domain) = domains.iter().find(|d| !summary.covers(d)) {
        return Err(PairError::NotCovered {
            path: cert_path.to_path_buf(),
            domain: domain.to_string(),
            covered: summary.names(),
        });
    }
    Ok(LoadedPair {
        key: Arc::new(certified),
        summary,
    })
}

/// Every CERTIFICATE block in a PEM file, in order (leaf first).
pub fn parse_chain(
    pem_bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PairError> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError::BadPem {
            path: path.to_path_buf(),
            reason: pem_reason(&e),
        })?;
    if chain.is_empty() {
        return Err(PairError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            "a PEM section has no END line (truncated file?)".into()
        }
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        pem::Error::SectionTooLarge => "a PEM section is too large".into(),
        pem::Error::NoItemsFound => "no PEM items found".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair for `localhost` valid from `from` to `to` seconds after `now`.
    fn pair(now: SystemTime, from: i64, to: i64) -> (String, String) {
        let at = |offset: i64| {
            if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            }
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = at(from).into();
        params.not_after = at(to).into();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn check(
        cert: &str,
        key: &str,
        now: SystemTime,
        skew: Duration,
    ) -> Result<LoadedPair, PairError> {
        let domains = [Domain::parse("localhost").unwrap()];
        let (c, k) = (Path::new("cert.pem"), Path::new("key.pem"));
        pair_from_pem_with_skew(
            cert.as_bytes(),
            key.as_bytes(),
            c,
            k,
            &domains,
            now,
            skew,
            &crate::tls::provider(),
        )
    }

    #[test]
    fn the_skew_applies_to_not_before_only() {
        let now = SystemTime::now();
        let skew = Duration::from_secs(300);
        // A 4-minute certificate that starts a minute from now (a CA clock ahead of ours).
        let (cert, key) = pair(now, 60, 300);
        assert!(check(&cert, &key, now, skew).is_ok());
        let early = check(&cert, &key, now, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            early.contains("not valid before") && early.contains("(in "),
            "{early}"
        );
        // One that starts 6 minutes from now is not fresh, whatever the skew.
        let (cert, key) = pair(now, 360, 600);
        assert!(matches!(
            check(&cert, &key, now, skew),
            Err(PairError::NotYetValid { .. })
        ));
        // Expired means expired now, said relative to now.
        let (cert, key) = pair(now, -600, -120);
        let expired = check(&cert, &key, now, skew).unwrap_err().to_string();
        assert!(
            expired.contains("expired at") && expired.contains("(2m ago)"),
            "{expired}"
        );
    }
}
