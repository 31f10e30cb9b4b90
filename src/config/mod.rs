//! The config file (TOML, per `SPEC.md`), parsed once into typed settings.
//!
//! Two layers, "parse, don't validate": serde reads the file into `Raw*` structs that
//! reject unknown keys and check every value's shape as it is read (durations, sizes,
//! addresses, domain names), so a mistake is reported with its key path and line. Then
//! [`Config::from_toml`] turns the raw structs into [`Config`], filling in defaults; the
//! rest of wssd never sees a string from the file. [`Config::check_files`] is separate
//! because it touches the file system: `wssd check` and `wssd run` call it, tests that
//! only want to parse an example config need not.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod http_names;
mod names;
mod overrides;
mod parse;
mod raw;

pub use names::{Domain, Origin, OriginPattern, Upstream, UpstreamScheme};
pub use overrides::{Listen, Overrides};

/// Where the zero-config dev mode listens, and the default `[listener] bind`.
pub const DEFAULT_BIND: &str = "127.0.0.1:8443";
/// The config file `wssd run` reads from the working directory when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "wssd.toml";

/// A configuration problem, with the file, line and key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: {key}: {message}", file.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        file: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// Everything `wssd run` needs, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (`None` for the zero-config dev mode).
    pub file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The local dev CA that `source = "selfsigned"` issues from.
    pub ca_dir: PathBuf,
    /// Watch certificate files for changes (default). When false, only SIGHUP reloads.
    pub watch: bool,
    pub listener: ListenerConfig,
    pub tls: TlsConfig,
    pub admin: Option<AdminConfig>,
    pub certificates: Vec<CertificateConfig>,
    pub acme: Option<AcmeConfig>,
    /// `[cluster]`: replicas that share their certificates through an engine.
    pub cluster: Option<ClusterConfig>,
    /// The line each file path was written on (by key path), to report a missing file.
    path_lines: Vec<(String, usize)>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// More addresses on `bind`'s port, served alike: the dev mode's `[::1]` beside
    /// 127.0.0.1, as its certificate covers both. One whose address family the host
    /// lacks (no IPv6) is skipped with a log line.
    pub also_bind: Vec<SocketAddr>,
    /// What chose `bind` and `also_bind`, for the errors that name it.
    pub bind_origin: BindOrigin,
    /// `None`: the built-in echo service.
    pub upstream: Option<Upstream>,
    /// Empty: any Origin.
    pub allowed_origins: Vec<OriginPattern>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_message_size: u64,
    /// The largest request body forwarded to the upstream (plain requests).
    pub max_body_size: u64,
    pub drain_timeout: Duration,
    /// Connections at once from one IP address (0: no cap).
    pub max_connections_per_ip: usize,
    /// New connections per second from one IP address, with a burst of twice that (0: no
    /// limit).
    pub handshake_rate_per_ip: u32,
    pub upstream_connect_timeout: Duration,
    /// How long a plain request waits for the upstream's response head (then 504).
    pub upstream_response_timeout: Duration,
    /// `Strict-Transport-Security: max-age=` on wssd's own responses.
    pub hsts_max_age: Duration,
    /// Connection worker threads (default: the CPUs wssd may use).
    pub workers: usize,
    /// Offer HTTP/2 (ALPN `h2`): requests and RFC 8441 WebSockets as streams.
    pub http2: bool,
    /// Headers added to the upstream's responses to plain requests where it set none
    /// (`[listener.response_headers]`), names and values checked.
    pub response_headers: Vec<(String, String)>,
    /// `[[route]]`s, in file order (the listener picks the longest matching prefix).
    pub routes: Vec<RouteConfig>,
}

/// What chose the listener's addresses: a key, `run --listen`, or the dev mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOrigin {
    /// `[listener] bind` (in a file, or its default).
    Key,
    /// `--listen ADDR`, or `--listen localhost:PORT` (`localhost`).
    Flag { localhost: bool },
    /// The dev mode, without a config file.
    DevMode,
}

