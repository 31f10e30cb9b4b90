//! The built-in echo service, used when no `upstream` is configured (the zero-config dev
//! mode, smoke tests, `wssd probe --send`): every text or binary message comes back
//! unchanged; pings are answered; a close is returned with the same code.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::http::SecurityHeaders;
use super::upgrade::Upgrade;
use crate::config::ListenerConfig;

/// The 101 for an echo connection.
pub fn switching_protocols(upgrade: &Upgrade, security: &SecurityHeaders) -> Vec<u8> {
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    security.write_to(&mut out);
    out.push_str("\r\n");
    out.into_bytes()
}

/// Answers the upgrade and echoes until the client closes or `drain` fires (then it
/// closes with 1001 and waits briefly for the client's reply).
pub async fn serve<S>(
    mut stream: S,
    early: Vec<u8>,
    upgrade: &Upgrade,
    settings: &ListenerConfig,
    security: &SecurityHeaders,
    drain: &CancellationToken,
) -> Result<u64, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&switching_protocols(upgrade, security))
        .await?;
    stream.flush().await?;
    let idle_timeout = settings.idle_timeout;
    let limit = usize::try_from(settings.max_message_size).unwrap_or(usize::MAX);
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let mut ws =
        WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config)).await;
    let result = echo_loop(&mut ws, idle_timeout, drain).await;
    // End TLS properly (close_notify), so the client sees a clean end, not a truncation.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.get_mut().shutdown()).await;
    result
}

async fn echo_loop<S>(
    ws: &mut WebSocketStream<S>,
    idle_timeout: Duration,
    drain: &CancellationToken,
) -> Result<u64, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut echoed = 0u64;
    // After half of idle_timeout of silence the client gets a ping; a live one answers.
    let mut pinged = false;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(idle_timeout / 2, ws.next()) => message,
            _ = drain.cancelled() => return close(ws, CloseCode::Away, "going away").await.map(|()| echoed),
        };
        if message.is_ok() {
            pinged = false;
        }
        match message {
            Err(_) if !pinged => {
                pinged = true;
                match tokio::time::timeout(
                    idle_timeout / 2,
                    ws.send(Message::Ping(b"wssd".to_vec().into())),
                )
                .await
                {
                    Ok(sent) => sent?,
                    Err(_) => return Ok(echoed),
                }
            }
            Err(_) => {
                return close(ws, CloseCode::Away, "idle timeout")
                    .await
                    .map(|()| echoed);
            }
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                // A client that stops reading must not hold the connection forever.
                match tokio::time::timeout(idle_timeout, ws.send(m)).await {
                    Ok(sent) => sent?,
                    Err(_) => return Ok(echoed),
                }
                echoed += 1;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(WsError::Capacity(e)))) => {
                close(ws, CloseCode::Size, "message too big").await?;
                return Err(WsError::Capacity(e));
            }
            Ok(Some(Err(WsError::Protocol(e)))) => {
                close(ws, CloseCode::Protocol, "protocol error").await?;
                return Err(WsError::Protocol(e));
            }
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Ok(echoed),
        }
    }
}

/// Closes with `code` and waits briefly for the client's close reply; gives up on a
/// client that does not read.
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let handshake = async {
        ws.close(Some(frame)).await?;
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<(), WsError>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), handshake).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
