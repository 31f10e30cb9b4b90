//! What runs on a connection (an HTTP/1.1 connection, or one HTTP/2 stream) once its
//! WebSocket handshake is done: the built-in echo, or the frame relay to the upstream.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::echo;
use super::proxy::Connected;
use super::relay::{self, Limits};
use super::service::Connection;

/// What runs on a connection once it is upgraded.
pub enum Next {
    Echo,
    Relay { upstream: Connected, limits: Limits },
}

/// Runs the echo or the relay on an upgraded connection (an HTTP/1.1 connection, or one
/// HTTP/2 stream), starting with the bytes read past the upgrade.
pub async fn run<S>(stream: S, read_ahead: Vec<u8>, next: Next, conn: &Connection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (peer, settings, drain) = (conn.peer, &conn.server.settings, &conn.drain);
    match next {
        Next::Echo => match echo::serve(stream, &read_ahead, settings, drain).await {
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
                drain,
                &conn.server.metrics,
            )
            .await;
            debug!(%peer, ?stats, "connection closed");
        }
    }
}