impl BindOrigin {
    /// The key or flag that set the address.
    pub fn key(self) -> &'static str {
        match self {
            BindOrigin::Key => "[listener] bind",
            BindOrigin::Flag { .. } => "--listen",
            BindOrigin::DevMode => "the dev mode's address",
        }
    }

    /// `addr` (one of the listener's addresses) as its user wrote it or met it.
    pub fn describe(self, addr: SocketAddr) -> String {
        match self {
            BindOrigin::Key => format!("[listener] bind = {addr}"),
            BindOrigin::Flag { localhost: false } => format!("--listen {addr}"),
            BindOrigin::Flag { localhost: true } => {
                format!("--listen localhost:{} ({addr})", addr.port())
            }
            BindOrigin::DevMode => format!("the dev mode's address {addr}"),
        }
    }
}

/// A `[[route]]`: requests whose path is `path` or under it go to `upstream`. Unset
/// settings are the listener's.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// A normalized path prefix ([`http_names::route_path`]).
    pub path: String,
    pub upstream: Upstream,
    pub allowed_origins: Option<Vec<OriginPattern>>,
    pub max_message_size: Option<u64>,
    pub max_body_size: Option<u64>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443))),
            also_bind: Vec::new(),
            bind_origin: BindOrigin::Key,
            upstream: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_message_size: 16 << 20,
            max_body_size: 16 << 20,
            drain_timeout: Duration::from_secs(10),
            max_connections_per_ip: 0,
            handshake_rate_per_ip: 0,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            hsts_max_age: Duration::from_secs(365 * 86_400),
            // The CPUs this process may use (cgroup quotas included).
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            http2: true,
            response_headers: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// Mozilla's server-side TLS profiles: `intermediate` (TLS 1.2 and 1.3, ECDHE with AEAD
/// ciphers only) and `modern` (TLS 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    #[default]
    Intermediate,
    Modern,
}

/// Whether a client certificate is required or only verified when offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub profile: TlsProfile,
    /// CA certificates that client certificates must chain to (mTLS).
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// `/readyz` also requires a TCP connection to the upstream.
    pub readyz_checks_upstream: bool,
    /// `/drain` starts the listener's drain without ending the process (a preStop hook's
    /// way to drain wssd before the app it fronts stops).
    pub drain_endpoint: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Acme,
    Selfsigned,
    Files,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Acme => "acme",
            Source::Selfsigned => "selfsigned",
            Source::Files => "files",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa2048")]
    Rsa2048,
}

#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub domains: Vec<Domain>,
    pub source: Source,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub deploy_hook: Option<String>,
    pub key_type: KeyType,
    pub profile: Option<String>,
}

impl CertificateConfig {
    /// The domains as one comma-separated string, for logs.
    pub fn domain_list(&self) -> String {
        self.domains
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `[cluster]` (SPEC "Fleet"): every replica with the same `name` on the same engine
/// shares each certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub backend: ClusterBackend,
    /// The engine's client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// The fleet's name: the prefix of its keys in the engine.
    pub name: String,
    /// How long a replica's lock on a certificate outlives its last sign of life.
    pub lease_ttl: Duration,
    /// The key that seals the private keys stored in the engine.
    pub encryption_key_file: PathBuf,
    /// TLS to the engine: the CA its certificate chains to, and a client certificate.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterBackend {
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "dns-01")]
    Dns01,
}

/// A secret from the config file; its `Debug` never shows the value.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Vec<String>,
    pub challenge: Challenge,
    pub http01_bind: SocketAddr,
    pub dns01_hook: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub renew_before: Option<Duration>,
    /// The first wait after a failed attempt; it doubles with each failure (up to 6 h).
    pub retry_backoff: Duration,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<Secret>,
    pub profile: Option<String>,
}

