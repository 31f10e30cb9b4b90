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

use bytes::Bytes;
use http_body_util::Empty;
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forwarding::{self, CLIENT_CERT_HEADER};
use super::http::{MAX_HEAD, Request, SecurityHeaders};
use super::upgrade::Upgrade;
use crate::config::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to upstream {upstream}: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream {upstream} refused the upgrade: {reason}")]
    Refused { upstream: String, reason: String },
}

/// An upstream connection that has accepted the upgrade.
pub struct Connected {
    pub stream: TcpStream,
    /// Frames the upstream sent right behind its 101.
    pub early: Vec<u8>,
    /// The headers of the 101 to send the client ([`client_headers`]).
    pub headers: HeaderMap,
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

/// Opens the upgrade to the upstream for the client's request, with hyper's HTTP/1.1
/// client: connecting must finish by `connect_deadline`, the upstream's 101 must arrive
/// by `deadline`. hyper hands back the socket and whatever it read past the 101.
pub async fn connect(
    target: &Target<'_>,
    connect_deadline: Instant,
    deadline: Instant,
    security: &SecurityHeaders,
) -> Result<Connected, ProxyError> {
    let upstream = target.upstream;
    // The upstream's name only for errors: formatting it costs on every connection.
    let connect_err = |reason: String| ProxyError::Connect {
        upstream: upstream.to_string(),
        reason,
    };
    let stream = tokio::time::timeout_at(
        connect_deadline,
        TcpStream::connect((upstream.host.as_str(), upstream.port)),
    )
    .await
    .map_err(|_| connect_err("timed out".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let refused = |reason: String| ProxyError::Refused {
        upstream: upstream.to_string(),
        reason,
    };
    let request = upstream_request(
        target.request,
        target.peer.ip(),
        upstream,
        target.client_identity,
    )
    .map_err(|e| refused(format!("the upgrade request cannot be built: {e}")))?;
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(target.upgrade.key.as_bytes());
    let exchange = async {
        let (mut send, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .max_buf_size(MAX_HEAD)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| refused(e.to_string()))?;
        let mut conn = std::pin::pin!(conn.with_upgrades());
        let mut response = std::pin::pin!(send.send_request(request));
        // The connection task ends as soon as it has handed the socket to the upgrade,
        // which can be before the response is picked up.
        let mut conn_done = false;
        let response = loop {
            tokio::select! {
                r = &mut response => break r.map_err(|e| refused(e.to_string()))?,
                c = &mut conn, if !conn_done => {
                    conn_done = true;
                    c.map_err(|e| refused(e.to_string()))?;
                }
            }
        };
        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            return Err(refused(format!(
                "it answered {} instead of 101",
                response.status().as_u16()
            )));
        }
        if response
            .headers()
            .get("sec-websocket-accept")
            .map(HeaderValue::as_bytes)
            != Some(accept.as_bytes())
        {
            return Err(refused(
                "its Sec-WebSocket-Accept does not match the key".into(),
            ));
        }
        let headers = client_headers(response.headers(), &accept, security);
        let upgraded = if conn_done {
            hyper::upgrade::on(response).await
        } else {
            tokio::join!(hyper::upgrade::on(response), conn).0
        }
        .map_err(|e| refused(e.to_string()))?;
        let parts = upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| refused("the upgraded connection is not the socket".into()))?;
        Ok(Connected {
            stream: parts.io.into_inner(),
            early: parts.read_buf.to_vec(),
            headers,
        })
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| refused("no response before the handshake timeout".into()))?
}

/// The upgrade request wssd sends upstream.
pub fn upstream_request(
    req: &Request,
    peer: IpAddr,
    upstream: &Upstream,
    client_identity: Option<&str>,
) -> Result<hyper::Request<Empty<Bytes>>, hyper::http::Error> {
    let host = req
        .header("host")
        .map(str::to_string)
        // `upgrade::check` refuses requests without Host; this is for completeness.
        .unwrap_or_else(|| upstream.to_string().trim_start_matches("ws://").to_string());
    let mut out = hyper::Request::get(req.target.as_str())
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "Upgrade");
    // Headers the client named in Connection are hop-by-hop too, except the ones wssd
    // checked or the handshake needs: naming them must not make wssd drop what it judged.
    let named = forwarding::connection_named(
        req.headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    for (name, value) in &req.headers {
        if !forwarding::forwards_request_header(name.as_str(), &named) {
            continue;
        }
        out = out.header(name, value);
    }
    for (name, value) in forwarding::forwarding_headers(peer, &host) {
        out = out.header(name, value);
    }
    if let Some(identity) = client_identity {
        out = out.header(CLIENT_CERT_HEADER, identity);
    }
    out.body(Empty::new())
}

/// The headers of the 101 wssd sends the client (besides `Upgrade` and `Connection`): the
/// upstream's choices (subprotocol, extensions, any other end-to-end headers), the accept
/// key for the client's own key, and wssd's security headers where the upstream set none.
pub fn client_headers(upstream: &HeaderMap, accept: &str, security: &SecurityHeaders) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len() + 8);
    if let Ok(accept) = HeaderValue::from_str(accept) {
        out.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    for (name, value) in upstream {
        if !forwarding::returns_response_header(name.as_str(), &[])
            || name == hyper::header::SEC_WEBSOCKET_ACCEPT
            || name == hyper::header::CONTENT_LENGTH
        {
            continue;
        }
        out.append(name, value.clone());
    }
    for (name, value) in security.headers() {
        if !upstream.contains_key(name) {
            out.append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderName;

    fn up() -> Upstream {
        Upstream {
            host: "127.0.0.1".into(),
            port: 9000,
            scheme: crate::config::UpstreamScheme::Ws,
        }
    }

    /// The request's head as header lines, `name: value`, names lower-case.
    fn lines(req: &hyper::Request<Empty<Bytes>>) -> String {
        req.headers()
            .iter()
            .map(|(n, v)| format!("{n}: {}\r\n", String::from_utf8_lossy(v.as_bytes())))
            .collect()
    }

    #[test]
    fn request_keeps_path_host_and_protocols_and_sets_forwarding() {
        let req = Request::parse(
            b"GET /chat/room?id=7&x=%20 HTTP/1.1\r\nHost: app.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\nX-Secret: hop\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nCookie: a=b\r\n\r\n",
        )
        .unwrap();
        let out = upstream_request(&req, "10.1.2.3".parse().unwrap(), &up(), None).unwrap();
        assert_eq!(out.method(), hyper::Method::GET);
        assert_eq!(out.uri(), "/chat/room?id=7&x=%20");
        let text = lines(&out);
        assert!(
            text.starts_with(
                "host: app.example.com\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            ),
            "{text}"
        );
        assert_eq!(out.headers().get_all("host").iter().count(), 1);
        assert_eq!(out.headers().get_all("connection").iter().count(), 1);
        assert!(text.contains("sec-websocket-protocol: chat, superchat\r\n"));
        assert!(text.contains("sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("cookie: a=b\r\n"));
        assert!(text.contains("x-forwarded-for: 10.1.2.3\r\n"));
        assert!(text.contains("x-forwarded-proto: https\r\n"));
        assert!(text.contains("forwarded: for=10.1.2.3;proto=https;host=\"app.example.com\"\r\n"));
        assert!(
            !text.contains("6.6.6.6"),
            "client forwarding headers must not pass: {text}"
        );
        assert!(
            !text.contains("x-secret"),
            "headers named in Connection are hop-by-hop"
        );
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let req = Request::parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let out = upstream_request(&req, "::1".parse().unwrap(), &up(), Some("Hash=ab")).unwrap();
        let text = lines(&out);
        assert!(
            text.contains("forwarded: for=\"[::1]\";proto=https"),
            "{text}"
        );
        assert!(
            text.contains("x-forwarded-client-cert: Hash=ab\r\n"),
            "{text}"
        );
    }

    #[test]
    fn response_returns_the_upstream_choices() {
        let mut res = HeaderMap::new();
        for (n, v) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "abc"),
            ("sec-websocket-protocol", "superchat"),
            ("x-frame-options", "SAMEORIGIN"),
            ("content-length", "0"),
        ] {
            res.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let headers = client_headers(
            &res,
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            &SecurityHeaders::default(),
        );
        let text: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}\r\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        assert!(
            text.starts_with("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(!text.contains("abc"));
        assert!(
            !text.to_ascii_lowercase().contains("upgrade:"),
            "wssd writes Upgrade itself: {text}"
        );
        assert!(!text.to_ascii_lowercase().contains("connection:"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        assert!(text.contains("sec-websocket-protocol: superchat\r\n"));
        assert_eq!(
            text.to_ascii_lowercase().matches("x-frame-options").count(),
            1,
            "the upstream's own value wins"
        );
        assert!(text.contains("strict-transport-security"));
    }
}
