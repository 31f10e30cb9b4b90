//! The config file exactly as serde reads it: every section rejects unknown keys, and
//! values are checked for shape as they are read (durations, sizes, addresses, names),
//! so an error carries its key path and line. [`super::Config::from_toml`] turns these
//! into the typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    Challenge, ClientAuth, ClusterBackend, Domain, KeyType, Secret, Source, TlsProfile, Upstream,
};
use crate::units;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) ca_dir: Option<PathBuf>,
    pub(super) watch: Option<bool>,
    pub(super) listener: Option<RawListener>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(super) certificate: Vec<Spanned<RawCertificate>>,
    pub(super) acme: Option<Spanned<RawAcme>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

/// `[cluster]`: the engine the replicas share certificates through.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) backend: ClusterBackend,
    pub(super) endpoints: Vec<Spanned<String>>,
    pub(super) name: Spanned<String>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) lease_ttl: Option<Duration>,
    pub(super) encryption_key_file: Spanned<PathBuf>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) cert_file: Option<Spanned<PathBuf>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
}

/// `[[route]]`: a path prefix and where its requests go.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: Spanned<String>,
    #[serde(deserialize_with = "de_upstream_value")]
    pub(super) upstream: Upstream,
    pub(super) allowed_origins: Option<Vec<Spanned<String>>>,
    #[serde(default, deserialize_with = "de_nonzero_size")]
    pub(super) max_message_size: Option<u64>,
    #[serde(default, deserialize_with = "de_nonzero_size")]
    pub(super) max_body_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) bind: Option<SocketAddr>,
    #[serde(default, deserialize_with = "de_upstream")]
    pub(super) upstream: Option<Upstream>,
    pub(super) allowed_origins: Option<Vec<Spanned<String>>>,
    pub(super) max_connections: Option<std::num::NonZeroUsize>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_nonzero_size")]
    pub(super) max_message_size: Option<u64>,
    #[serde(default, deserialize_with = "de_nonzero_size")]
    pub(super) max_body_size: Option<u64>,
    #[serde(default, deserialize_with = "de_duration")]
    pub(super) drain_timeout: Option<Duration>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) handshake_rate_per_ip: Option<u32>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) upstream_connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) upstream_response_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub(super) hsts_max_age: Option<Duration>,
    pub(super) workers: Option<std::num::NonZeroUsize>,
    pub(super) http2: Option<bool>,
    pub(super) response_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) profile: Option<TlsProfile>,
    pub(super) client_ca_file: Option<Spanned<PathBuf>>,
    pub(super) client_auth: Option<ClientAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) bind: SocketAddr,
    pub(super) readyz_checks_upstream: Option<bool>,
    pub(super) drain_endpoint: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    #[serde(default)]
    pub(super) domains: Vec<Domain>,
    pub(super) source: Source,
    pub(super) cert_file: Option<Spanned<PathBuf>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
    pub(super) deploy_hook: Option<String>,
    pub(super) key_type: Option<KeyType>,
    pub(super) profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) directory: String,
    #[serde(default)]
    pub(super) contact: Vec<String>,
    pub(super) challenge: Option<Challenge>,
    pub(super) http01_bind: Option<SocketAddr>,
    pub(super) dns01_hook: Option<PathBuf>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) renew_before: Option<Duration>,
    #[serde(default, deserialize_with = "de_timeout")]
    pub(super) retry_backoff: Option<Duration>,
    pub(super) eab_kid: Option<String>,
    pub(super) eab_hmac_key: Option<Secret>,
    pub(super) profile: Option<String>,
}

/// The longest duration accepted anywhere: beyond it, deadline arithmetic could overflow,
/// and no real setting is that long.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let value = units::parse_duration(&text).map_err(serde::de::Error::custom)?;
    if value > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is longer than ten years"
        )));
    }
    Ok(value)
}

pub(super) fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A timeout: zero would fail every connection.
pub(super) fn de_timeout<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match duration(d)? {
        Duration::ZERO => Err(serde::de::Error::custom("must be longer than zero")),
        value => Ok(Some(value)),
    }
}

pub(super) fn de_nonzero_size<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    match units::parse_size(&text).map_err(serde::de::Error::custom)? {
        0 => Err(serde::de::Error::custom("must be larger than zero")),
        value => Ok(Some(value)),
    }
}

pub(super) fn de_upstream<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Upstream>, D::Error> {
    de_upstream_value(d).map(Some)
}

pub(super) fn de_upstream_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Upstream, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}
