//! What wssd's HTTP shares: the checked view of a request head ([`Request`], made from
//! the head hyper parsed), the responses wssd makes itself, all with the security
//! headers, and the small server of the side ports (admin, http-01), on hyper.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::limits::{DescriptorReserve, IpLimits, SidePortCaps, descriptor_limit};

/// Largest request or response head accepted (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted in one head.
pub const MAX_HEADERS: usize = 64;
/// How long a side-port client (admin, http-01) gets to send its request head. Such a
/// request is one short line and a Host; a CA's validation or Prometheus sends it at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers on every response wssd makes itself (besides HSTS, whose max-age is set).
const FIXED_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

/// The security headers of wssd's own responses: HSTS with the configured max-age, and
/// the fixed ones.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    hsts: String,
    /// The same, as hyper's names and values, made once.
    parsed: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl SecurityHeaders {
    pub fn new(hsts_max_age: std::time::Duration) -> SecurityHeaders {
        let hsts = format!("max-age={}", hsts_max_age.as_secs());
        let parsed = std::iter::once(("Strict-Transport-Security", hsts.as_str()))
            .chain(FIXED_HEADERS.iter().copied())
            .filter_map(|(n, v)| {
                Some((
                    http::HeaderName::from_bytes(n.as_bytes()).ok()?,
                    http::HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        SecurityHeaders { hsts, parsed }
    }

    /// Every header, as hyper's names and values.
    pub fn headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        &self.parsed
    }

    /// The `Strict-Transport-Security` value, as hyper's.
    pub fn hsts_value(&self) -> Option<&http::HeaderValue> {
        self.parsed
            .iter()
            .find(|(n, _)| n == http::header::STRICT_TRANSPORT_SECURITY)
            .map(|(_, v)| v)
    }

    /// Every header, name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once(("Strict-Transport-Security", self.hsts.as_str()))
            .chain(FIXED_HEADERS.iter().copied())
    }

    /// Appends them as header lines.
    pub fn write_to(&self, out: &mut String) {
        for (name, value) in self.iter() {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
    }
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders::new(std::time::Duration::from_secs(365 * 86_400))
    }
}

/// A request head, owned: what wssd checks before it routes, upgrades or answers. The
/// headers are hyper's (a copy of its map shares the names' and values' bytes).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    /// Path and query, exactly as sent.
    pub target: String,
    pub headers: http::HeaderMap,
}

impl Request {
    /// A request head from its bytes (the unit tests' requests).
    #[cfg(test)]
    pub fn parse(head: &[u8]) -> Result<Request, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            other => return Err(format!("{other:?}")),
        }
        let mut map = http::HeaderMap::new();
        for h in req.headers.iter() {
            let name =
                http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
            let value = http::HeaderValue::from_bytes(h.value).map_err(|e| e.to_string())?;
            map.append(name, value);
        }
        Ok(Request {
            method: req
                .method
                .unwrap_or_default()
                .parse()
                .map_err(|e: http::method::InvalidMethod| e.to_string())?,
            target: req.path.unwrap_or_default().to_string(),
            headers: map,
        })
    }

    /// The first header called `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::trim)
    }

    /// How many header lines are called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// Is the target a path with an optional query (origin-form, RFC 9112 §3.2.1)? The
    /// absolute form (`http://host/x`), `*` and anything else would leave the upstream
    /// and wssd to disagree about which host and path were asked for.
    pub fn has_origin_form_target(&self) -> bool {
        self.target.starts_with('/')
            && self
                .target
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'#')
    }

    /// The request's one `Host`, checked (RFC 9112 §3.2: a request with no Host, two, or
    /// an invalid one is answered 400). `Ok(None)`: there is none.
    pub fn host(&self) -> Result<Option<&str>, &'static str> {
        match self.count("host") {
            0 => Ok(None),
            1 => match self.header("host") {
                Some(host) if valid_host(host) => Ok(Some(host)),
                _ => Err("Host is not a valid host name, address or port.\n"),
            },
            _ => Err("Host appears more than once.\n"),
        }
    }

    /// Every comma-separated token of every `name` header, trimmed.
    pub fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// `uri-host [":" port]` (RFC 9110 §7.2), narrowed to what names a server: a DNS-style
