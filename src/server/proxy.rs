//! Proxying an accepted upgrade to the `ws://` upstream (SPEC "Proxying").
//!
//! wssd opens its own HTTP/1.1 upgrade to the upstream carrying the client's path and
//! query unchanged, the client's `Host`, its end-to-end headers (subprotocols,
//! extensions, cookies, auth), and `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded`
//! set by wssd (any copies from the client are dropped: they are not to be trusted).
//! The client's own `Sec-WebSocket-Key` is passed on, so the upstream's answer can be
//! checked against it and the negotiated subprotocol and extensions returned unchanged;
//! after that the two connections carry the same frames ([`super::relay`]). An upstream
//! that cannot be reached, or answers anything but a valid 101, gets the client a 502.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http::{self, Request, Response, SecurityHeaders};
use super::upgrade::Upgrade;
use crate::config::Upstream;

/// Request headers that describe one hop and are not forwarded (RFC 9110 §7.6.1), plus
/// the forwarding headers wssd sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    CLIENT_CERT_HEADER_LOWER,
];

/// Headers a client's `Connection` cannot turn into hop-by-hop ones.
const NEVER_HOP_BY_HOP: &[&str] = &[
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// The header that carries the verified client certificate to the upstream. Whatever a
/// client sends under this name is dropped, so only wssd can set it.
pub const CLIENT_CERT_HEADER: &str = "X-Forwarded-Client-Cert";
const CLIENT_CERT_HEADER_LOWER: &str = "x-forwarded-client-cert";

/// Response headers from the upstream that wssd writes itself or that describe one hop.
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "upgrade",
    "sec-websocket-accept",
    "transfer-encoding",
    "content-length",
    "trailer",
];

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to upstream {upstream}: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} refused the upgrade: {reason}")]
    Refused { upstream: String, reason: String },
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: String,
        source: std::io::Error,
    },
}

/// An upstream connection that has accepted the upgrade.
pub struct Connected {
    pub stream: TcpStream,
    /// Frames the upstream sent right behind its 101.
    pub early: Vec<u8>,
    /// The 101 to send the client.
    pub response: Vec<u8>,
}

/// What to proxy: the client's request, to which upstream.
pub struct Target<'a> {
    pub upstream: &'a Upstream,
    pub request: &'a Request,
    pub upgrade: &'a Upgrade,
    pub peer: SocketAddr,
    /// The verified client certificate, when the client presented one (mTLS).
    pub client_identity: Option<&'a str>,
}

