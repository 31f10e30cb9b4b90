//! `source = "selfsigned"`: certificates from the local dev CA (`ca_dir`), made here and
//! handed to the driver ([`super::driver`]) like any CA's.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cert::devca::{DevCa, DevCaError};
use crate::cert::inspect::CertSummary;
use crate::cert::pair::{self, LoadedPair, PemPair};
use crate::config::CertificateConfig;

/// Lifetime of the leaves `source = "selfsigned"` issues (like Let's Encrypt's default).
pub const SELFSIGNED_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum SelfsignedError {
    #[error(transparent)]
    DevCa(#[from] DevCaError),
    #[error("the certificate just issued does not validate: {0}")]
    Invalid(#[from] pair::PairError),
}

/// Issues a leaf for `cert` from the dev CA in `ca_dir` (made there if it has none),
/// checked like any other pair.
pub fn issue(
    cert: &CertificateConfig,
    ca_dir: &Path,
) -> Result<(PemPair, CertSummary), SelfsignedError> {
    let (ca, _) = DevCa::load_or_create(ca_dir)?;
    let issued = ca.issue(&cert.domains, SELFSIGNED_LIFETIME, cert.key_type)?;
    let checked = pair::pair_from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        &cert.cert_file,
        &cert.key_file,
        &cert.domains,
        SystemTime::now(),
        &crate::tls::provider(),
    )?;
    Ok((issued, checked.summary))
}

/// Is `pair` from the dev CA in `ca_dir` as it is now? A pair from a CA that has since
/// been replaced would no longer be trusted; a CA that cannot be read counts as another.
pub fn from_current_ca(pair: &LoadedPair, ca_dir: &Path) -> bool {
    let Ok((ca, _)) = DevCa::load_or_create(ca_dir) else {
        return false;
    };
    let ca_der = pair::parse_chain(ca.cert_pem().as_bytes(), Path::new("ca.pem"))
        .ok()
        .and_then(|c| c.into_iter().next());
    match (pair.key.cert.get(1), ca_der) {
        (Some(issuer), Some(ca)) => issuer.as_ref() == ca.as_ref(),
        _ => false,
    }
}
