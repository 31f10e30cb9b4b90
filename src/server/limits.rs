//! Per-IP limits, checked at accept before any TLS work: how many connections one address
//! may hold at once, and how fast it may open new ones (a token bucket: `rate` per
//! second, bursts of twice that). One client cannot take all of `max_connections`, nor
//! spend the server's CPU on handshakes.
//!
//! The table is sharded by address and each shard's lock is held only to update a
//! counter, never across I/O. When both limits are off (the default) nothing is tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const SHARDS: usize = 16;
/// A shard is pruned of idle addresses when it grows past this.
const PRUNE_AT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already holds `max_connections_per_ip` connections.
    TooManyConnections,
    /// The address opens connections faster than `handshake_rate_per_ip`.
    TooFast,
}

struct Entry {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

pub struct IpLimits {
    max_per_ip: usize,
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
}

/// Holds one connection's place; dropping it frees the place.
pub struct IpPermit {
    limits: Option<Arc<IpLimits>>,
    ip: IpAddr,
}

impl IpLimits {
    /// `max_per_ip` connections at once, `rate` new ones per second (0: no limit).
    pub fn new(max_per_ip: usize, rate: u32) -> Arc<IpLimits> {
        Arc::new(IpLimits {
            max_per_ip,
            rate: f64::from(rate),
            burst: f64::from(rate) * 2.0,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn enabled(&self) -> bool {
        self.max_per_ip > 0 || self.rate > 0.0
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        let index = match ip {
            IpAddr::V4(v4) => v4.octets()[3] as usize,
            IpAddr::V6(v6) => v6.octets()[15] as usize,
        };
        &self.shards[index % SHARDS]
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpPermit, Refusal> {
        if !self.enabled() {
            return Ok(IpPermit { limits: None, ip });
        }
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            shard.retain(|_, e| {
                e.active > 0
                    || (rate > 0.0
                        && e.tokens + now.duration_since(e.refilled).as_secs_f64() * rate < burst)
            });
        }
        let entry = shard.entry(ip).or_insert(Entry {
            active: 0,
            tokens: self.burst,
            refilled: now,
        });
        if self.max_per_ip > 0 && entry.active >= self.max_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        if self.rate > 0.0 {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * self.rate).min(self.burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::TooFast);
            }
            entry.tokens -= 1.0;
        }
        entry.active += 1;
        Ok(IpPermit {
            limits: Some(self.clone()),
            ip,
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let Some(limits) = &self.limits else { return };
        let mut shard = limits
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = shard.get_mut(&self.ip) {
            entry.active = entry.active.saturating_sub(1);
            if entry.active == 0 && limits.rate == 0.0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn off_by_default() {
        let limits = IpLimits::new(0, 0);
        let now = Instant::now();
        let permits: Vec<_> = (0..1000)
            .map(|_| limits.admit(ip(1), now).unwrap())
            .collect();
        assert_eq!(permits.len(), 1000);
    }

    #[test]
    fn connection_cap_per_address() {
        let limits = IpLimits::new(2, 0);
        let now = Instant::now();
        let a = limits.admit(ip(1), now).unwrap();
        let _b = limits.admit(ip(1), now).unwrap();
        assert_eq!(
            limits.admit(ip(1), now).err(),
            Some(Refusal::TooManyConnections)
        );
        assert!(
            limits.admit(ip(2), now).is_ok(),
            "other addresses are not affected"
        );
        drop(a);
        assert!(
            limits.admit(ip(1), now).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn handshake_rate_with_bursts() {
        let limits = IpLimits::new(0, 5);
        let start = Instant::now();
        let admitted = (0..20)
            .filter(|_| limits.admit(ip(1), start).is_ok())
            .count();
        assert_eq!(admitted, 10, "a burst of twice the rate");
        assert_eq!(limits.admit(ip(1), start).err(), Some(Refusal::TooFast));
        let later = start + Duration::from_secs(1);
        let admitted = (0..20)
            .filter(|_| limits.admit(ip(1), later).is_ok())
            .count();
        assert_eq!(admitted, 5, "refilled at the rate");
    }
}