/// Opens the upgrade to the upstream for the client's request: connecting must finish by
/// `connect_deadline`, the upstream's 101 must arrive by `deadline`.
pub async fn connect(
    target: &Target<'_>,
    connect_deadline: Instant,
    deadline: Instant,
    security: &SecurityHeaders,
) -> Result<Connected, ProxyError> {
    let upstream = target.upstream;
    let name = upstream.to_string();
    let connect_err = |reason: String| ProxyError::Connect {
        upstream: name.clone(),
        reason,
    };
    let mut stream = tokio::time::timeout_at(
        connect_deadline,
        TcpStream::connect((upstream.host.as_str(), upstream.port)),
    )
    .await
    .map_err(|_| connect_err("timed out".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let head = upstream_request(
        target.request,
        target.peer.ip(),
        upstream,
        target.client_identity,
    );
    let io = |source| ProxyError::Io {
        upstream: name.clone(),
        source,
    };
    stream.write_all(&head).await.map_err(io)?;
    let mut buf = Vec::with_capacity(1024);
    let refused = |reason: String| ProxyError::Refused {
        upstream: name.clone(),
        reason,
    };
    let end = tokio::time::timeout_at(deadline, http::read_head(&mut stream, &mut buf))
        .await
        .map_err(|_| refused("no response before the handshake timeout".into()))?
        .map_err(|e| refused(e.to_string()))?;
    let response = Response::parse(&buf[..end]).map_err(|e| refused(e.to_string()))?;
    if response.status != 101 {
        return Err(refused(format!(
            "it answered {} instead of 101",
            response.status
        )));
    }
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(target.upgrade.key.as_bytes());
    if response.header("sec-websocket-accept") != Some(accept.as_str()) {
        return Err(refused(
            "its Sec-WebSocket-Accept does not match the key".into(),
        ));
    }
    Ok(Connected {
        stream,
        early: buf[end..].to_vec(),
        response: client_response(&response, &accept, security),
    })
}

/// Sends `response` to the client: the upstream's 101, or an error status.
pub async fn respond<S: AsyncWrite + Unpin>(
    client: &mut S,
    response: &[u8],
) -> std::io::Result<()> {
    client.write_all(response).await?;
    client.flush().await
}

/// The upgrade request wssd sends upstream.
pub fn upstream_request(
    req: &Request,
    peer: IpAddr,
    upstream: &Upstream,
    client_identity: Option<&str>,
) -> Vec<u8> {
    let host = req
        .header("host")
        .map(str::to_string)
        // `upgrade::check` refuses requests without Host; this is for completeness.
        .unwrap_or_else(|| upstream.to_string().trim_start_matches("ws://").to_string());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            req.target
        )
        .as_bytes(),
    );
    // Headers the client named in Connection are hop-by-hop too, except the ones wssd
    // checked or the handshake needs: naming them must not make wssd drop what it judged.
    let named: Vec<&str> = req
        .tokens("connection")
        .filter(|n| !NEVER_HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)))
        .collect();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str())
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            // `X_Forwarded_For` reads as `X-Forwarded-For` to CGI, WSGI and Rack servers,
            // which turn both into HTTP_X_FORWARDED_FOR: dropped, as nginx does.
            || name.contains('_')
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let forwarded_for = match peer {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    out.extend_from_slice(
        format!(
            "X-Forwarded-For: {peer}\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: {host}\r\nForwarded: for={forwarded_for};proto=https;host=\"{}\"\r\n",
            host.replace(['"', '\\'], "")
        )
        .as_bytes(),
    );
    if let Some(identity) = client_identity {
        out.extend_from_slice(format!("{CLIENT_CERT_HEADER}: {identity}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The 101 wssd sends the client: the upstream's choices (subprotocol, extensions, any
/// other end-to-end headers) and wssd's security headers.
fn client_response(upstream: &Response, accept: &str, security: &SecurityHeaders) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    )
    .into_bytes();
    for (name, value) in &upstream.headers {
        if NOT_RETURNED.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in security.iter() {
        if upstream.header(name).is_none() {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A 502 for the client, with the reason in the body.
pub fn bad_gateway(security: &SecurityHeaders) -> Vec<u8> {
    http::error_response(
        502,
        &[],
        "The upstream WebSocket service is unavailable.\n",
        security,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream {
            host: "127.0.0.1".into(),
            port: 9000,
            scheme: crate::config::UpstreamScheme::Ws,
        }
    }

    #[test]
    fn request_keeps_path_host_and_protocols_and_sets_forwarding() {
        let req = Request::parse(
            b"GET /chat/room?id=7&x=%20 HTTP/1.1\r\nHost: app.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: hop\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nCookie: a=b\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(upstream_request(
            &req,
            "10.1.2.3".parse().unwrap(),
            &up(),
            None,
        ))
        .unwrap();
        assert!(
            text.starts_with("GET /chat/room?id=7&x=%20 HTTP/1.1\r\nHost: app.example.com\r\n"),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Protocol: chat, superchat\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("Cookie: a=b\r\n"));
        assert!(text.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(text.contains("X-Forwarded-Proto: https\r\n"));
        assert!(text.contains("Forwarded: for=10.1.2.3;proto=https;host=\"app.example.com\"\r\n"));
        assert!(
            !text.contains("6.6.6.6"),
            "client forwarding headers must not pass: {text}"
        );
        assert!(
            !text.contains("X-Secret"),
            "headers named in Connection are hop-by-hop"
        );
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let req = Request::parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let text = String::from_utf8(upstream_request(
            &req,
            "::1".parse().unwrap(),
            &up(),
            Some("Hash=ab"),
        ))
        .unwrap();
        assert!(
            text.contains("Forwarded: for=\"[::1]\";proto=https"),
            "{text}"
        );
    }

    #[test]
    fn response_returns_the_upstream_choices() {
        let res = Response::parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\nSec-WebSocket-Protocol: superchat\r\nX-Frame-Options: SAMEORIGIN\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(client_response(
            &res,
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            &SecurityHeaders::default(),
        ))
        .unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("abc"));
        assert!(text.contains("Sec-WebSocket-Protocol: superchat\r\n"));
        assert_eq!(
            text.matches("X-Frame-Options").count(),
            1,
            "the upstream's own value wins"
        );
        assert!(text.contains("Strict-Transport-Security"));
    }
}
