//! Where provisioning keeps the pairs it obtains, and finds the one it has. Today that is
//! the local directory of each certificate (`cert_file`/`key_file`, switched whole
//! through `..data`: [`crate::cert::store`]); the reloader and the watcher read the same
//! files, so there is one way into the resolver.

use std::time::SystemTime;

use crate::cert::pair::{self, LoadedPair, PemPair};
use crate::cert::store::{self, StoreError};
use crate::config::CertificateConfig;

pub trait Store: Send + Sync {
    /// The valid pair stored for `cert`, if there is one.
    fn current(&self, cert: &CertificateConfig) -> Option<LoadedPair>;
    /// Stores a new pair for `cert`, replacing the old one whole.
    fn save(&self, cert: &CertificateConfig, pair: &PemPair) -> Result<(), StoreError>;
}

/// The certificate's own files on this machine.
pub struct LocalDir;

impl Store for LocalDir {
    fn current(&self, cert: &CertificateConfig) -> Option<LoadedPair> {
        pair::load_pair(
            &cert.cert_file,
            &cert.key_file,
            &cert.domains,
            SystemTime::now(),
            &crate::tls::provider(),
        )
        .ok()
    }

    fn save(&self, cert: &CertificateConfig, pair: &PemPair) -> Result<(), StoreError> {
        store::write_pair(
            &cert.cert_file,
            &cert.key_file,
            pair.cert_pem.as_bytes(),
            pair.key_pem.as_bytes(),
        )
    }
}
