//! Plain HTTP requests (everything that is not a WebSocket upgrade) forwarded to the
//! route's upstream as HTTP/1.1, with hyper's client on wssd's keep-alive connections
//! ([`super::pool`]) (SPEC "Routes and HTTP").
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
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Limited};
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use tracing::warn;

use super::body::{Body, RequestBody, UpstreamBody};
use super::forwarding::{self, CLIENT_CERT_HEADER, ClientAddress};
use super::http::{self, SecurityHeaders};
use super::pool::{self, ConnectError};
use super::routes::{Routes, Target};
use crate::config::{ListenerConfig, Upstream};
use crate::errors::error_chain;

/// The listener's HTTP client for upstreams: per connection worker, a pool of keep-alive
/// connections to each upstream ([`super::pool`]).
pub struct Forwarder {
    /// Each upstream of the route table, with its pool on every worker.
    pools: Vec<(Upstream, Box<[Arc<Pool>]>)>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// `[listener.response_headers]`, added where the upstream set none.
    added_headers: Vec<(HeaderName, HeaderValue)>,
}

type Pool = pool::Pool<RequestBody>;
type Lease = pool::Lease<RequestBody>;

/// Who asked, for the forwarding headers.
pub struct Origin<'a> {
    pub peer: SocketAddr,
    pub address: &'a ClientAddress,
    pub client_identity: Option<&'a str>,
}

/// Why a request got no response from the upstream.
enum SendError {
    Connect(ConnectError),
    Http(hyper::Error),
}

impl Forwarder {
    pub fn new(settings: &ListenerConfig, routes: &Routes) -> Forwarder {
        let workers = settings.workers.max(1);
        let mut pools: Vec<(Upstream, Box<[Arc<Pool>]>)> = Vec::new();
        for (_, target) in routes.table() {
            if let Some(upstream) = target.and_then(|t| t.upstream.as_ref())
                && !pools.iter().any(|(u, _)| u == upstream)
            {
                let per_worker = (0..workers).map(|_| Pool::new(upstream.clone())).collect();
                pools.push((upstream.clone(), per_worker));
            }
        }
        Forwarder {
            pools,
            connect_timeout: settings.upstream_connect_timeout,
            response_timeout: settings.upstream_response_timeout,
            // Checked when the config was read; one that still fails to parse is skipped.
            added_headers: settings
                .response_headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    fn pool(&self, worker: usize, upstream: &Upstream) -> Option<&Arc<Pool>> {
        let (_, per_worker) = self.pools.iter().find(|(u, _)| u == upstream)?;
        per_worker.get(worker % per_worker.len())
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
        let outgoing = match upstream_request(req, target.max_body_size, &from) {
            Ok(r) => r,
            Err(why) => return http::response(400, &[], why, security),
        };
        let Some(pool) = self.pool(worker, upstream) else {
            warn!(%upstream, "no connection pool for the upstream; answered 502");
            return http::response(502, &[], "The upstream service is unavailable.\n", security);
        };
        let exchange = send(pool, outgoing, self.connect_timeout);
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => {
                warn!(peer = %from.peer, %upstream, timeout = ?self.response_timeout, "upstream sent no response in time; answered 504");
                http::response(504, &[], "The upstream did not answer in time.\n", security)
            }
            Ok(Err(SendError::Http(e))) if exceeded_body_limit(&e) => too_large(security),
            Ok(Err(e)) => {
                let error = match e {
                    SendError::Connect(e) => error_chain(&e),
                    SendError::Http(e) => error_chain(&e),
                };
                warn!(peer = %from.peer, %upstream, %error, "upstream unavailable; answered 502");
                http::response(502, &[], "The upstream service is unavailable.\n", security)
            }
            Ok(Ok((response, lease))) => {
                client_response(response, lease, security, &self.added_headers)
            }
        }
    }
}

/// Sends `req` on an idle connection of `pool`, or on a new one. A pooled connection the
/// upstream closed just as it was taken gives the request back unsent; it then goes on a
/// new connection.
async fn send(
    pool: &Arc<Pool>,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Lease), SendError> {
    if let Some(mut lease) = pool.checkout()
        && let Some(sender) = lease.sender()
    {
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, lease)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(SendError::Http(e.into_error())),
            },
        }
    }
    // Boxed: opening a connection is the rare path, and its future is large.
    let mut lease = Box::pin(pool.connect(connect_timeout))
        .await
        .map_err(SendError::Connect)?;
    match lease.sender() {
        Some(sender) => {
            let response = sender.send_request(req).await.map_err(SendError::Http)?;
            Ok((response, lease))
        }
        None => Err(SendError::Connect(ConnectError::Closed)),
    }
}

fn too_large(security: &SecurityHeaders) -> Response<Body> {
    http::response(413, &[], "The request body is too large.\n", security)
}

/// The request as the upstream gets it: the client's head, edited in place.
fn upstream_request(
    req: Request<Incoming>,
    max_body: u64,
    from: &Origin<'_>,
) -> Result<Request<RequestBody>, &'static str> {
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    // Over HTTP/2 the host is the `:authority` (a client may also send Host).
    if !headers.contains_key(header::HOST) {
        let authority = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or("Host is missing.\n")?;
        headers.insert(header::HOST, authority);
    }
    let host = headers
        .get(header::HOST)
        .ok_or("Host is missing.\n")?
        .clone();
    let host_text = host.to_str().map_err(|_| "Host is malformed.\n")?;
    let forwarded = from.address.headers(host_text);
    retain_headers(&mut headers, |name, named| {
        name == header::HOST
            || name == header::CONTENT_LENGTH
            || forwarding::forwards_request_header(name.as_str(), named)
    });
    for (name, value) in forwarded {
        headers.append(name, value);
    }
    if let Some(identity) = from.client_identity
        && let Ok(value) = HeaderValue::from_str(identity)
    {
        headers.append(CLIENT_CERT_HEADER, value);
    }
    // The origin form (path and query); over HTTP/2 the URI also has the scheme and
    // authority.
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.uri
    } else {
        parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()))
    };
    let mut out = Request::new(Limited::new(
        body,
        usize::try_from(max_body).unwrap_or(usize::MAX),
    ));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The upstream's response for the client: its own headers, less the hop-by-hop ones,
/// and HSTS and the configured `response_headers` where it set none. `lease` goes back
/// to the pool with the body.
fn client_response(
    response: Response<Incoming>,
    lease: Lease,
    security: &SecurityHeaders,
    added: &[(HeaderName, HeaderValue)],
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    retain_headers(&mut parts.headers, |name, named| {
        forwarding::returns_response_header(name.as_str(), named)
    });
    if !parts
        .headers
        .contains_key(header::STRICT_TRANSPORT_SECURITY)
        && let Some(hsts) = security.hsts_value()
    {
        parts
            .headers
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    for (name, value) in added {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    parts.version = hyper::Version::HTTP_11;
    Response::from_parts(parts, Either::Left(UpstreamBody::new(body, lease)))
}

/// Removes from `headers` every header `keep` refuses; `keep` also gets the names the
/// message's `Connection` lists (hop-by-hop by that naming).
fn retain_headers(headers: &mut HeaderMap, keep: impl Fn(&HeaderName, &[&str]) -> bool) {
    let dropped: Vec<HeaderName> = {
        let named = forwarding::connection_named(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        headers
            .keys()
            .filter(|n| !keep(n, &named))
            .cloned()
            .collect()
    };
    for name in dropped {
        headers.remove(name);
    }
}

/// Did the request body go over `max_body_size` while it was being sent?
fn exceeded_body_limit(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}
