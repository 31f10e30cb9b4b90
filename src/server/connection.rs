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

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// The HTTP/2 settings of every connection of a listener: extended CONNECT for
/// WebSockets (RFC 8441), and limits against the known floods. h2 itself refuses a
/// CONTINUATION flood (a header block over `max_header_list_size` ends the connection,
/// CVE-2024-27316) and answers SETTINGS and PING frames without queueing them.
pub fn http2_builder(head_timeout: Duration) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): streams the client resets before wssd has
        // answered them count here, and more than this many at once end the connection
        // with GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
        .max_header_list_size(HYPER_MAX_HEAD as u32)
        // What a client may send before wssd reads it: at most 1 MiB per connection in
        // all, 256 KiB per stream; and at most 64 KiB queued per stream towards a client.
        .initial_connection_window_size(1 << 20)
        .initial_stream_window_size(256 << 10)
        .max_send_buf_size(64 << 10)
        // A connection that goes quiet is closed after a ping goes unanswered.
        .keep_alive_interval(Some(head_timeout.max(Duration::from_secs(10)) * 3))
        .keep_alive_timeout(head_timeout.max(Duration::from_secs(10)));
    builder
}

/// Concurrent streams on one HTTP/2 connection (requests and WebSockets).
const H2_MAX_STREAMS: u32 = 128;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_ERROR_RESETS: usize = 256;

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
    run(tls, read_ahead, next, &conn).await;
}

/// Runs the echo or the relay on an upgraded connection (an HTTP/1.1 connection, or one
/// HTTP/2 stream), starting with the bytes read past the upgrade.
pub async fn run<S>(stream: S, read_ahead: Vec<u8>, next: Next, conn: &Connection)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let peer = conn.peer;
    let settings = &conn.server.settings;
    match next {
        Next::Echo => match echo::serve(stream, &read_ahead, settings, &conn.drain).await {
            Ok((ended, messages)) => debug!(%peer, ?ended, messages, "echo connection closed"),
            Err(e) => debug!(%peer, error = %e, "echo connection ended with an error"),
        },
        Next::Relay { upstream, limits } => {
            let stats = relay::relay(
                stream,
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

/// An HTTP/2 connection: requests and WebSockets as streams, until the client goes or
/// the drain (GOAWAY, then the open streams end: WebSockets with 1001).
async fn http2(tls: Tls, conn: Arc<Connection>) {
    let served = conn
        .server
        .http2
        .serve_connection(TokioIo::new(tls), Service(conn.clone()));
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
