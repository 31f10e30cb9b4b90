//! The fleet's members: each running replica keeps a key `members/<replica>` alive on a
//! lease of its own, holding what it serves now (for `wssd status`). A replica that dies
//! or is cut off drops out of the list within a lease TTL; one that shuts down revokes
//! its lease and leaves at once.
//!
//! The list is what the holder of an order waits on before it tells the CA to validate
//! a tls-alpn-01 challenge: every member acknowledges the challenge certificate once
//! its own resolver serves it ([`acknowledge`], keys on the member's lease), so the CA's
//! validation finds the answer whichever replica it reaches ([`wait_for_all`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::etcd::EtcdError;
use super::fleet::Fleet;
use crate::cert::inspect::rfc3339;
use crate::reload::reloader::Reloader;

/// What a member says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub replica: String,
    pub started: String,
    /// What each certificate serves on this replica now, in config order.
    pub serving: Vec<Serving>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    pub domains: String,
    /// Empty while nothing is served.
    pub serial: String,
    pub not_after: String,
}

/// How often the member's value is brought up to date between keep-alives.
const REFRESH: Duration = Duration::from_millis(500);
/// The pause between two looks at the acknowledgements.
const POLL: Duration = Duration::from_millis(50);

/// Keeps this replica's member key until shutdown, then takes it away.
pub async fn run(fleet: Arc<Fleet>, reloader: Arc<Reloader>, shutdown: CancellationToken) {
    let key = format!("{}members/{}", fleet.prefix, fleet.replica);
    let started = rfc3339(SystemTime::now());
    let mut lease = 0_i64;
    let mut written: Option<Member> = None;
    let mut last_keep_alive = Instant::now();
    loop {
        if lease == 0 {
            match fleet.engine(fleet.etcd.grant(fleet.lease_ttl).await) {
                Ok(id) => {
                    lease = id;
                    written = None;
                    last_keep_alive = Instant::now();
                }
                Err(e) => debug!(error = %e, "cannot join the fleet's member list yet"),
            }
        } else if last_keep_alive.elapsed() >= fleet.lease_ttl / 3 {
            match fleet.engine(fleet.etcd.keep_alive(lease).await) {
                Ok(Some(_)) => last_keep_alive = Instant::now(),
                // Expired (the engine was away too long): join again.
                Ok(None) => lease = 0,
                Err(e) => debug!(error = %e, "member keep-alive failed"),
            }
        }
        fleet.member_lease.store(lease, Ordering::Relaxed);
        if lease != 0 {
            let now = Member {
                replica: fleet.replica.clone(),
                started: started.clone(),
                serving: serving(&reloader),
            };
            if written.as_ref() != Some(&now) {
                let value = serde_json::to_vec(&now).unwrap_or_default();
                match fleet.engine(fleet.etcd.put(key.as_bytes(), &value, lease).await) {
                    Ok(_) => written = Some(now),
                    Err(e) => debug!(error = %e, "cannot write this replica's member key"),
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
    fleet.member_lease.store(0, Ordering::Relaxed);
    if lease != 0 {
        let _ = fleet.etcd.revoke(lease).await;
    }
}

fn serving(reloader: &Reloader) -> Vec<Serving> {
    reloader
        .certificates()
        .iter()
        .zip(reloader.served())
        .map(|(cert, served)| Serving {
            domains: cert.domain_list(),
            serial: served
                .as_ref()
                .map(|s| s.serial.clone())
                .unwrap_or_default(),
            not_after: served
                .as_ref()
                .map(|s| rfc3339(s.not_after))
                .unwrap_or_default(),
        })
        .collect()
}

/// Every live member, by replica name.
pub async fn list(fleet: &Fleet) -> Result<BTreeMap<String, Member>, EtcdError> {
    let prefix = format!("{}members/", fleet.prefix);
    let (kvs, _) = fleet.etcd.get_prefix(prefix.as_bytes()).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Member>(&kv.value).ok())
        .map(|m| (m.replica.clone(), m))
        .collect())
}

/// Records under `acks` (a prefix ending in `/`) that this replica has what was written
/// at `revision`; kept on the member lease, so it goes with the member. Without a member
/// lease (not in the list yet) there is nothing to acknowledge to.
pub async fn acknowledge(fleet: &Fleet, acks: &str, revision: i64) {
    let lease = fleet.member_lease.load(Ordering::Relaxed);
    if lease == 0 {
        return;
    }
    let key = format!("{acks}{}", fleet.replica);
    if let Err(e) = fleet
        .etcd
        .put(key.as_bytes(), revision.to_string().as_bytes(), lease)
        .await
    {
        debug!(error = %e, "cannot acknowledge a fleet challenge");
    }
}

/// Waits until every live member has acknowledged under `acks` what was written at
/// `revision`, for at most `timeout`. A member that does not within the time (paused,
/// cut off from the engine but its lease not yet lapsed) is named in a warning and not
/// waited for longer: the CA validates from several places and retries, and an order
/// that never starts helps no one.
pub async fn wait_for_all(fleet: &Fleet, acks: &str, revision: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = missing(fleet, acks, revision).await;
        match missing {
            Ok(missing) if missing.is_empty() => return,
            Ok(missing) if Instant::now() >= deadline => {
                warn!(replicas = %missing.join(", "), "these replicas did not confirm the tls-alpn-01 answer in time; validating anyway");
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                warn!(error = %e, "cannot see which replicas have the tls-alpn-01 answer; validating anyway");
                return;
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

async fn missing(fleet: &Fleet, acks: &str, revision: i64) -> Result<Vec<String>, EtcdError> {
    let members = list(fleet).await?;
    let (acked, _) = fleet.etcd.get_prefix(acks.as_bytes()).await?;
    let acked: Vec<String> = acked
        .iter()
        .filter(|kv| {
            std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|r| r >= revision)
        })
        .filter_map(|kv| {
            String::from_utf8_lossy(&kv.key)
                .strip_prefix(acks)
                .map(str::to_string)
        })
        .collect();
    Ok(members
        .into_keys()
        .filter(|replica| !acked.contains(replica))
        .collect())
}