impl Config {
    /// The zero-config dev mode: echo on 127.0.0.1:8443 with a dev-CA certificate for
    /// localhost, 127.0.0.1 and ::1.
    pub fn dev_mode() -> Config {
        let data_dir = PathBuf::from("./wssd-data");
        let dir = data_dir.join("certs").join("localhost");
        Config {
            file: None,
            ca_dir: default_ca_dir(),
            watch: true,
            listener: ListenerConfig {
                also_bind: vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8443))],
                bind_origin: BindOrigin::DevMode,
                ..ListenerConfig::default()
            },
            tls: TlsConfig::default(),
            admin: None,
            certificates: vec![CertificateConfig {
                domains: default_dev_domains(),
                source: Source::Selfsigned,
                cert_file: dir.join("cert.pem"),
                key_file: dir.join("key.pem"),
                deploy_hook: None,
                key_type: KeyType::EcdsaP256,
                profile: None,
            }],
            acme: None,
            cluster: None,
            data_dir,
            path_lines: Vec::new(),
        }
    }

    /// Checks that the files the config reads exist: certificate pairs with
    /// `source = "files"` and the ACME `ca_file`.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let file = self.file.clone().unwrap_or_default();
        let missing = |key: String, path: &Path| ConfigError::Invalid {
            file: file.clone(),
            line: self
                .path_lines
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, l)| *l),
            key,
            message: format!("file {} does not exist or cannot be read", path.display()),
        };
        for (index, c) in self.certificates.iter().enumerate() {
            if c.source != Source::Files {
                continue;
            }
            for (name, path) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
                if std::fs::metadata(path).is_err() {
                    return Err(missing(format!("certificate[{index}].{name}"), path));
                }
            }
        }
        if let Some(ca) = &self.tls.client_ca_file
            && std::fs::metadata(ca).is_err()
        {
            return Err(missing("tls.client_ca_file".into(), ca));
        }
        if let Some(cluster) = &self.cluster {
            let files = [
                (
                    "cluster.encryption_key_file",
                    Some(&cluster.encryption_key_file),
                ),
                ("cluster.ca_file", cluster.ca_file.as_ref()),
                ("cluster.cert_file", cluster.cert_file.as_ref()),
                ("cluster.key_file", cluster.key_file.as_ref()),
            ];
            for (key, path) in files {
                if let Some(path) = path
                    && std::fs::metadata(path).is_err()
                {
                    return Err(missing(key.into(), path));
                }
            }
        }
        if let Some(ca) = self.acme.as_ref().and_then(|a| a.ca_file.as_ref())
            && std::fs::metadata(ca).is_err()
        {
            return Err(missing("acme.ca_file".into(), ca));
        }
        Ok(())
    }
}

/// `localhost`, `127.0.0.1`, `::1`: what a dev certificate covers by default.
pub fn default_dev_domains() -> Vec<Domain> {
    vec![
        Domain::Dns("localhost".into()),
        Domain::Ip(IpAddr::from([127, 0, 0, 1])),
        Domain::Ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

/// The local dev CA's directory: the platform data dir, e.g. `~/.local/share/wssd/ca`.
pub fn default_ca_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("wssd")
        .join("ca")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_logs_and_messages() {
        assert_eq!(Source::Acme.to_string(), "acme");
        assert_eq!(Source::Selfsigned.to_string(), "selfsigned");
        assert_eq!(Source::Files.to_string(), "files");
        let cert = CertificateConfig {
            domains: vec![
                Domain::Dns("a.test".into()),
                Domain::Ip([127, 0, 0, 1].into()),
            ],
            source: Source::Files,
            cert_file: "c".into(),
            key_file: "k".into(),
            deploy_hook: None,
            key_type: KeyType::default(),
            profile: None,
        };
        assert_eq!(cert.domain_list(), "a.test,127.0.0.1");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }

    #[test]
    fn the_dev_defaults() {
        let names: Vec<String> = default_dev_domains()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
        assert!(
            default_ca_dir().ends_with("wssd/ca"),
            "{}",
            default_ca_dir().display()
        );
    }
}
