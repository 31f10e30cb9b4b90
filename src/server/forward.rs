//! Plain HTTP requests (everything that is not a WebSocket upgrade) forwarded to the
//! route's upstream as HTTP/1.1, with hyper's client and its pool of keep-alive
//! connections (SPEC "Routes and HTTP").
//!
//! Method, path, query and `Host` go on unchanged; headers as [`super::forwarding`] says.
//! Bodies stream both ways, never held whole: a request body is read as the upstream
//! takes it (which is when a client that sent `Expect: 100-continue` gets its 100), and
//! a response body is passed on chunk by chunk, so a slowly streamed response or
//! server-sent events reach the client as they are written.
//!
//! Errors are wssd's own answers: the upstream cannot be reached or answers with
//! something that is not HTTP, 502; no response head within `upstream_response_timeout`,
//! 504; a request body over the route's `max_body_size`, 413 (before the upstream is
//! contacted when `Content-Length` says so).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use super::forwarding::{self, CLIENT_CERT_HEADER};
use super::http::{self, Body, SecurityHeaders};
use super::routes::Target;
use crate::config::{ListenerConfig, Upstream};

/// Idle keep-alive connections kept per upstream.
const POOL_PER_UPSTREAM: usize = 64;
/// How long an idle upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The listener's HTTP client for upstreams: one client, with its own pool, per
/// connection worker. A pooled connection is served by a task on the worker that opened
/// it; shared, half the requests would hand their work to the other worker's thread and
/// back (two cross-thread wake-ups per request).
pub struct Forwarder {
    clients: Box<[Client<HttpConnector, Limited<Incoming>>]>,
    response_timeout: Duration,
    /// `[listener.response_headers]`, added where the upstream set none.
    added_headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// Who asked, for the forwarding headers.
pub struct Origin<'a> {
    pub peer: SocketAddr,
    pub client_identity: Option<&'a str>,
}

impl Forwarder {
    pub fn new(settings: &ListenerConfig) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.upstream_connect_timeout));
        connector.set_nodelay(true);
        let clients = (0..settings.workers.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(POOL_PER_UPSTREAM)
                    .pool_idle_timeout(POOL_IDLE)
                    .set_host(false)
                    .build(connector.clone())
            })
            .collect();
        Forwarder {
            clients,
            response_timeout: settings.upstream_response_timeout,
            // Checked when the config was read; one that still fails to parse is skipped.
            added_headers: settings
                .response_headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        header::HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    /// Forwards `req` (its head already checked: target, Host, route), which arrived on
    /// connection worker `worker`, to the target's upstream and returns the upstream's
    /// response, or wssd's error.
    pub async fn forward(
        &self,
        worker: usize,
        req: Request<Incoming>,
        upstream: &Upstream,
        target: &Target,
        from: Origin<'_>,
        security: &SecurityHeaders,
    ) -> Response<Body> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > target.max_body_size) {
            return too_large(security);
        }
        let outgoing = match upstream_request(req, upstream, target.max_body_size, &from) {
            Ok(r) => r,
            Err(why) => return http::response(400, &[], why, security),
        };
        let client = &self.clients[worker % self.clients.len()];
        let answer = tokio::time::timeout(self.response_timeout, client.request(outgoing)).await;
        match answer {
            Err(_) => {
                warn!(peer = %from.peer, %upstream, timeout = ?self.response_timeout, "upstream sent no response in time; answered 504");
                http::response(504, &[], "The upstream did not answer in time.\n", security)
            }
            Ok(Err(e)) if exceeded_body_limit(&e) => too_large(security),
            Ok(Err(e)) => {
                warn!(peer = %from.peer, %upstream, error = %error_chain(&e), "upstream unavailable; answered 502");
                http::response(502, &[], "The upstream service is unavailable.\n", security)
            }
            Ok(Ok(response)) => client_response(response, security, &self.added_headers),
        }
    }
}

fn too_large(security: &SecurityHeaders) -> Response<Body> {
    http::response(413, &[], "The request body is too large.\n", security)
}

/// The request as the upstream gets it.
fn upstream_request(
    req: Request<Incoming>,
    upstream: &Upstream,
    max_body: u64,
    from: &Origin<'_>,
) -> Result<Request<Limited<Incoming>>, &'static str> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if upstream.host.contains(':') {
        format!("[{}]:{}", upstream.host, upstream.port)
    } else {
        format!("{}:{}", upstream.host, upstream.port)
    };
    let uri: hyper::Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|_| "The request target is malformed.\n")?;
    // Over HTTP/2 the host is the `:authority` (a client may also send Host).
    let host = match parts.headers.get(header::HOST) {
        Some(host) => host.clone(),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or("Host is missing.\n")?,
    };
    let host_text = host
        .to_str()
        .map_err(|_| "Host is malformed.\n")?
        .to_string();
    let named = forwarding::connection_named(
        parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(hyper::Version::HTTP_11);
    let headers = out.headers_mut().ok_or("The request is malformed.\n")?;
    headers.insert(header::HOST, host);
    for (name, value) in &parts.headers {
        if forwarding::forwards_request_header(name.as_str(), &named) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, length.clone());
    }
    for (name, value) in forwarding::forwarding_headers(from.peer.ip(), &host_text) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
    if let Some(identity) = from.client_identity
        && let Ok(value) = HeaderValue::from_str(identity)
    {
        headers.append(CLIENT_CERT_HEADER, value);
    }
    out.body(Limited::new(
        body,
        usize::try_from(max_body).unwrap_or(usize::MAX),
    ))
    .map_err(|_| "The request is malformed.\n")
}

/// The upstream's response for the client: its own headers, less the hop-by-hop ones,
/// and HSTS and the configured `response_headers` where it set none.
fn client_response(
    response: Response<Incoming>,
    security: &SecurityHeaders,
    added: &[(header::HeaderName, HeaderValue)],
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let named: Vec<String> = forwarding::connection_named(
        parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .into_iter()
    .map(str::to_string)
    .collect();
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    let hop: Vec<header::HeaderName> = parts
        .headers
        .keys()
        .filter(|n| !forwarding::returns_response_header(n.as_str(), &named))
        .cloned()
        .collect();
    for name in hop {
        parts.headers.remove(name);
    }
    if !parts
        .headers
        .contains_key(header::STRICT_TRANSPORT_SECURITY)
        && let Ok(value) = HeaderValue::from_str(security.hsts())
    {
        parts
            .headers
            .insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
    for (name, value) in added {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    parts.version = hyper::Version::HTTP_11;
    Response::from_parts(parts, Either::Left(body))
}

/// Did the request body go over `max_body_size` while it was being sent?
fn exceeded_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// An error with its causes, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
