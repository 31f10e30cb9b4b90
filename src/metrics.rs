//! What wssd measures about itself, in Prometheus form (`prometheus-client`), rendered by
//! the admin server at `/metrics`. Names per `SPEC.md` are kept exactly.
//!
//! Every handle here is an atomic: recording costs an atomic add, no lock and no
//! allocation, so the accept and relay paths can record freely. Labelled series that
//! the hot paths touch are resolved once, when `Metrics` is built or its certificates
//! are described.
//!
//! Every series about one certificate carries the same two labels, `certificate` (its
//! index in the config) and `domains` (its names, comma-separated), so that they join.
//! The series pinned in SPEC.md keep their pinned labels exactly:
//! `certificate_not_after_seconds{domain}`, `certificate_reloads_total{result}`.

mod process;

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cert::inspect::CertSummary;
use crate::config::CertificateConfig;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Metrics {
    registry: Registry,
    connections_active: Gauge,
    connections_total: Counter,
    connections_refused: Counter,
    handshake_failures: Counter,
    handshake_seconds: Histogram,
    reloads_ok: Counter,
    reloads_error: Counter,
    acme_ok: Counter,
    acme_error: Counter,
    renewals: Family<Labels, Counter>,
    relay_bytes: [Counter; 2],
    relay_messages: [Counter; 2],
    watcher_events: Counter,
    active_by_certificate: Family<Labels, Gauge>,
    not_after: Family<Labels, Gauge>,
    days_left: Family<Labels, Gauge<f64, AtomicU64>>,
    next_renewal: Family<Labels, Gauge>,
    /// Fleet mode only (registered by [`Metrics::enable_cluster`]): 1 while the engine
    /// answers.
    cluster_engine_up: Gauge,
    /// 1 while this replica holds the certificate's lock (is obtaining it for the fleet).
    cluster_lock_held: Family<Labels, Gauge>,
    /// From a pair's publish by any replica to this replica serving it.
    cluster_publish_to_swap: Family<Labels, Histogram, fn() -> Histogram>,
    /// (certificate index, domains, not_after) of what is served, for `days_left`.
    served: Mutex<Vec<(usize, String, SystemTime)>>,
    /// Each certificate's labels, set once by [`Metrics::describe_certificates`].
    certificates: OnceLock<Vec<Labels>>,
    /// `connections_active_by_certificate`, one gauge per certificate, made with them.
    active_gauges: OnceLock<Vec<Gauge>>,
    /// Responses on the listener by status code and by who made them.
    responses: Family<Labels, Counter>,
    /// Each code's counters (100 to 599), [made by wssd, the upstream's], resolved on
    /// first use: no lock or allocation after that.
    response_counters: Box<[[OnceLock<Counter>; 2]]>,
    /// From a change to a certificate's files to the new pair being served.
    file_to_served: Family<Labels, Histogram, fn() -> Histogram>,
    process: process::Process,
}

/// wssd's own codes that are shown from the start, at 0, so that a rate over them works
/// before the first one (others appear when first sent).
const SHOWN_CODES: &[u16] = &[101, 403, 404, 426, 502, 504];

fn publish_to_swap_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

fn file_to_served_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts a connection as active (overall and for its certificate) while it lives.
pub struct ActiveConnection<'a> {
    metrics: &'a Metrics,
    certificate: Option<Gauge>,
}

