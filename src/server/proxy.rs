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

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forwarding::{self, CLIENT_CERT_HEADER};
use super::http::{self, Request, Response, SecurityHeaders};
use super::upgrade::Upgrade;
use crate::config::Upstream;

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
    /// The headers of the 101 to send the client ([`client_headers`]).
    pub headers: Vec<(String, Vec<u8>)>,
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
        headers: client_headers(&response, &accept, security),
    })
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
    let named = forwarding::connection_named(
        req.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_slice()),
    );
    for (name, value) in &req.headers {
        if !forwarding::forwards_request_header(name, &named) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in forwarding::forwarding_headers(peer, &host) {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(identity) = client_identity {
        out.extend_from_slice(format!("{CLIENT_CERT_HEADER}: {identity}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The headers of the 101 wssd sends the client (besides `Upgrade` and `Connection`): the
/// upstream's choices (subprotocol, extensions, any other end-to-end headers), the accept
/// key for the client's own key, and wssd's security headers where the upstream set none.
pub fn client_headers(
    upstream: &Response,
    accept: &str,
    security: &SecurityHeaders,
) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "Sec-WebSocket-Accept".to_string(),
        accept.as_bytes().to_vec(),
    )];
    for (name, value) in &upstream.headers {
        if !forwarding::returns_response_header(name, &[])
            || name.eq_ignore_ascii_case("sec-websocket-accept")
            || name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        out.push((name.clone(), value.clone()));
    }
    for (name, value) in security.iter() {
        if upstream.header(name).is_none() {
            out.push((name.to_string(), value.as_bytes().to_vec()));
        }
    }
    out
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
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\nSec-WebSocket-Protocol: superchat\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let headers = client_headers(
            &res,
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            &SecurityHeaders::default(),
        );
        let text: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}\r\n", String::from_utf8_lossy(v)))
            .collect();
        assert!(
            text.starts_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(!text.contains("abc"));
        assert!(
            !text.to_ascii_lowercase().contains("upgrade:"),
            "wssd writes Upgrade itself: {text}"
        );
        assert!(!text.to_ascii_lowercase().contains("connection:"), "{text}");
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: superchat\r\n"));
        assert_eq!(
            text.matches("X-Frame-Options").count(),
            1,
            "the upstream's own value wins"
        );
        assert!(text.contains("Strict-Transport-Security"));
    }
}
