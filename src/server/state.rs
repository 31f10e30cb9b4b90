//! What every connection of a listener shares: the TLS setup, the settings, the routes,
//! the HTTP settings, the upstream client, metrics and limits. Built once per listener.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::sync::Semaphore;

use super::forward::Forwarder;
use super::http::SecurityHeaders;
use super::limits::IpLimits;
use super::protocols;
use super::routes::Routes;
use crate::config::ListenerConfig;
use crate::metrics::Metrics;
use crate::reload::resolver::Resolver;

/// What every connection needs, shared.
pub struct Server {
    pub tls: Arc<ServerConfig>,
    pub settings: ListenerConfig,
    pub metrics: Arc<Metrics>,
    pub headers: SecurityHeaders,
    pub ip_limits: Arc<IpLimits>,
    /// `max_connections`: one permit per TLS connection, and one per WebSocket over
    /// HTTP/2 (each is a connection to the upstream, whatever carries it).
    pub slots: Arc<Semaphore>,
    /// For telling which certificate a handshake chose (metrics).
    pub resolver: Arc<Resolver>,
    pub routes: Routes,
    /// The HTTP/1.1 and HTTP/2 settings of every connection.
    pub http1: hyper::server::conn::http1::Builder,
    pub http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    /// The client for plain requests to upstreams.
    pub forwarder: Forwarder,
}

impl Server {
    pub fn new(
        tls: Arc<ServerConfig>,
        settings: ListenerConfig,
        metrics: Arc<Metrics>,
        resolver: Arc<Resolver>,
    ) -> Server {
        let routes = Routes::new(&settings);
        Server {
            resolver,
            forwarder: Forwarder::new(&settings, &routes),
            routes,
            http1: protocols::http1_builder(settings.handshake_timeout),
            http2: protocols::http2_builder(settings.handshake_timeout),
            headers: SecurityHeaders::new(settings.hsts_max_age),
            ip_limits: IpLimits::new(
                settings.max_connections_per_ip,
                settings.handshake_rate_per_ip,
            ),
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            tls,
            settings,
            metrics,
        }
    }
}