/// name (letters, digits, `-`, `_`, `.`), an IPv4 address, or a bracketed IPv6 literal,
/// then an optional decimal port. Refused: quotes, commas, semicolons, spaces, `@`, `/`,
/// `\\` and the like, which would otherwise reach the upstream inside `Host`,
/// `X-Forwarded-Host` and `Forwarded`, where they read as syntax.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, after)
    } else {
        match host.find(':') {
            Some(colon) => (Some(&host[..colon]), &host[colon..]),
            None => (Some(host), ""),
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
        }
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    port_ok && name_ok
}

use super::body::Body;

/// A response wssd makes itself on the listener (an error, a refusal): the security
/// headers, `extra_headers`, the reason as plain text, and `Connection: close`, as every
/// refusal ends the connection.
pub fn response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &str,
    security: &SecurityHeaders,
) -> hyper::Response<Body> {
    typed_response(
        status,
        extra_headers,
        "text/plain; charset=utf-8",
        bytes::Bytes::copy_from_slice(body.as_bytes()),
        security,
    )
}

/// The same with a body of `content_type` (the side ports' answers). hyper leaves the
/// body out of the answer to a HEAD and keeps its `Content-Length`.
pub fn typed_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: bytes::Bytes,
    security: &SecurityHeaders,
) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(http_body_util::Either::Right(
        http_body_util::Full::new(body),
    ));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in security.headers() {
        headers.append(name, value.clone());
    }
    let pairs = extra_headers.iter().copied().chain([
        ("Cache-Control", "no-store"),
        ("Content-Type", content_type),
        ("Connection", "close"),
    ]);
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

impl Request {
    /// The checked view of a request hyper parsed: method, target as sent (origin-form
    /// as a path and query; the absolute form and `*` as they came, for
    /// [`Request::has_origin_form_target`] to refuse) and headers.
    ///
    /// Over HTTP/2 the target is the `:path` and, when the client sent no `Host`, the
    /// `:authority` stands in for it (RFC 9113 §8.3.1), so that the same checks apply.
    pub fn from_head<B>(req: &hyper::Request<B>) -> Request {
        let mut headers = req.headers().clone();
        let uri = req.uri();
        let target = if req.version() == hyper::Version::HTTP_2 {
            if !headers.contains_key(hyper::header::HOST)
                && let Some(authority) = uri.authority()
                && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
            {
                headers.insert(hyper::header::HOST, value);
            }
            uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
        } else if uri.scheme().is_none() && uri.authority().is_none() {
            uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
        } else {
            uri.to_string()
        };
        Request {
            method: req.method().clone(),
            target,
            headers,
        }
    }

    /// About how many bytes the head took on the wire.
    pub fn head_size(&self) -> usize {
        self.method.as_str().len()
            + self.target.len()
            + 12
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>()
    }
}

