//! Limits checked at accept, before any TLS or HTTP work. Per-IP: how many connections one
//! address may hold at once, and how fast it may open new ones (a token bucket: `rate`
//! per second, bursts of twice that); one client cannot take all of `max_connections`,
//! nor spend the server's CPU on handshakes. File descriptors: the side ports' caps
//! ([`SidePortCaps`]) leave most of them to the WSS listener, and a
//! [`DescriptorReserve`] sheds a connection cleanly when they run out anyway.
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

/// The process's soft limit on open file descriptors (`ulimit -n`), from
/// /proc/self/limits; 1024, the usual default, where it cannot be read.
pub fn descriptor_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| soft_open_files(&text))
        .unwrap_or(1024)
}

fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    // "unlimited" is as good as any large number here.
    Some(soft.parse().unwrap_or(u64::MAX))
}

/// The caps of one side port (the admin server, the http-01 responder), from the
/// descriptor limit: together the two side ports take at most a quarter of it, so that
/// whatever their clients do, the WSS listener keeps the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidePortCaps {
    /// Connections at once.
    pub connections: usize,
    /// Connections at once from one IP address.
    pub per_ip: usize,
}

impl SidePortCaps {
    pub fn for_descriptor_limit(limit: u64) -> SidePortCaps {
        let connections = (limit / 8).clamp(4, 1024) as usize;
        SidePortCaps {
            connections,
            per_ip: (connections / 4).clamp(2, 64),
        }
    }
}

/// One descriptor held back for the day the process runs out: when `accept` fails with
/// EMFILE/ENFILE, the connection waiting in the backlog would otherwise stay there (and
/// the accept loop spin). Releasing the reserve lets it be accepted and closed at once, so
/// its client hears no rather than nothing; then the reserve is taken again.
pub struct DescriptorReserve {
    file: Option<std::fs::File>,
    warned: Option<Instant>,
}

impl DescriptorReserve {
    pub fn new() -> DescriptorReserve {
        DescriptorReserve {
            file: std::fs::File::open("/dev/null").ok(),
            warned: None,
        }
    }

    /// Whether to log the exhaustion now: at most once a second, not once per connection.
    pub fn should_warn(&mut self) -> bool {
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1))
        {
            return false;
        }
        self.warned = Some(now);
        true
    }

    /// Is `e` the process (or system) being out of descriptors?
    pub fn is_exhaustion(e: &std::io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }

    /// After an exhaustion error: frees the reserve, accepts one waiting connection and
    /// closes it, then takes the reserve again. Returns whether one was shed.
    pub async fn shed(&mut self, listener: &tokio::net::TcpListener) -> bool {
        self.file = None;
        let shed = matches!(
            tokio::time::timeout(std::time::Duration::from_millis(10), listener.accept()).await,
            Ok(Ok(_))
        );
        self.file = std::fs::File::open("/dev/null").ok();
        shed
    }
}

impl Default for DescriptorReserve {
    fn default() -> Self {
        DescriptorReserve::new()
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
    fn side_port_caps_follow_the_descriptor_limit() {
        let caps = SidePortCaps::for_descriptor_limit;
        assert_eq!(
            caps(256),
            SidePortCaps {
                connections: 32,
                per_ip: 8
            }
        );
        assert_eq!(caps(1024).connections, 128);
        assert_eq!(
            caps(1 << 20),
            SidePortCaps {
                connections: 1024,
                per_ip: 64
            }
        );
        assert_eq!(
            caps(16),
            SidePortCaps {
                connections: 4,
                per_ip: 2
            }
        );
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            256                  4096                 files     \n";
        assert_eq!(soft_open_files(text), Some(256));
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
        assert!(descriptor_limit() > 0);
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
