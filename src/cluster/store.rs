//! The fleet's store ([`FleetStore`]): every certificate's pair in the engine as one
//! record ([`super::fleet::Record`]), written only by the replica that holds the
//! certificate's lock, and in each replica's own directory as before.
//!
//! Keys, under `wssd/<name>/`:
//! - `certs/<domains>`: the record: the chain, the private key sealed with the fleet key
//!   ([`super::key`], bound to this key's name), serial, expiry, and who published it.
//!   One key holds the whole pair, so a reader never sees half of one.
//! - `state/<domains>`: the outcome of the last attempt (failures in a row, when the
//!   next may be made, the CA's rate limit), written under the lock like a publish, so
//!   a backoff or a `Retry-After` holds for the whole fleet, not just the one replica.
//! - `locks/<domains>`: the lock, created only if absent and attached to a lease of its
//!   own that the holder keeps alive. Its creation revision is the fencing token: a
//!   publish is a transaction that succeeds only while the lock key still has it, so a
//!   holder that was paused or cut off past its lease cannot install anything.
//!
//! The holder gives up by its own monotonic clock: when its keep-alives have not
//! succeeded for a whole lease TTL, the claim is lost (the order stops) even if etcd has
//! not yet noticed.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::etcd::{Compare, Op};
use super::fleet::{Fleet, Record};
use crate::cert::inspect::rfc3339;
use crate::cert::pair::{LoadedPair, PemPair};
use crate::config::CertificateConfig;
use crate::provision::state::CertState;
use crate::provision::store::{Claim, LocalDir, Store, StoreError, StoreFuture};

/// How often a publish is tried again while the engine does not answer.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// `state/<domains>`: the outcome of the fleet's last attempt, and who made it.
#[derive(Serialize, Deserialize)]
pub struct SharedState {
    pub by: String,
    #[serde(flatten)]
    pub state: CertState,
}

/// The fleet's store (see the module docs) for this replica's `certificates`.
pub struct FleetStore {
    pub fleet: Arc<Fleet>,
    pub certificates: Vec<CertificateConfig>,
}

impl Store for FleetStore {
    fn current(&self, cert: &CertificateConfig) -> Option<LoadedPair> {
        LocalDir::read(cert)
    }