/// A small plain-HTTP/1.1 server for wssd's side ports (the admin endpoints, the http-01
/// responder) until `shutdown`, on hyper: one request per connection, its head read within
/// [`HEAD_TIMEOUT`] (else 408), a head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines
/// answered 431, a target that is not a path or a bad `Host` 400 (all with the security
/// headers; what hyper cannot parse gets its bare 400), every other one with what `answer`
/// returns. Connections over the port's caps ([`SidePortCaps`], from the descriptor
/// limit) are closed at once. `what` names the server in log lines.
pub async fn serve_plain<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    answer: F,
) where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<Body>> + Send,
{
    let caps = SidePortCaps::for_descriptor_limit(descriptor_limit());
    let slots = Arc::new(Semaphore::new(caps.connections));
    let per_ip = IpLimits::new(caps.per_ip, 0);
    let mut reserve = DescriptorReserve::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(false)
        // hyper's own limits sit above wssd's, which answer 431 with the security headers.
        .max_headers(MAX_HEADERS * 4)
        .max_buf_size(MAX_HEAD * 4)
        .title_case_headers(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if DescriptorReserve::is_exhaustion(&e) => {
                    if reserve.should_warn() {
                        warn!(error = %e, "{what}: out of file descriptors; shedding connections (raise LimitNOFILE / ulimit -n)");
                    }
                    if !reserve.shed(&listener).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (Ok(slot), Ok(ip_slot)) = (
            slots.clone().try_acquire_owned(),
            per_ip.admit(peer.ip(), std::time::Instant::now()),
        ) else {
            debug!(%peer, "{what}: connection cap reached; closed");
            continue;
        };
        let answer = answer.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _slots = (slot, ip_slot);
            // Set when hyper has the whole head: from then on the request may take as long
            // as its answer does.
            let received = Arc::new(AtomicBool::new(false));
            let seen = received.clone();
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    seen.store(true, Ordering::Relaxed);
                    let answer = answer.clone();
                    async move {
                        let response = side_port_answer(&req, answer).await;
                        debug!(%peer, status = response.status().as_u16(), "{what} request answered");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            let mut conn = builder.serve_connection(TokioIo::new(stream), service);
            let timed_out = tokio::select! {
                _ = &mut conn => false,
                _ = tokio::time::sleep(HEAD_TIMEOUT) => true,
            };
            if !timed_out {
                return;
            }
            if received.load(Ordering::Relaxed) {
                let _ = conn.await;
                return;
            }
            // No complete head in time: hyper would close in silence; the client is told.
            let mut stream = conn.into_parts().io.into_inner();
            let _ = stream.write_all(&timeout_response()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A response wssd made itself, as text: status line, headers (names in lower case),
/// blank line, body. For unit tests.
#[cfg(test)]
pub fn response_text(r: hyper::Response<Body>) -> String {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        r.status().as_u16(),
        reason_phrase(r.status().as_u16())
    );
    for (name, value) in r.headers() {
        out.push_str(&format!(
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push_str("\r\n");
    let body = match r.into_body() {
        http_body_util::Either::Right(full) => full
            .collect()
            .now_or_never()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        http_body_util::Either::Left(_) => bytes::Bytes::new(),
    };
    out.push_str(&String::from_utf8_lossy(&body));
    out
}

/// The side ports' checks of a head hyper parsed, then `answer`.
async fn side_port_answer<B, F, Fut>(req: &hyper::Request<B>, answer: F) -> hyper::Response<Body>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = hyper::Response<Body>>,
{
    let security = SecurityHeaders::default();
    let checked = Request::from_head(req);
    if checked.headers.len() > MAX_HEADERS || checked.head_size() > MAX_HEAD {
        return response(431, &[], "Request header fields too large.\n", &security);
    }
    if !checked.has_origin_form_target() {
        return response(400, &[], "The request target must be a path.\n", &security);
    }
    if let Err(why) = checked.host() {
        return response(400, &[], why, &security);
    }
    answer(checked).await
}

/// The 408 for a side-port client whose head did not arrive in time, written on the bare
/// socket: hyper has no response to give when no request came.
fn timeout_response() -> Vec<u8> {
    let mut out = String::from("HTTP/1.1 408 Request Timeout\r\n");
    SecurityHeaders::default().write_to(&mut out);
    let body = "Request timeout.\n";
    out.push_str(&format!(
        "Cache-Control: no-store\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_head_is_method_target_and_headers() {
        let req = Request::parse(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/a?b=c");
        assert_eq!(req.header("host"), Some("x"));
    }

    #[test]
    fn tokens_across_repeated_headers() {
        let req = Request::parse(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nConnection: x\r\n\r\n",
        )
        .unwrap();
        let t: Vec<_> = req.tokens("connection").collect();
        assert_eq!(t, ["keep-alive", "Upgrade", "x"]);
    }

    #[test]
    fn wssds_own_responses_carry_security_headers() {
        let security = SecurityHeaders::new(std::time::Duration::from_secs(600));
        let r = response(403, &[("Allow", "GET")], "no", &security);
        assert_eq!(r.status(), 403);
        for (name, value) in security.iter() {
            assert_eq!(
                r.headers().get(name).map(|v| v.as_bytes()),
                Some(value.as_bytes()),
                "{name}"
            );
        }
        assert_eq!(r.headers()["strict-transport-security"], "max-age=600");
        assert_eq!(r.headers()["allow"], "GET");
        assert_eq!(r.headers()["connection"], "close");
        let text = String::from_utf8(timeout_response()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        for (name, _) in SecurityHeaders::default().iter() {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(
            text.ends_with("Content-Length: 17\r\nConnection: close\r\n\r\nRequest timeout.\n"),
            "{text}"
        );
    }
}
