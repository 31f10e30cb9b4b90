//! Accepting connections, one task each, and the graceful drain.
//!
//! The accept loop takes a bound `TcpListener` (tests bind `127.0.0.1:0`), refuses a
//! connection over `max_connections` right away (before any TLS work), and spawns a
//! task per connection. Shutdown is one mechanism: the `shutdown` token. When it fires
//! the loop stops accepting and drops the listening socket; every connection task sees
//! the same token (it is their drain signal), sends close 1001 and ends; `serve` waits
//! for them up to `drain_timeout` and returns.
//!
//! TLS handshake and the HTTP head share one deadline, `handshake_timeout`: neither
//! tokio-rustls nor the head reader has a timeout of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::http::{self, HeadError, Request};
use super::relay::{self, Limits};
use super::{echo, proxy, upgrade};
use crate::config::ListenerConfig;
use crate::metrics::{ActiveConnection, Metrics};

/// What every connection needs, shared.
pub struct Server {
    pub tls: Arc<ServerConfig>,
    pub settings: ListenerConfig,
    pub metrics: Arc<Metrics>,
}

/// Serves until `shutdown` fires, then drains (up to `drain_timeout`) and returns.
pub async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: CancellationToken) {
    let acceptor = TlsAcceptor::from(server.tls.clone());
    let slots = Arc::new(Semaphore::new(server.settings.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Metrics::inc(&server.metrics.connections_refused);
            debug!(%peer, "max_connections reached; connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let acceptor = acceptor.clone();
        let drain = shutdown.clone();
        tasks.spawn(async move {
            handle(stream, peer, acceptor, server, drain, permit).await;
        });
    }
    drop(listener);
    tasks.close();
    let open = tasks.len();
    info!(connections = open, timeout = ?server.settings.drain_timeout, "draining");
    if tokio::time::timeout(server.settings.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tasks.len(),
            "drain timeout reached; closing the rest"
        );
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    server: Arc<Server>,
    drain: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _active = ActiveConnection::new(&server.metrics);
    let settings = &server.settings;
    let deadline = Instant::now() + settings.handshake_timeout;

    let accepted = tokio::select! {
        _ = drain.cancelled() => return,
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
    };
    let mut tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            Metrics::inc(&server.metrics.tls_handshake_failures);
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            Metrics::inc(&server.metrics.tls_handshake_failures);
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };

    // A tls-alpn-01 validation is complete once the handshake is: nothing more to say.
    if tls.get_ref().1.alpn_protocol() == Some(crate::reload::resolver::ALPN_ACME_TLS) {
        debug!(%peer, "answered a tls-alpn-01 validation");
        let _ = tls.shutdown().await;
        return;
    }
    let mut buf = Vec::with_capacity(2048);
    let head = tokio::select! {
        _ = drain.cancelled() => return,
        r = tokio::time::timeout_at(deadline, http::read_head(&mut tls, &mut buf)) => r,
    };
    let head_end = match head {
        Ok(Ok(end)) => end,
        Ok(Err(HeadError::TooLarge)) => {
            reject(&mut tls, 431, &[], "Request header fields too large.\n").await;
            return;
        }
        Ok(Err(HeadError::Malformed(reason))) => {
            debug!(%peer, %reason, "malformed request");
            reject(&mut tls, 400, &[], "Malformed HTTP request.\n").await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            debug!(%peer, "request head timed out");
            reject(&mut tls, 408, &[], "Request timeout.\n").await;
            return;
        }
    };
    let request = match Request::parse(&buf[..head_end]) {
        Ok(r) => r,
        Err(HeadError::TooLarge) => {
            reject(&mut tls, 431, &[], "Too many header fields.\n").await;
            return;
        }
        Err(e) => {
            debug!(%peer, error = %e, "malformed request");
            reject(&mut tls, 400, &[], "Malformed HTTP request.\n").await;
            return;
        }
    };
    let upgrade = match upgrade::check(&request, &settings.allowed_origins) {
        Ok(u) => u,
        Err(rejection) => {
            debug!(%peer, status = rejection.status, target = %request.target, "request refused");
            reject(
                &mut tls,
                rejection.status,
                &rejection.headers,
                &rejection.message,
            )
            .await;
            return;
        }
    };
    let early = buf.split_off(head_end);
    drop(buf);

    match &settings.upstream {
        None => {
            if let Err(e) = echo::serve(
                tls,
                early,
                &upgrade,
                settings.max_message_size,
                settings.idle_timeout,
                &drain,
            )
            .await
            {
                debug!(%peer, error = %e, "echo connection ended with an error");
            }
        }
        Some(upstream) => {
            let connected = tokio::select! {
                _ = drain.cancelled() => return,
                r = proxy::connect(upstream, &request, &upgrade, peer, deadline) => r,
            };
            let connected = match connected {
                Ok(c) => c,
                Err(e) => {
                    warn!(%peer, error = %e, "upstream unavailable; answered 502");
                    let _ = proxy::respond(&mut tls, &proxy::bad_gateway()).await;
                    let _ = tls.shutdown().await;
                    return;
                }
            };
            if proxy::respond(&mut tls, &connected.response).await.is_err() {
                return;
            }
            let limits = Limits {
                max_message_size: settings.max_message_size,
                idle_timeout: settings.idle_timeout,
            };
            let stats = relay::relay(
                tls,
                &early,
                connected.stream,
                &connected.early,
                limits,
                &drain,
            )
            .await;
            debug!(%peer, ?stats, "connection closed");
        }
    }
}

async fn reject<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) {
    let _ = stream
        .write_all(&http::error_response(status, headers, body))
        .await;
    let _ = stream.shutdown().await;
}