impl ActiveConnection<'_> {
    /// The certificate the handshake chose, once it is known.
    pub fn served_by(&mut self, index: usize) {
        let gauge = match self.metrics.active_gauges.get().and_then(|g| g.get(index)) {
            Some(gauge) => gauge.clone(),
            None => self
                .metrics
                .active_by_certificate
                .get_or_create_owned(&self.metrics.certificate_labels(index, &[])),
        };
        gauge.inc();
        self.certificate = Some(gauge);
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.metrics.connections_active.dec();
        if let Some(gauge) = &self.certificate {
            gauge.dec();
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wssd");
        let reloads = Family::<Labels, Counter>::default();
        let acme = Family::<Labels, Counter>::default();
        let relay_bytes = Family::<Labels, Counter>::default();
        let relay_messages = Family::<Labels, Counter>::default();
        let responses = Family::<Labels, Counter>::default();
        let response_counters = (100..600).map(|_| Default::default()).collect();
        let m = Metrics {
            connections_active: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            handshake_failures: Counter::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reloads_ok: reloads.get_or_create_owned(&labels(&[("result", "ok")])),
            reloads_error: reloads.get_or_create_owned(&labels(&[("result", "error")])),
            acme_ok: acme.get_or_create_owned(&labels(&[("result", "ok")])),
            acme_error: acme.get_or_create_owned(&labels(&[("result", "error")])),
            renewals: Family::default(),
            relay_bytes: [
                relay_bytes.get_or_create_owned(&labels(&[("direction", "up")])),
                relay_bytes.get_or_create_owned(&labels(&[("direction", "down")])),
            ],
            relay_messages: [
                relay_messages.get_or_create_owned(&labels(&[("direction", "up")])),
                relay_messages.get_or_create_owned(&labels(&[("direction", "down")])),
            ],
            watcher_events: Counter::default(),
            active_by_certificate: Family::default(),
            not_after: Family::default(),
            days_left: Family::default(),
            next_renewal: Family::default(),
            cluster_engine_up: Gauge::default(),
            cluster_lock_held: Family::default(),
            cluster_publish_to_swap: Family::new_with_constructor(publish_to_swap_histogram),
            served: Mutex::new(Vec::new()),
            certificates: OnceLock::new(),
            active_gauges: OnceLock::new(),
            responses: responses.clone(),
            response_counters,
            file_to_served: Family::new_with_constructor(file_to_served_histogram),
            process: process::Process::new(),
            registry: Registry::default(),
        };
        for code in SHOWN_CODES {
            m.response_counter(*code, false);
        }
        registry.register(
            "http_responses",
            "Responses on the listener by status code, made by wssd itself (by=\"wssd\": refusals, the echo's 101, errors such as 502 and 504) or the upstream's (by=\"upstream\")",
            responses,
        );
        registry.register(
            "certificate_file_to_served_seconds",
            "Time from a change to a certificate's files (the first file system event) to the new pair being served",
            m.file_to_served.clone(),
        );
        registry.register(
            "certificate_not_after_seconds",
            "When the served certificate for a domain expires (unix time)",
            m.not_after.clone(),
        );
        registry.register(
            "certificate_days_left",
            "Days until each served certificate expires",
            m.days_left.clone(),
        );
        registry.register(
            "certificate_next_renewal_seconds",
            "When each certificate wssd renews is due next (unix time)",
            m.next_renewal.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Certificate pairs swapped in (ok) or refused (error)",
            reloads,
        );
        registry.register(
            "connections_active",
            "Open client connections",
            m.connections_active.clone(),
        );
        registry.register(
            "connections_active_by_certificate",
            "Open client connections by the certificate their handshake chose",
            m.active_by_certificate.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused at accept (max_connections, per-IP limits)",
            m.connections_refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.handshake_failures.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "Time from accept to a finished TLS handshake",
            m.handshake_seconds.clone(),
        );
        registry.register("acme_orders", "ACME orders by result", acme);
        registry.register(
            "renewals",
            "Renewal attempts by certificate source and result",
            m.renewals.clone(),
        );
        registry.register(
            "relay_bytes",
            "WebSocket bytes relayed, by direction",
            relay_bytes,
        );
        registry.register(
            "relay_messages",
            "WebSocket messages relayed, by direction",
            relay_messages,
        );
        registry.register(
            "watcher_events",
            "File system events seen in watched certificate directories",
            m.watcher_events.clone(),
        );
        // The Prometheus convention: a constant 1 whose labels say what is running.
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("WSSD_GIT_COMMIT")),
            ]))
            .set(1);
        registry.register(
            "build_info",
            "The running build: 1, with its version and git commit as labels",
            build_info,
        );
        Metrics { registry, ..m }
    }

    /// Names the certificates (once: the config does not change while wssd runs), so
    /// that their series carry the same `certificate` and `domains` labels.
    pub fn describe_certificates(&self, certificates: &[CertificateConfig]) {
        let described: Vec<Labels> = certificates
            .iter()
            .enumerate()
            .map(|(index, c)| {
                labels(&[
                    ("certificate", &index.to_string()),
                    ("domains", &c.domain_list()),
                ])
            })
            .collect();
        let gauges = described
            .iter()
            .map(|l| self.active_by_certificate.get_or_create_owned(l))
            .collect();
        let _ = self.certificates.set(described);
        let _ = self.active_gauges.set(gauges);
    }

    /// Certificate `index`'s labels, then `extra`.
    fn certificate_labels(&self, index: usize, extra: &[(&str, &str)]) -> Labels {
        let mut out = self
            .certificates
            .get()
            .and_then(|all| all.get(index).cloned())
            .unwrap_or_else(|| labels(&[("certificate", &index.to_string())]));
        out.extend(labels(extra));
        out
    }

    /// One response on the listener (`upstream`: the upstream's, passed on).
    pub fn response(&self, code: u16, upstream: bool) {
        self.response_counter(code, upstream).inc();
    }

    fn response_counter(&self, code: u16, upstream: bool) -> &Counter {
        static INVALID: OnceLock<Counter> = OnceLock::new();
        let Some(slot) = code
            .checked_sub(100)
            .and_then(|i| self.response_counters.get(usize::from(i)))
        else {
            return INVALID.get_or_init(Counter::default);
        };
        slot[usize::from(upstream)].get_or_init(|| {
            self.responses.get_or_create_owned(&labels(&[
                ("code", &code.to_string()),
                ("by", if upstream { "upstream" } else { "wssd" }),
            ]))
        })
    }

    /// Certificate `index`'s new files are served, `seconds` after they changed.
    pub fn file_change_served(&self, index: usize, seconds: f64) {
        self.file_to_served
            .get_or_create(&self.certificate_labels(index, &[]))
            .observe(seconds);
    }

    /// Adds the fleet's series (a single node has no engine to report on).
    pub fn enable_cluster(&mut self) {
        self.registry.register(
            "cluster_engine_up",
            "Whether the fleet's engine (etcd) answered the last call: 1 or 0",
            self.cluster_engine_up.clone(),
        );
        self.registry.register(
            "cluster_lock_held",
            "1 while this replica holds the certificate's lock in the fleet (it is obtaining the certificate), else 0",
            self.cluster_lock_held.clone(),
        );
        self.registry.register(
            "cluster_publish_to_swap_seconds",
            "Time from a certificate's publish to the fleet (by any replica, by its clock) to this replica serving it",
            self.cluster_publish_to_swap.clone(),
        );
    }

    pub fn cluster_engine_up(&self, up: bool) {
        self.cluster_engine_up.set(i64::from(up));
    }

    pub fn cluster_lock_held(&self, index: usize, held: bool) {
        self.cluster_lock_held
            .get_or_create(&self.certificate_labels(index, &[]))
            .set(i64::from(held));
    }

    pub fn cluster_publish_to_swap(&self, index: usize, seconds: f64) {
        self.cluster_publish_to_swap
            .get_or_create(&self.certificate_labels(index, &[]))
            .observe(seconds);
    }

    pub fn connection_opened(&self) -> ActiveConnection<'_> {
        self.connections_active.inc();
        self.connections_total.inc();
        ActiveConnection {
            metrics: self,
            certificate: None,
        }
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    pub fn handshake_done(&self, seconds: f64) {
        self.handshake_seconds.observe(seconds);
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_error
        }
        .inc();
    }

    pub fn acme_order(&self, ok: bool) {
        if ok { &self.acme_ok } else { &self.acme_error }.inc();
    }

    pub fn renewal(&self, index: usize, source: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.renewals
            .get_or_create(
                &self.certificate_labels(index, &[("source", source), ("result", result)]),
            )
            .inc();
    }

    /// Adds what a relayed connection carried in one direction (`up`: client to
    /// upstream) since it last reported.
    pub fn relayed(&self, up: bool, bytes: u64, messages: u64) {
        let i = usize::from(!up);
        self.relay_bytes[i].inc_by(bytes);
        self.relay_messages[i].inc_by(messages);
    }

    pub fn watcher_event(&self) {
        self.watcher_events.inc();
    }

    /// A certificate is now served for slot `index`.
    pub fn certificate_served(
        &self,
        index: usize,
        config: &CertificateConfig,
        summary: &CertSummary,
    ) {
        let not_after = unix(summary.not_after);
        for domain in &config.domains {
            self.not_after
                .get_or_create(&labels(&[("domain", &domain.to_string())]))
                .set(not_after);
        }
        if let Ok(mut served) = self.served.lock() {
            served.retain(|(i, _, _)| *i != index);
            served.push((index, config.domain_list(), summary.not_after));
        }
    }

    /// When certificate `index` is due for renewal next.
    pub fn next_renewal_at(&self, index: usize, at: SystemTime) {
        self.next_renewal
            .get_or_create(&self.certificate_labels(index, &[]))
            .set(unix(at));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let now = SystemTime::now();
        if let Ok(served) = self.served.lock() {
            for (index, domains, not_after) in served.iter() {
                let left = match not_after.duration_since(now) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                } / 86_400.0;
                self.days_left
                    .get_or_create(&labels(&[
                        ("certificate", &index.to_string()),
                        ("domains", domains),
                    ]))
                    .set(left);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        self.process.render(&mut out);
        out
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_are_rendered() {
        let m = Metrics::new();
        {
            let _open = m.connection_opened();
            m.reload(true);
            m.reload(false);
            m.acme_order(false);
            let text = m.render();
            for needle in [
                "wssd_connections_active 1",
                "wssd_connections_total 1",
                "wssd_certificate_reloads_total{result=\"ok\"} 1",
                "wssd_certificate_reloads_total{result=\"error\"} 1",
                "wssd_acme_orders_total{result=\"error\"} 1",
                "wssd_tls_handshake_failures_total 0",
                "wssd_build_info{version=\"",
            ] {
                assert!(text.contains(needle), "{needle} missing:\n{text}");
            }
        }
        assert!(m.render().contains("wssd_connections_active 0"));
    }

    #[test]
    fn responses_are_counted_by_code_and_by_who_made_them() {
        let m = Metrics::new();
        assert!(
            m.render()
                .contains("wssd_http_responses_total{code=\"426\",by=\"wssd\"} 0")
        );
        m.response(426, false);
        m.response(404, true);
        m.response(404, true);
        m.response(42, false); // not a status: counted nowhere, and no panic
        let text = m.render();
        for needle in [
            "wssd_http_responses_total{code=\"426\",by=\"wssd\"} 1",
            "wssd_http_responses_total{code=\"404\",by=\"upstream\"} 2",
            "wssd_http_responses_total{code=\"404\",by=\"wssd\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        assert!(!text.contains("code=\"42\""));
    }
}
