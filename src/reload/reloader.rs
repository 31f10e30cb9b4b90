//! Validate-and-swap: the one path by which a certificate reaches the resolver.
//!
//! Whatever changed the files (an operator, a Kubernetes Secret update, the dev CA, ACME),
//! the [`Reloader`] reads the pair, validates it ([`crate::cert::pair`]) and swaps it into
//! its resolver slot. A refused pair changes nothing: the slot keeps serving what it had.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use crate::cert::inspect::{CertSummary, rfc3339};
use crate::cert::pair::{LoadedPair, PairError, load_pair};
use crate::config::CertificateConfig;
use crate::metrics::Metrics;
use crate::reload::resolver::Resolver;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new certificate is now served.
    Swapped(CertSummary),
    /// The files hold the certificate already being served.
    Unchanged,
}

pub struct Reloader {
    certificates: Vec<CertificateConfig>,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    served: Mutex<Vec<Option<CertSummary>>>,
}

impl Reloader {
    pub fn new(certificates: Vec<CertificateConfig>, metrics: Arc<Metrics>) -> Reloader {
        let resolver = Arc::new(Resolver::new(
            certificates.iter().map(|c| c.domains.clone()).collect(),
        ));
        let served = Mutex::new(vec![None; certificates.len()]);
        metrics.describe_certificates(&certificates);
        Reloader {
            certificates,
            resolver,
            metrics,
            served,
        }
    }

    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn certificates(&self) -> &[CertificateConfig] {
        &self.certificates
    }

    /// What each slot serves now (`None`: nothing loaded yet).
    pub fn served(&self) -> Vec<Option<CertSummary>> {
        self.served.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads slot `index`'s files and swaps them in if they are valid and new.
    /// Errors are returned, not logged: the caller decides whether to retry.
    pub fn reload(&self, index: usize, reason: &str) -> Result<Reloaded, PairError> {
        let Some(config) = self.certificates.get(index) else {
            return Ok(Reloaded::Unchanged);
        };
        let pair = load_pair(
            &config.cert_file,
            &config.key_file,
            &config.domains,
            SystemTime::now(),
            &crate::tls::provider(),
        )?;
        Ok(self.install(index, pair, reason))
    }

    /// Swaps an already validated pair into slot `index`.
    pub fn install(&self, index: usize, pair: LoadedPair, reason: &str) -> Reloaded {
        if let Some(current) = self.resolver.get(index)
            && current.cert == pair.key.cert
        {
            return Reloaded::Unchanged;
        }
        let summary = pair.summary.clone();
        self.resolver.set(index, pair.key);
        let mut previous = None;
        if let Ok(mut served) = self.served.lock()
            && let Some(slot) = served.get_mut(index)
        {
            previous = slot.replace(summary.clone());
        }
        self.metrics.reload(true);
        self.metrics
            .certificate_served(index, &self.certificates[index], &summary);
        let domains = self.certificates[index].domain_list();
        let (serial, not_after) = (&summary.serial, rfc3339(summary.not_after));
        match previous {
            None => info!(
                event = "certificate_loaded",
                certificate = index,
                %domains,
                %serial,
                %not_after,
                reason,
                "certificate loaded"
            ),
            Some(old) => info!(
                event = "certificate_swapped",
                certificate = index,
                %domains,
                %serial,
                %not_after,
                previous_serial = %old.serial,
                reason,
                "certificate swapped"
            ),
        }
        Reloaded::Swapped(summary)
    }

    /// Is slot `index` serving a certificate?
    pub fn is_serving(&self, index: usize) -> bool {
        self.served
            .lock()
            .is_ok_and(|s| s.get(index).is_some_and(Option::is_some))
    }

    /// Records a pair that was refused for good (after any retries). Files that do not
    /// exist for a slot that never served anything are no refusal: nothing was written yet
    /// (an ACME certificate before its first order).
    pub fn refused(&self, index: usize, error: &PairError) {
        let domains = self
            .certificates
            .get(index)
            .map(|c| c.domain_list())
            .unwrap_or_default();
        let serving = self
            .served()
            .get(index)
            .cloned()
            .flatten()
            .map(|s| s.serial);
        match serving {
            None if error.is_missing() => {
                debug!(certificate = index, %domains, "no certificate written yet");
            }
            None => {
                self.metrics.reload(false);
                warn!(
                    event = "certificate_refused",
                    certificate = index,
                    %domains,
                    error = %error,
                    "certificate refused; no certificate is served for these domains yet"
                );
            }
            Some(serial) => {
                self.metrics.reload(false);
                warn!(
                    event = "certificate_refused",
                    certificate = index,
                    %domains,
                    error = %error,
                    still_serving = %serial,
                    "certificate refused; the previous one keeps serving"
                );
            }
        }
    }
}
