//! What every part of a replica's fleet mode shares ([`Fleet`]: the engine, the fleet
//! key, the key names), and the record each certificate is kept as in the engine.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::etcd::Etcd;
use super::key::ClusterKey;
use crate::config::CertificateConfig;
use crate::metrics::Metrics;

/// A certificate as the engine holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub chain_pem: String,
    /// The private key, sealed ([`ClusterKey::seal`]) for this record's key.
    pub key_sealed: String,
    pub serial: String,
    pub not_after: String,
    /// The replica that published it.
    pub publisher: String,
    /// When, by the publisher's clock (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at_ms: Option<u64>,
}

/// What every part of a replica's fleet mode shares.
pub struct Fleet {
    pub etcd: Etcd,
    pub key: ClusterKey,
    /// `wssd/<name>/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    /// This replica's name in the engine (host and process).
    pub replica: String,
    pub metrics: Arc<Metrics>,
    /// The lease of this replica's member key ([`super::members`]); 0 while it has none.
    pub member_lease: AtomicI64,
}

impl Fleet {
    /// The record key of `cert`.
    pub fn cert_key(&self, cert: &CertificateConfig) -> String {
        format!("{}certs/{}", self.prefix, cert.domain_list())
    }

    /// The lock key of `cert`.
    pub fn lock_key(&self, cert: &CertificateConfig) -> String {
        format!("{}locks/{}", self.prefix, cert.domain_list())
    }

    /// The key of `cert`'s renewal state: the outcome of the fleet's last attempt.
    pub fn state_key(&self, cert: &CertificateConfig) -> String {
        format!("{}state/{}", self.prefix, cert.domain_list())
    }

    /// Notes whether the engine answered.
    pub fn engine<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        self.metrics.cluster_engine_up(result.is_ok());
        result
    }
}
