//! Every replica follows the engine's certificate records: a new pair published by any
//! replica is checked, written to this replica's own directory, and swapped in through
//! the reload task, the one path by which any certificate reaches the listener (so the
//! reload metrics and log lines are the same as for a file change). It follows the
//! fleet's tls-alpn-01 answers too ([`super::challenges`]): each is made into a challenge
//! certificate in this replica's resolver, and acknowledged.
//!
//! The watch starts from the revision of a full read and resumes from the last revision
//! seen; when that revision has been compacted away, or the engine went away, it reads
//! everything again. A record is installed only when it is valid for the certificate's
//! names and expires later than the pair this replica has, so no replica ever goes back
//! to an older certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::challenges::AlpnAnswer;
use super::etcd::{Event, Kv, WatchMessage};
use super::fleet::{Fleet, Record};
use crate::acme::challenge::alpn_certificate;
use crate::cert::pair::{self, LoadedPair, PemPair};
use crate::config::CertificateConfig;
use crate::provision::store::LocalDir;
use crate::reload::reloader::Reloader;
use crate::reload::resolver::Resolver;
use crate::reload::watch::ReloadHandle;

/// The wait before reading the engine again after it failed: short, as a replica that
/// has not caught up misses pairs published meanwhile (a failed connect costs little).
const RETRY: Duration = Duration::from_millis(250);

/// Brings this replica's files up to the engine's records once; the revision read at.
pub async fn sync_once(
    fleet: &Fleet,
    certificates: &[CertificateConfig],
    reload: Option<&ReloadHandle>,
) -> Result<i64, super::etcd::EtcdError> {
    let prefix = format!("{}certs/", fleet.prefix);
    let (records, revision) = fleet.engine(fleet.etcd.get_prefix(prefix.as_bytes()).await)?;
    for kv in &records {
        apply(fleet, certificates, kv, reload);
    }
    Ok(revision)
}

/// Follows the records and the tls-alpn-01 answers until shutdown.
pub async fn run(
    fleet: Arc<Fleet>,
    certificates: Vec<CertificateConfig>,
    reload: ReloadHandle,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
) {
    let mut follower = Follower {
        resolver: reloader.resolver(),
        reloader,
        certs: format!("{}certs/", fleet.prefix),
        alpn: format!("{}challenges/alpn/", fleet.prefix),
        fleet,
        certificates,
        reload,
        answers: HashMap::new(),
    };
    let prefix = follower.fleet.prefix.clone();
    let fleet = follower.fleet.clone();
    let mut from: Option<i64> = None;
    let mut down = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let start = match from {
            Some(revision) => revision,
            None => match follower.read_all().await {
                Ok(revision) => revision + 1,
                Err(e) => {
                    if !down {
                        warn!(error = %e, "the fleet's engine cannot be reached; serving what this replica has, and no orders start until it answers");
                        down = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            },
        };
        let mut watch = match fleet.engine(fleet.etcd.watch(prefix.as_bytes(), start).await) {
            Ok(watch) => watch,
            Err(e) => {
                if !down {
                    warn!(error = %e, "the fleet's engine cannot be reached; serving what this replica has, and no orders start until it answers");
                    down = true;
                }
                from = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        if down {
            info!("the fleet's engine answers again");
            down = false;
        }
        from = Some(start);
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = watch.next() => m,
            };
            match message {
                Ok(Some(WatchMessage::Events(events))) => {
                    for event in events {
                        let revision = match &event {
                            Event::Put(kv) => kv.mod_revision,
                            Event::Delete { mod_revision, .. } => *mod_revision,
                        };
                        from = Some(revision + 1);
                        follower.event(event).await;
                    }
                }
                Ok(Some(WatchMessage::Compacted(_))) => {
                    // Changes were missed: everything again, then watch from there.
                    from = None;
                    break;
                }
                Ok(None) | Err(_) => {
                    // The stream ended (the engine restarted, a proxy timed out): resume
                    // where it stopped; a failure to do so reads everything again.
                    fleet.metrics.cluster_engine_up(false);
                    break;
                }
            }
        }
    }
}

/// What follows the engine on this replica.
struct Follower {
    fleet: Arc<Fleet>,
    certificates: Vec<CertificateConfig>,
    reload: ReloadHandle,
    reloader: Arc<Reloader>,
    resolver: Arc<Resolver>,
    /// `<fleet>/certs/` and `<fleet>/challenges/alpn/`.
    certs: String,
    alpn: String,
    /// The tls-alpn-01 answers this replica serves for the fleet: SNI → (the revision of
    /// the answer, its certificate).
    answers: HashMap<String, (i64, Arc<CertifiedKey>)>,
}

impl Follower {
    /// Brings everything up to the engine once: the records, and the tls-alpn-01 answers
    /// (those gone while the watch was away are taken away); the revision read at.
    async fn read_all(&mut self) -> Result<i64, super::etcd::EtcdError> {
        let fleet = self.fleet.clone();
        let (kvs, revision) = fleet.engine(fleet.etcd.get_prefix(fleet.prefix.as_bytes()).await)?;
        let mut present = Vec::new();
        for kv in kvs {
            if let Some(sni) = String::from_utf8_lossy(&kv.key).strip_prefix(&self.alpn) {
                present.push(sni.to_string());
            }
            self.event(Event::Put(kv)).await;
        }
        let gone: Vec<String> = self
            .answers
            .keys()
            .filter(|sni| !present.contains(sni))
            .cloned()
            .collect();
        for sni in gone {
            self.clear_answer(&sni);
        }
        Ok(revision)
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Put(kv) => {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                if key.starts_with(&self.certs) {
                    if let Some(installed) =
                        apply(&self.fleet, &self.certificates, &kv, Some(&self.reload))
                    {
                        tokio::spawn(time_the_swap(self.reloader.clone(), installed));
                    }
                } else if let Some(sni) = key.strip_prefix(&self.alpn) {
                    self.serve_answer(sni, &kv).await;
                }
            }
            Event::Delete { key, .. } => {
                let key = String::from_utf8_lossy(&key).into_owned();
                if let Some(sni) = key.strip_prefix(&self.alpn) {
                    self.clear_answer(sni);
                }
            }
        }
    }

    /// Serves a tls-alpn-01 answer from the engine and acknowledges it.
    async fn serve_answer(&mut self, sni: &str, kv: &Kv) {
        if self
            .answers
            .get(sni)
            .is_some_and(|(revision, _)| *revision == kv.mod_revision)
        {
            return;
        }
        let made = serde_json::from_slice::<AlpnAnswer>(&kv.value)
            .ok()
            .and_then(|answer| answer.parts())
            .ok_or_else(|| "the answer cannot be read".to_string())
            .and_then(|(identifier, digest)| alpn_certificate(&identifier, &digest));
        let (served_as, key) = match made {
            Ok(made) => made,
            Err(reason) => {
                warn!(%sni, %reason, "the fleet's tls-alpn-01 answer is refused");
                return;
            }
        };
        if served_as != sni {
            warn!(%sni, %served_as, "the fleet's tls-alpn-01 answer is for another name; refused");
            return;
        }
        self.clear_answer(sni);
        self.resolver.set_challenge(sni, key.clone());
        self.answers.insert(sni.to_string(), (kv.mod_revision, key));
        let acks = super::challenges::alpn_acks(&self.fleet, sni);
        super::members::acknowledge(&self.fleet, &acks, kv.mod_revision).await;
    }

    fn clear_answer(&mut self, sni: &str) {
        if let Some((_, key)) = self.answers.remove(sni) {
            self.resolver.clear_challenge(sni, &key);
        }
    }
}

