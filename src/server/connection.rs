//! One client connection after its TLS handshake, served by hyper as ALPN chose.
//!
//! HTTP/2: requests and WebSockets (RFC 8441) are streams; each WebSocket runs in a task
//! of its own ([`super::service`]), and the connection lasts until the client goes or the
//! drain (GOAWAY; open WebSockets close with 1001).
//!
//! HTTP/1.1: keep-alive, until the client goes, the drain asks it to stop, or a request
//! upgrades it; then the echo or the frame relay ([`super::websocket`]) runs on the same
//! socket.
//!
//! hyper hands back the TLS stream and whatever it had read past the 101 (a client that
//! did not wait for the 101 sends its first frames right behind its request); the relay
//! starts with those bytes. The HTTP phase runs as a boxed future of its own, freed when
//! it ends, so that an open WebSocket holds only the relay's state (see
//! [`super::listener`]).
//!
//! A head must arrive within `handshake_timeout` of the connection becoming idle (the
//! first request, and every keep-alive request after it); hyper then closes the
//! connection. On drain, a connection between requests closes at once and one in a
//! request closes after its response.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::service::{Connection, Service};
use super::websocket::{self, Next};
use super::write_batch::BatchedTls;

type Tls = Box<TlsStream<TcpStream>>;

/// Serves `tls` until it closes; `conn` is what its requests share.
pub async fn serve(tls: Tls, conn: Arc<Connection>) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2);
    if h2 {
        Box::pin(http2(tls, conn)).await;
        return;
    }
    let Some((tls, read_ahead, next)) = Box::pin(http(tls, conn.clone())).await else {
        return;
    };
    websocket::run(tls, read_ahead, next, &conn).await;
}

/// An HTTP/2 connection: requests and WebSockets as streams, until the client goes or
/// the drain (GOAWAY, then the open streams end: WebSockets with 1001).
async fn http2(tls: Tls, conn: Arc<Connection>) {
    let served = conn
        .server
        .http2
        .serve_connection(TokioIo::new(BatchedTls::new(tls)), Service(conn.clone()));
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = conn.drain.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// The HTTP phase: requests until the connection ends (`None`) or is upgraded (the
/// socket, the bytes read past the 101, and what runs next).
async fn http(tls: Tls, conn: Arc<Connection>) -> Option<(Tls, Vec<u8>, Next)> {
    let served = conn
        .server
        .http1
        .serve_connection(TokioIo::new(tls), Service(conn.clone()))
        .with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = conn.drain.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %e, "HTTP connection ended with an error");
    }
    let (on_upgrade, next) = conn.next.lock().ok()?.take()?;
    let upgraded = on_upgrade.await.ok()?;
    match upgraded.downcast::<TokioIo<Tls>>() {
        // Copied out (usually nothing): the `Bytes` would keep hyper's whole read buffer
        // alive for as long as the WebSocket is open.
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf.to_vec(), next)),
        Err(_) => {
            debug!(peer = %conn.peer, "upgraded connection of an unexpected type");
            None
        }
    }
}
