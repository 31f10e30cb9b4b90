//! Provisioning: making sure every certificate that wssd issues itself exists on disk,
//! is valid and is not due for renewal. Today that is the local dev CA
//! (`source = "selfsigned"`); ACME slots in beside it. Provisioners only ever write files
//! (through [`crate::cert::store`]); the reloader picks the result up from disk like any
//! other change, so there is one path into the resolver.

pub mod schedule;

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cert::devca::{DevCa, DevCaError};
use crate::cert::inspect::CertSummary;
use crate::cert::pair::{self, LoadedPair};
use crate::cert::store::{self, StoreError};
use crate::config::CertificateConfig;

/// Lifetime of the leaves `source = "selfsigned"` issues (like Let's Encrypt's default).
pub const SELFSIGNED_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    DevCa(#[from] DevCaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the certificate just issued does not validate: {0}")]
    Invalid(#[from] pair::PairError),
}

/// What [`ensure_selfsigned`] found or did.
#[derive(Debug, Clone)]
pub enum Provisioned {
    /// The files on disk are valid, from the current CA and not due.
    Fresh(CertSummary),
    /// A new certificate was issued and written.
    Issued(CertSummary),
}

impl Provisioned {
    pub fn summary(&self) -> &CertSummary {
        match self {
            Provisioned::Fresh(s) | Provisioned::Issued(s) => s,
        }
    }
}

/// Issues a dev-CA certificate for `cert` unless a valid, current one is already on disk.
pub fn ensure_selfsigned(
    cert: &CertificateConfig,
    ca_dir: &Path,
    now: SystemTime,
) -> Result<Provisioned, ProvisionError> {
    let (ca, _) = DevCa::load_or_create(ca_dir)?;
    if let Ok(existing) = pair::load_pair(
        &cert.cert_file,
        &cert.key_file,
        &cert.domains,
        now,
        &crate::tls::provider(),
    ) {
        let due = schedule::renew_at(
            existing.summary.not_before,
            existing.summary.not_after,
            None,
        );
        if now < due && issued_by(&existing, &ca) {
            return Ok(Provisioned::Fresh(existing.summary));
        }
    }
    let issued = ca.issue(&cert.domains, SELFSIGNED_LIFETIME, cert.key_type)?;
    // Validate before writing: a bad issuance must never replace a working pair.
    let checked = pair::pair_from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        &cert.cert_file,
        &cert.key_file,
        &cert.domains,
        SystemTime::now(),
        &crate::tls::provider(),
    )?;
    store::write_pair(
        &cert.cert_file,
        &cert.key_file,
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )?;
    Ok(Provisioned::Issued(checked.summary))
}

/// Is `pair` signed by this CA (its chain carries the CA's certificate)? A pair from a CA
/// that has since been replaced would no longer be trusted.
fn issued_by(pair: &LoadedPair, ca: &DevCa) -> bool {
    let ca_der = pair::parse_chain(ca.cert_pem().as_bytes(), Path::new("ca.pem"))
        .ok()
        .and_then(|c| c.into_iter().next());
    match (pair.key.cert.get(1), ca_der) {
        (Some(issuer), Some(ca)) => issuer.as_ref() == ca.as_ref(),
        _ => false,
    }
}
