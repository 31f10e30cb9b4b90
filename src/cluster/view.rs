//! What `wssd status` shows of the fleet: for each certificate, the engine's state, the
//! replica holding its lock, the pair published in the engine, what every live replica
//! serves ([`super::members`]), and the fleet's failures in a row, if any.

use std::time::Duration;

use serde::Serialize;

use super::fleet::{Fleet, Record};
use super::store::SharedState;
use crate::cert::inspect::rfc3339;
use crate::config::CertificateConfig;

/// How long `wssd status` waits for the engine.
const TIMEOUT: Duration = Duration::from_secs(3);

/// One certificate as the fleet sees it.
#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    /// `up`, or why the engine cannot be read.
    pub engine: String,
    /// The replica holding the lock (ordering now), if any.
    pub holder: Option<String>,
    /// The serial of the pair in the engine.
    pub published_serial: Option<String>,
    pub published_by: Option<String>,
    pub replicas: Vec<ReplicaView>,
    /// The outcome of the fleet's last attempt, while it was a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<FailingView>,
}

/// The fleet's failures in a row for one certificate, and when the next attempt may be made.
#[derive(Debug, Clone, Serialize)]
pub struct FailingView {
    /// The replica that made the last attempt.
    pub by: String,
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_attempt: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub replica: String,
    /// Empty while it serves nothing for this certificate.
    pub serial: String,
    pub not_after: String,
}

/// The fleet's view of each of `certificates`, in order; every entry says so when the
/// engine cannot be read.
pub async fn view(fleet: &Fleet, certificates: &[CertificateConfig]) -> Vec<CertView> {
    match tokio::time::timeout(TIMEOUT, read(fleet, certificates)).await {
        Ok(Ok(views)) => views,
        Ok(Err(e)) => unreachable(certificates, e.to_string()),
        Err(_) => unreachable(
            certificates,
            format!("no answer within {}s", TIMEOUT.as_secs()),
        ),
    }
}

fn unreachable(certificates: &[CertificateConfig], reason: String) -> Vec<CertView> {
    certificates
        .iter()
        .map(|_| CertView {
            engine: format!("unreachable: {reason}"),
            holder: None,
            published_serial: None,
            published_by: None,
            replicas: Vec::new(),
            failing: None,
        })
        .collect()
}

async fn read(
    fleet: &Fleet,
    certificates: &[CertificateConfig],
) -> Result<Vec<CertView>, super::etcd::EtcdError> {
    let members = super::members::list(fleet).await?;
    let mut views = Vec::new();
    for cert in certificates {
        let (lock, _) = fleet.etcd.get(fleet.lock_key(cert).as_bytes()).await?;
        let (record, _) = fleet.etcd.get(fleet.cert_key(cert).as_bytes()).await?;
        let record: Option<Record> = record.and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let (state, _) = fleet.etcd.get(fleet.state_key(cert).as_bytes()).await?;
        let failing = state
            .and_then(|kv| serde_json::from_slice::<SharedState>(&kv.value).ok())
            .filter(|s| s.state.failures > 0)
            .map(|s| FailingView {
                next_attempt: s.state.retry_at().map(rfc3339),
                by: s.by,
                failures: s.state.failures,
                last_error: s.state.last_error,
            });
        let domains = cert.domain_list();
        views.push(CertView {
            engine: "up".into(),
            holder: lock.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            published_serial: record.as_ref().map(|r| r.serial.clone()),
            published_by: record.map(|r| r.publisher),
            failing,
            replicas: members
                .values()
                .map(|m| {
                    let serving = m.serving.iter().find(|s| s.domains == domains);
                    ReplicaView {
                        replica: m.replica.clone(),
                        serial: serving.map(|s| s.serial.clone()).unwrap_or_default(),
                        not_after: serving.map(|s| s.not_after.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
        });
    }
    Ok(views)
}
