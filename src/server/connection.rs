//! One client connection after its TLS handshake: HTTP/1.1 served by hyper, with
//! keep-alive, until the client goes, the drain asks it to stop, or a request upgrades
//! it; then the echo or the frame relay runs on the same socket.
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
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::http::{MAX_HEAD, MAX_HEADERS};
use super::service::{Connection, Next, Service};
use super::{echo, relay};

type Tls = Box<TlsStream<TcpStream>>;

/// hyper's own head limits: above wssd's (which answer 431 with the security headers),
/// so that they only stop what is far over them.
const HYPER_MAX_HEADERS: usize = MAX_HEADERS * 4;
const HYPER_MAX_HEAD: usize = MAX_HEAD * 4;

/// The HTTP/1.1 settings of every connection of a listener. Header names go out in title
/// case (`Strict-Transport-Security`), as nginx and wssd before hyper wrote them: HTTP
/// does not care, some clients' header parsing does.
pub fn http1_builder(head_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD)
        .title_case_headers(true)
        .keep_alive(true);
    builder
}

/// Serves `tls` until it closes; `conn` is what its requests share.
pub async fn serve(tls: Tls, conn: Arc<Connection>) {
    let Some((tls, read_ahead, next)) = Box::pin(http(tls, conn.clone())).await else {
        return;
    };
    let peer = conn.peer;
    let settings = &conn.server.settings;
    match next {
        Next::Echo => match echo::serve(tls, &read_ahead, settings, &conn.drain).await {
            Ok((ended, messages)) => debug!(%peer, ?ended, messages, "echo connection closed"),
            Err(e) => debug!(%peer, error = %e, "echo connection ended with an error"),
        },
        Next::Relay { upstream, limits } => {
            let stats = relay::relay(
                tls,
                &read_ahead,
                upstream.stream,
                &upstream.early,
                limits,
                &conn.drain,
            )
            .await;
            debug!(%peer, ?stats, "connection closed");
        }
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
