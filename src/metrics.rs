//! Counters and gauges wssd keeps about itself (names per `SPEC.md`). Plain atomics,
//! updated on the hot path without locks; the admin server renders them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub certificate_reloads_ok: AtomicU64,
    pub certificate_reloads_error: AtomicU64,
    pub connections_active: AtomicI64,
    pub connections_total: AtomicU64,
    /// Refused over `max_connections`.
    pub connections_refused: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub acme_orders_ok: AtomicU64,
    pub acme_orders_error: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts a connection as active for as long as it lives.
pub struct ActiveConnection<'a>(&'a Metrics);

impl<'a> ActiveConnection<'a> {
    pub fn new(metrics: &'a Metrics) -> Self {
        metrics.connections_active.fetch_add(1, Ordering::Relaxed);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(metrics)
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}
