//! Fleet mode (`[cluster]`, SPEC "Fleet"): replicas that share each certificate through
//! an etcd cluster, so that one replica obtains it and every replica serves it.
//!
//! [`fleet`] is what a replica's parts share; [`etcd`] the engine's client; [`key`] the fleet key that seals the private keys
//! stored there; [`store`] the fleet's store for provisioning (the per-certificate lock,
//! the fenced publish); [`sync`] follows the engine's records on every replica and swaps
//! new pairs in and serves the fleet's tls-alpn-01 answers; [`challenges`] shares the
//! challenge answers, so any replica answers the CA; [`members`] keeps the list of live
//! replicas and what each serves; [`accounts`] keeps the fleet's one ACME account; [`view`] is what `wssd status` shows of the fleet.

pub mod accounts;
pub mod challenges;
pub mod etcd;
pub mod fleet;
pub mod key;
pub mod members;
pub mod store;
pub mod sync;
pub mod view;

use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use fleet::Fleet;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("[cluster] encryption_key_file {0}")]
    Key(#[from] key::KeyError),
    #[error("[cluster]: {0}")]
    Engine(#[from] etcd::EtcdError),
}

/// What `fleet` shares with this replica's ACME client: both kinds of challenge answer,
/// and the account.
pub fn acme_shares(fleet: &Arc<Fleet>) -> crate::acme::FleetShares {
    crate::acme::FleetShares {
        tokens: Arc::new(challenges::EngineTokens::new(fleet.clone())),
        alpn: Arc::new(challenges::EngineAlpn(fleet.clone())),
        accounts: Arc::new(accounts::EngineAccounts(fleet.clone())),
    }
}

/// This replica's part of the fleet that `config` describes.
pub fn join(config: &ClusterConfig, metrics: Arc<Metrics>) -> Result<Arc<Fleet>, ClusterError> {
    let key = key::ClusterKey::load(&config.encryption_key_file)?;
    let tls = etcd::EtcdTls {
        ca_file: config.ca_file.as_deref(),
        cert_file: config.cert_file.as_deref(),
        key_file: config.key_file.as_deref(),
    };
    let etcd = etcd::Etcd::new(&config.endpoints, &tls)?;
    Ok(Arc::new(Fleet {
        etcd,
        key,
        prefix: format!("wssd/{}/", config.name),
        lease_ttl: config.lease_ttl,
        replica: replica_name(),
        metrics,
        member_lease: Default::default(),
    }))
}

/// This process in the engine's records: its host and process id.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}