    fn fetch<'a>(&'a self, cert: &'a CertificateConfig) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let fleet = &self.fleet;
            let key = fleet.cert_key(cert);
            if let Ok((Some(kv), _)) = fleet.engine(fleet.etcd.get(key.as_bytes()).await) {
                super::sync::apply(fleet, &self.certificates, &kv, None);
            }
        })
    }

    fn claim<'a>(
        &'a self,
        cert: &'a CertificateConfig,
    ) -> StoreFuture<'a, Result<Option<Claim>, StoreError>> {
        Box::pin(async move {
            let fleet = &self.fleet;
            let engine = |e: super::etcd::EtcdError| StoreError::Engine(e.to_string());
            let lease = fleet
                .engine(fleet.etcd.grant(fleet.lease_ttl).await)
                .map_err(engine)?;
            let granted = Instant::now();
            let lock = fleet.lock_key(cert).into_bytes();
            let txn = fleet.engine(
                fleet
                    .etcd
                    .txn(
                        &[Compare::Created(lock.clone(), 0)],
                        &[Op::Put {
                            key: lock.clone(),
                            value: fleet.replica.clone().into_bytes(),
                            lease,
                        }],
                        &[Op::Get(lock.clone())],
                    )
                    .await,
            );
            let txn = match txn {
                Ok(txn) => txn,
                Err(e) => {
                    revoke_later(fleet.clone(), lease);
                    return Err(engine(e));
                }
            };
            if !txn.succeeded {
                revoke_later(fleet.clone(), lease);
                if let Some(holder) = txn.read.first() {
                    debug!(certificate = %cert.domain_list(), holder = %String::from_utf8_lossy(&holder.value), "the certificate's lock is held by another replica");
                }
                return Ok(None);
            }
            let lost = CancellationToken::new();
            let done = CancellationToken::new();
            tokio::spawn(keep_alive(
                fleet.clone(),
                lease,
                granted,
                lost.clone(),
                done.clone(),
            ));
            if let Some(index) = self
                .certificates
                .iter()
                .position(|c| c.domain_list() == cert.domain_list())
            {
                // Held until released or lost, whichever comes first.
                fleet.metrics.cluster_lock_held(index, true);
                let (fleet, lost, done) = (fleet.clone(), lost.clone(), done.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = lost.cancelled() => {}
                        _ = done.cancelled() => {}
                    }
                    fleet.metrics.cluster_lock_held(index, false);
                });
            }
            let release: Box<dyn FnOnce() + Send + Sync> = {
                let fleet = fleet.clone();
                Box::new(move || {
                    done.cancel();
                    revoke_later(fleet, lease);
                })
            };
            Ok(Some(Claim::lock(txn.revision, lost, release)))
        })
    }

    fn shared_state<'a>(
        &'a self,
        cert: &'a CertificateConfig,
    ) -> StoreFuture<'a, Option<CertState>> {
        Box::pin(async move {
            let fleet = &self.fleet;
            let key = fleet.state_key(cert);
            let (kv, _) = fleet.engine(fleet.etcd.get(key.as_bytes()).await).ok()?;
            match serde_json::from_slice::<SharedState>(&kv?.value) {
                Ok(shared) => Some(shared.state),
                Err(e) => {
                    warn!(key, error = %e, "the fleet's renewal state is unreadable; ignoring it");
                    None
                }
            }
        })
    }

    fn share_state<'a>(
        &'a self,
        cert: &'a CertificateConfig,
        claim: &'a Claim,
        state: &'a CertState,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let fleet = &self.fleet;
            let shared = SharedState {
                by: fleet.replica.clone(),
                state: state.clone(),
            };
            let Ok(value) = serde_json::to_vec(&shared) else {
                return;
            };
            // Fenced like a publish: a holder past its lease must not overwrite the
            // outcome of the replica that took over.
            let written = fleet
                .etcd
                .txn(
                    &[Compare::Created(
                        fleet.lock_key(cert).into_bytes(),
                        claim.fence,
                    )],
                    &[Op::Put {
                        key: fleet.state_key(cert).into_bytes(),
                        value,
                        lease: 0,
                    }],
                    &[],
                )
                .await;
            match fleet.engine(written) {
                Ok(txn) if txn.succeeded => {}
                Ok(_) => {
                    debug!(certificate = %cert.domain_list(), "the lock was lost; the attempt's outcome is not shared")
                }
                Err(e) => {
                    warn!(certificate = %cert.domain_list(), error = %e, "cannot share the attempt's outcome with the fleet")
                }
            }
        })
    }

    fn save<'a>(
        &'a self,
        cert: &'a CertificateConfig,
        claim: &'a Claim,
        pair: &'a PemPair,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let fleet = &self.fleet;
            if claim.lost.is_cancelled() {
                return Err(StoreError::LockLost);
            }
            let key = fleet.cert_key(cert);
            let summary = crate::cert::pair::pair_from_pem(
                pair.cert_pem.as_bytes(),
                pair.key_pem.as_bytes(),
                &cert.cert_file,
                &cert.key_file,
                &cert.domains,
                SystemTime::now(),
                &crate::tls::provider(),
            )
            .map_err(|e| StoreError::Engine(e.to_string()))?
            .summary;
            let record = Record {
                chain_pem: pair.cert_pem.clone(),
                key_sealed: fleet
                    .key
                    .seal(&key, pair.key_pem.as_bytes())
                    .map_err(|e| StoreError::Engine(e.to_string()))?,
                serial: summary.serial.clone(),
                not_after: rfc3339(summary.not_after),
                publisher: fleet.replica.clone(),
                published_at_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64),
            };
            let value =
                serde_json::to_vec(&record).map_err(|e| StoreError::Engine(e.to_string()))?;
            let lock = fleet.lock_key(cert).into_bytes();
            let mut told = false;
            // An engine away for less than the lease does not cost the pair: the publish
            // goes out once it answers, as long as this replica still holds the lock.
            let txn = loop {
                let put = Op::Put {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    lease: 0,
                };
                let fence = [Compare::Created(lock.clone(), claim.fence)];
                let answer = fleet.etcd.txn(&fence, &[put], &[]).await;
                match fleet.engine(answer) {
                    Ok(txn) => break txn,
                    Err(e) => {
                        if !told {
                            warn!(certificate = %cert.domain_list(), error = %e, "the fleet's engine does not answer; the new pair is published once it does, while this replica still holds the lock");
                            told = true;
                        }
                        tokio::select! {
                            _ = claim.lost.cancelled() => return Err(StoreError::LockLost),
                            _ = tokio::time::sleep(PUBLISH_RETRY) => {}
                        }
                    }
                }
            };
            if !txn.succeeded {
                return Err(StoreError::LockLost);
            }
            LocalDir::write(cert, pair)?;
            Ok(())
        })
    }
}

/// Keeps `lease` alive until `done`; cancels `lost` once no keep-alive has succeeded
/// for a whole TTL by this process's own clock (etcd may still count it as alive, but
/// the holder must stop before anyone else can take over).
async fn keep_alive(
    fleet: Arc<Fleet>,
    lease: i64,
    granted: Instant,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let mut last_ok = granted;
    let every = fleet.lease_ttl / 3;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        // A keep-alive that takes longer than what is left of the lease would be answered
        // for a lease that may already have lapsed.
        let left = fleet.lease_ttl.saturating_sub(last_ok.elapsed());
        let answer = tokio::time::timeout(left, fleet.etcd.keep_alive(lease)).await;
        match answer {
            Ok(Ok(Some(_))) => {
                fleet.metrics.cluster_engine_up(true);
                last_ok = sent;
            }
            Ok(Ok(None)) => {
                warn!(
                    lease,
                    "the certificate lock's lease expired; giving the lock up"
                );
                lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                fleet.metrics.cluster_engine_up(false);
                debug!(error = %e, "keep-alive of the certificate lock failed");
            }
            Err(_) => {}
        }
        if last_ok.elapsed() >= fleet.lease_ttl {
            warn!(
                lease,
                "no keep-alive of the certificate lock succeeded for a whole lease TTL; giving the lock up"
            );
            lost.cancel();
            return;
        }
    }
}

/// Revokes `lease` in the background (its keys go with it); an engine that cannot be
/// reached lets it expire instead.
fn revoke_later(fleet: Arc<Fleet>, lease: i64) {
    tokio::spawn(async move {
        if let Err(e) = fleet.etcd.revoke(lease).await {
            debug!(lease, error = %e, "cannot revoke a lease; it expires by itself");
        }
    });
}