/// How long a swap is waited for, to time it.
const SWAP_WAIT: Duration = Duration::from_secs(60);

/// Notes in the metrics how long after its publish `installed` was served here.
async fn time_the_swap(reloader: Arc<Reloader>, installed: Installed) {
    let Some(published) = installed.published_at_ms else {
        return;
    };
    let published = SystemTime::UNIX_EPOCH + Duration::from_millis(published);
    let deadline = tokio::time::Instant::now() + SWAP_WAIT;
    while tokio::time::Instant::now() < deadline {
        let served = reloader.served();
        if served
            .get(installed.index)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.serial == installed.serial)
        {
            // A publisher's clock ahead of this one's counts as no time.
            let took = SystemTime::now()
                .duration_since(published)
                .unwrap_or_default();
            reloader
                .metrics()
                .cluster_publish_to_swap(installed.index, took.as_secs_f64());
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A record [`apply`] wrote here, for the reload task to swap in.
pub struct Installed {
    pub index: usize,
    pub serial: String,
    pub published_at_ms: Option<u64>,
}

/// Installs one record if it is for a certificate of this replica, valid, and newer
/// than what this replica has; what it installed.
pub fn apply(
    fleet: &Fleet,
    certificates: &[CertificateConfig],
    kv: &Kv,
    reload: Option<&ReloadHandle>,
) -> Option<Installed> {
    let key = String::from_utf8_lossy(&kv.key);
    let (index, cert) = certificates
        .iter()
        .enumerate()
        .find(|(_, c)| fleet.cert_key(c) == key)?;
    let domains = cert.domain_list();
    let refused = |reason: String| {
        warn!(certificate = index, %domains, %reason, "the fleet's certificate is refused; this replica keeps what it has");
        None
    };
    let record: Record = match serde_json::from_slice(&kv.value) {
        Ok(r) => r,
        Err(e) => return refused(format!("the record cannot be read: {e}")),
    };
    let key_pem = match fleet.key.open(&key, &record.key_sealed) {
        Ok(k) => k,
        Err(e) => return refused(e.to_string()),
    };
    let pem = PemPair {
        cert_pem: record.chain_pem,
        key_pem: String::from_utf8_lossy(&key_pem).into_owned(),
    };
    let checked = match pair::pair_from_pem(
        pem.cert_pem.as_bytes(),
        pem.key_pem.as_bytes(),
        &cert.cert_file,
        &cert.key_file,
        &cert.domains,
        SystemTime::now(),
        &crate::tls::provider(),
    ) {
        Ok(p) => p,
        Err(e) => return refused(e.to_string()),
    };
    let new = &checked.summary;
    let keep = |have: &LoadedPair| {
        have.summary.serial == new.serial || have.summary.not_after > new.not_after
    };
    match LocalDir::write_unless(cert, &pem, keep) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => return refused(format!("cannot write it here: {e}")),
    }
    info!(event = "certificate_from_fleet", certificate = index, %domains, serial = %checked.summary.serial, publisher = %record.publisher, "the fleet's new certificate is stored here");
    if let Some(reload) = reload {
        reload.reload_slot(index, "fleet");
    }
    Some(Installed {
        index,
        serial: checked.summary.serial,
        published_at_ms: record.published_at_ms,
    })
}
