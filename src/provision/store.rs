//! Where provisioning keeps the pairs it obtains, and finds the one it has.
//!
//! [`LocalDir`] is the certificate's own files (`cert_file`/`key_file`, switched whole
//! through `..data`: [`crate::cert::store`]); the reloader and the watcher read the same
//! files, so there is one way into the resolver. A fleet's store
//! ([`crate::cluster::store`]) keeps the pair in the engine as well, and lets one replica
//! at a time obtain it ([`Store::claim`]).

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::state::CertState;
use crate::cert::pair::{self, LoadedPair, PemPair};
use crate::cert::store;
use crate::config::CertificateConfig;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Local(#[from] store::StoreError),
    #[error("the fleet's engine: {0}")]
    Engine(String),
    /// The lock was lost before the pair was published (a paused or cut-off replica):
    /// the pair is not installed anywhere.
    #[error(
        "the certificate's lock was lost (another replica may hold it now); the new pair was not published"
    )]
    LockLost,
}

/// The right to obtain a new pair for one certificate. In a fleet it is the
/// certificate's lock: `lost` is cancelled when it lapses, and dropping the claim gives
/// the lock up.
pub struct Claim {
    /// The lock's revision, which a publish must still find (0: no lock).
    pub fence: i64,
    pub lost: CancellationToken,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Claim {
    /// A claim that nobody else contends for.
    pub fn sole() -> Claim {
        Claim {
            fence: 0,
            lost: CancellationToken::new(),
            release: None,
        }
    }

    /// A lock with this fence; `release` runs when the claim is dropped.
    pub fn lock(
        fence: i64,
        lost: CancellationToken,
        release: Box<dyn FnOnce() + Send + Sync>,
    ) -> Claim {
        Claim {
            fence,
            lost,
            release: Some(release),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

pub trait Store: Send + Sync {
    /// The valid pair stored for `cert` on this machine, if there is one.
    fn current(&self, cert: &CertificateConfig) -> Option<LoadedPair>;

    /// Brings this machine's copy of `cert` up to the store's (a fleet's engine may hold
    /// a newer pair); the local directory has nothing to fetch.
    fn fetch<'a>(&'a self, _cert: &'a CertificateConfig) -> StoreFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The right to obtain a new pair for `cert`; `None` while another replica holds it
    /// (its pair arrives through the store once published).
    fn claim<'a>(
        &'a self,
        cert: &'a CertificateConfig,
    ) -> StoreFuture<'a, Result<Option<Claim>, StoreError>>;

    /// The outcome of the last attempt anywhere in the fleet for `cert` (failures, when
    /// the next attempt may be made, the CA's rate limit), read under a claim; none on a
    /// single machine, where the loop's own record is the whole story.
    fn shared_state<'a>(
        &'a self,
        _cert: &'a CertificateConfig,
    ) -> StoreFuture<'a, Option<CertState>> {
        Box::pin(async { None })
    }

    /// Shares the outcome of an attempt made under `claim` with the fleet.
    fn share_state<'a>(
        &'a self,
        _cert: &'a CertificateConfig,
        _claim: &'a Claim,
        _state: &'a CertState,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Stores a new pair for `cert`, obtained under `claim`, replacing the old one whole.
    fn save<'a>(
        &'a self,
        cert: &'a CertificateConfig,
        claim: &'a Claim,
        pair: &'a PemPair,
    ) -> StoreFuture<'a, Result<(), StoreError>>;
}

/// The certificate's own files on this machine.
pub struct LocalDir;

impl LocalDir {
    pub fn read(cert: &CertificateConfig) -> Option<LoadedPair> {
        pair::load_pair(
            &cert.cert_file,
            &cert.key_file,
            &cert.domains,
            SystemTime::now(),
            &crate::tls::provider(),
        )
        .ok()
    }

    pub fn write(cert: &CertificateConfig, pair: &PemPair) -> Result<(), store::StoreError> {
        LocalDir::write_unless(cert, pair, |_| false).map(|_| ())
    }

    /// Writes `pair` unless the pair there now passes `keep`; whether it wrote. One
    /// write at a time in this process: provisioning and a fleet's follower may both
    /// have the same new pair to write, and two switches of one `..data` at once would
    /// trip over each other.
    pub fn write_unless(
        cert: &CertificateConfig,
        pair: &PemPair,
        keep: impl FnOnce(&LoadedPair) -> bool,
    ) -> Result<bool, store::StoreError> {
        static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        if LocalDir::read(cert).is_some_and(|have| keep(&have)) {
            return Ok(false);
        }
        store::write_pair(
            &cert.cert_file,
            &cert.key_file,
            pair.cert_pem.as_bytes(),
            pair.key_pem.as_bytes(),
        )?;
        Ok(true)
    }
}

impl Store for LocalDir {
    fn current(&self, cert: &CertificateConfig) -> Option<LoadedPair> {
        LocalDir::read(cert)
    }

    fn claim<'a>(
        &'a self,
        _cert: &'a CertificateConfig,
    ) -> StoreFuture<'a, Result<Option<Claim>, StoreError>> {
        Box::pin(async { Ok(Some(Claim::sole())) })
    }

    fn save<'a>(
        &'a self,
        cert: &'a CertificateConfig,
        _claim: &'a Claim,
        pair: &'a PemPair,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { Ok(LocalDir::write(cert, pair)?) })
    }
}
