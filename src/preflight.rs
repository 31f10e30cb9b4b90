//! The start-up preconditions of `wssd run` that a config file alone cannot show: secret
//! files open to others, two servers given one address, a port below 1024 without the
//! capability to bind it, a TLS setup rustls refuses. `wssd run` refuses to start on the
//! first one; `wssd check` reports them all, so that `ExecStartPre=wssd check` catches
//! what `run` would then refuse (and a restart loop never starts).
//!
//! Nothing here binds, writes or connects: `check` runs beside a live daemon.

use std::net::SocketAddr;

use crate::cert::store::{StoreError, check_private};
use crate::config::{Challenge, Config, Source};
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Private(#[from] StoreError),
    #[error("{first} and {second} are both {addr}: each server needs an address of its own")]
    AddressClash {
        first: &'static str,
        second: &'static str,
        addr: SocketAddr,
    },
    #[error(
        "{what}: ports below {unprivileged_start} need the CAP_NET_BIND_SERVICE capability, which this process lacks (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE; or choose a port from {unprivileged_start} up)"
    )]
    PrivilegedPort {
        /// The address and what set it (`[admin] bind = ADDR`, `--listen ADDR`).
        what: String,
        unprivileged_start: u16,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("[cluster] encryption_key_file {0}")]
    ClusterKey(#[from] crate::cluster::key::KeyError),
}

/// An address `wssd run` would bind.
pub struct Bind {
    /// The key or flag that sets it.
    pub key: &'static str,
    /// The address as errors name it (`[admin] bind = ADDR`, `--listen ADDR`).
    pub what: String,
    pub addr: SocketAddr,
}

impl Bind {
    fn keyed(key: &'static str, addr: SocketAddr) -> Bind {
        Bind {
            key,
            what: format!("{key} = {addr}"),
            addr,
        }
    }
}

/// Every address `wssd run` would bind for `config`.
pub fn binds(config: &Config) -> Vec<Bind> {
    let listener = &config.listener;
    let mut out = vec![Bind {
        key: listener.bind_origin.key(),
        what: listener.bind_origin.describe(listener.bind),
        addr: listener.bind,
    }];
    if let Some(admin) = &config.admin {
        out.push(Bind::keyed("[admin] bind", admin.bind));
    }
    if let Some(acme) = &config.acme
        && acme.challenge == Challenge::Http01
        && config.certificates.iter().any(|c| c.source == Source::Acme)
    {
        out.push(Bind::keyed("[acme] http01_bind", acme.http01_bind));
    }
    out
}

/// Every precondition that fails, in the order `run` meets them.
pub fn check(config: &Config) -> Vec<PreflightError> {
    let mut problems = Vec::new();
    if let Err(e) = check_private_files(config) {
        problems.push(e.into());
    }
    let binds = binds(config);
    for (i, first) in binds.iter().enumerate() {
        for second in &binds[i + 1..] {
            if clash(first.addr, second.addr) {
                problems.push(PreflightError::AddressClash {
                    first: first.key,
                    second: second.key,
                    addr: first.addr,
                });
            }
        }
    }
    let capability = Capability::of_this_process();
    for bind in binds {
        if capability.refuses(bind.addr.port()) {
            problems.push(PreflightError::PrivilegedPort {
                what: bind.what,
                unprivileged_start: capability.unprivileged_start,
            });
        }
    }
    if let Some(cluster) = &config.cluster
        && let Err(e) = crate::cluster::key::ClusterKey::load(&cluster.encryption_key_file)
    {
        problems.push(e.into());
    }
    let resolver = std::sync::Arc::new(crate::reload::resolver::Resolver::new(Vec::new()));
    if let Err(e) = crate::tls::server_config(resolver, &config.tls, false, config.listener.http2) {
        problems.push(e.into());
    }
    problems
}

/// Refuses to start when a secret wssd keeps is open to group or others: `data_dir`, the
/// ACME account files, the dev CA's key, and the keys of certificates wssd writes (keys
/// of `files` certificates belong to whoever writes them).
pub fn check_private_files(config: &Config) -> Result<(), StoreError> {
    check_private(&config.data_dir)?;
    if let Some(cluster) = &config.cluster {
        crate::cert::store::check_secret_file(&cluster.encryption_key_file)?;
    }
    for account in crate::acme::account::account_files(&config.data_dir) {
        check_private(&account)?;
    }
    if config
        .certificates
        .iter()
        .any(|c| c.source == Source::Selfsigned)
    {
        check_private(&crate::cert::devca::key_path(&config.ca_dir))?;
    }
    for cert in config
        .certificates
        .iter()
        .filter(|c| c.source != Source::Files)
    {
        check_private(&cert.key_file)?;
    }
    Ok(())
}

/// Would binding `a` make binding `b` fail? The same port (not 0, which picks a free one)
/// on the same address, or on any address when either is the wildcard (`0.0.0.0`, `[::]`,
/// which on Linux also takes IPv4 unless `bindv6only` is set).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Whether this process may bind ports below `unprivileged_start` (Linux:
/// `net.ipv4.ip_unprivileged_port_start`, 1024 unless changed).
struct Capability {
    can_bind_low: bool,
    unprivileged_start: u16,
}

/// CAP_NET_BIND_SERVICE's bit in the capability sets (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;

impl Capability {
    fn of_this_process() -> Capability {
        let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
        let effective = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| effective_capabilities(&status));
        Capability {
            // Where the capability set cannot be read (not Linux), assume it can: `run`
            // will say so if not.
            can_bind_low: effective.is_none_or(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0),
            unprivileged_start: start,
        }
    }

    fn refuses(&self, port: u16) -> bool {
        port != 0 && port < self.unprivileged_start && !self.can_bind_low
    }
}

/// The `CapEff:` line of /proc/self/status, as a bit set.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_clash_on_the_same_port_of_the_same_or_any_address() {
        assert!(clash(addr("127.0.0.1:8443"), addr("127.0.0.1:8443")));
        assert!(clash(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(clash(addr("127.0.0.1:80"), addr("[::]:80")));
        assert!(!clash(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!clash(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(
            !clash(addr("127.0.0.1:0"), addr("127.0.0.1:0")),
            "0 picks a free port"
        );
    }

    #[test]
    fn low_ports_need_the_capability() {
        let without = Capability {
            can_bind_low: false,
            unprivileged_start: 1024,
        };
        assert!(without.refuses(443));
        assert!(without.refuses(1023));
        assert!(!without.refuses(1024));
        assert!(!without.refuses(0));
        let with = Capability {
            can_bind_low: true,
            unprivileged_start: 1024,
        };
        assert!(!with.refuses(80));
        let lowered = Capability {
            can_bind_low: false,
            unprivileged_start: 0,
        };
        assert!(!lowered.refuses(80), "ip_unprivileged_port_start = 0");
    }

    #[test]
    fn the_effective_set_is_read_from_proc_status() {
        let status = "Name:\twssd\nCapInh:\t0000000000000000\nCapEff:\t0000000000000400\n";
        assert_eq!(effective_capabilities(status), Some(0x400));
        assert_eq!(effective_capabilities("Name: x\n"), None);
    }
}
