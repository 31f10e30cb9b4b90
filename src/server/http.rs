//! The HTTP/1.1 layer: reading one request or response head off a stream, and the
//! responses wssd writes itself (errors and the 101), all with the security headers.
//!
//! Only heads are parsed (httparse); after the 101 the connection carries WebSocket
//! frames, never HTTP again, so there is no body handling and no keep-alive.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
}

impl SecurityHeaders {
    pub fn new(hsts_max_age: std::time::Duration) -> SecurityHeaders {
        SecurityHeaders {
            hsts: format!("max-age={}", hsts_max_age.as_secs()),
        }
    }

    /// The `Strict-Transport-Security` value.
    pub fn hsts(&self) -> &str {
        &self.hsts
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

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before the end of the HTTP head")]
    Closed,
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads from `stream` until a complete head (ending in an empty line) is in `buf`.
/// Returns the head's length; bytes after it (a client that did not wait for the 101)
/// stay in `buf` for the next layer.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<usize, HeadError> {
    let mut searched = 0;
    loop {
        if let Some(end) = find_head_end(buf, searched) {
            return Ok(end);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        searched = buf.len().saturating_sub(3);
        let want = (MAX_HEAD - buf.len()).min(4096);
        let old = buf.len();
        buf.resize(old + want, 0);
        let n = stream.read(&mut buf[old..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(old);
                return Err(e.into());
            }
        };
        buf.truncate(old + n);
        if n == 0 {
            return Err(HeadError::Closed);
        }
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// A parsed request head, owned.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, exactly as sent.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    pub fn parse(head: &[u8]) -> Result<Request, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        complete(req.parse(head))?;
        if req.version != Some(1) {
            return Err(HeadError::Malformed(
                "only HTTP/1.1 can upgrade to WebSocket".into(),
            ));
        }
        Ok(Request {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers: owned(req.headers),
        })
    }

    /// The first header called `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// How many header lines are called `name` (case-insensitive).
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
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
        tokens(&self.headers, name)
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

/// A parsed response head (from the upstream), owned.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Response {
    pub fn parse(head: &[u8]) -> Result<Response, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        complete(res.parse(head))?;
        Ok(Response {
            status: res.code.unwrap_or_default(),
            headers: owned(res.headers),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A head read by [`read_head`] is complete; anything else is malformed.
fn complete(parsed: httparse::Result<usize>) -> Result<(), HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(HeadError::Malformed("incomplete head".into())),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

fn owned(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect()
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
}

fn tokens<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A complete error response from wssd itself: status line, security headers, extra
/// headers, a short plain-text body, and `Connection: close`.
pub fn error_response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &str,
    security: &SecurityHeaders,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    security.write_to(&mut out);
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Cache-Control: no-store\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

/// The body of every response on the listener: the upstream's, streamed, or one wssd
/// made whole.
pub type Body = http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;

/// A response wssd makes itself on the listener (an error, a refusal): the security
/// headers, `extra_headers`, the reason as plain text, and `Connection: close`, as every
/// refusal ends the connection.
pub fn response(
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &str,
    security: &SecurityHeaders,
) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(http_body_util::Either::Right(
        http_body_util::Full::new(bytes::Bytes::copy_from_slice(body.as_bytes())),
    ));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    let pairs = security.iter().chain(extra_headers.iter().copied()).chain([
        ("Cache-Control", "no-store"),
        ("Content-Type", "text/plain; charset=utf-8"),
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
        let mut headers: Vec<(String, Vec<u8>)> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let target = if req.version() == hyper::Version::HTTP_2 {
            if !req.headers().contains_key(hyper::header::HOST)
                && let Some(authority) = req.uri().authority()
            {
                headers.push(("host".to_string(), authority.as_str().as_bytes().to_vec()));
            }
            req.uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
        } else {
            req.uri().to_string()
        };
        Request {
            method: req.method().as_str().to_string(),
            target,
            headers,
        }
    }

    /// About how many bytes the head took on the wire.
    pub fn head_size(&self) -> usize {
        self.method.len()
            + self.target.len()
            + 12
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
    }
}

/// A small plain-HTTP/1.1 server for wssd's side ports (the admin endpoints, the http-01
/// responder) until `shutdown`: one request per connection, its head read within
/// [`HEAD_TIMEOUT`] (else 408), an oversize head answered 431, a malformed one or a target
/// that is not a path 400, every other one with what `answer` returns. Connections over
/// the port's caps ([`SidePortCaps`], from the descriptor limit) are closed at once.
/// `what` names the server in log lines.
pub async fn serve_plain<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    answer: F,
) where
    F: Fn(Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Vec<u8>> + Send,
{
    let caps = SidePortCaps::for_descriptor_limit(descriptor_limit());
    let slots = Arc::new(Semaphore::new(caps.connections));
    let per_ip = IpLimits::new(caps.per_ip, 0);
    let mut reserve = DescriptorReserve::new();
    loop {
        let (mut stream, peer) = tokio::select! {
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
        tokio::spawn(async move {
            let _slots = (slot, ip_slot);
            let mut buf = Vec::with_capacity(1024);
            let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await;
            let refuse =
                |status, body| error_response(status, &[], body, &SecurityHeaders::default());
            let response = match head {
                Ok(Ok(end)) => match Request::parse(&buf[..end]) {
                    Ok(req) if !req.has_origin_form_target() => {
                        refuse(400, "The request target must be a path.\n")
                    }
                    Ok(req) => match req.host() {
                        Ok(_) => answer(req).await,
                        Err(why) => refuse(400, why),
                    },
                    Err(HeadError::TooLarge) => refuse(431, "Request header fields too large.\n"),
                    Err(_) => refuse(400, "Malformed HTTP request.\n"),
                },
                Ok(Err(HeadError::TooLarge)) => refuse(431, "Request header fields too large.\n"),
                Ok(Err(_)) => return,
                Err(_) => refuse(408, "Request timeout.\n"),
            };
            debug!(%peer, "{what} request answered");
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        });
    }
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

    #[tokio::test]
    async fn head_is_split_from_early_frames() {
        let input: &[u8] = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n\x81\x85extra";
        let mut reader = input;
        let mut buf = Vec::new();
        let end = read_head(&mut reader, &mut buf).await.unwrap();
        assert_eq!(&buf[end..], b"\x81\x85extra");
        let req = Request::parse(&buf[..end]).unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/a?b=c");
        assert_eq!(req.header("host"), Some("x"));
    }

    #[tokio::test]
    async fn oversize_head_is_refused() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let mut reader = input.as_slice();
        let mut buf = Vec::new();
        assert!(matches!(
            read_head(&mut reader, &mut buf).await,
            Err(HeadError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn truncated_head_is_closed() {
        let mut reader: &[u8] = b"GET / HTTP/1.1\r\nHost";
        let mut buf = Vec::new();
        assert!(matches!(
            read_head(&mut reader, &mut buf).await,
            Err(HeadError::Closed)
        ));
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
    fn error_responses_carry_security_headers() {
        let security = SecurityHeaders::new(std::time::Duration::from_secs(600));
        let text = String::from_utf8(error_response(403, &[], "no", &security)).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        for (name, _) in security.iter() {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("Strict-Transport-Security: max-age=600\r\n"));
        assert!(text.ends_with("\r\n\r\nno"));
    }
}
