//! One HTTP request on the listener, as hyper hands it over: the checks every request
//! gets, its route, and then a WebSocket upgrade (to the echo or the upstream) or a plain
//! request forwarded to the upstream ([`super::forward`]).
//!
//! Every refusal is wssd's own response with the security headers. hyper's own limits
//! are set looser than wssd's ([`super::connection`]), so that a head over 16 KiB or 64
//! header lines reaches this layer and gets wssd's 431, not hyper's bare one.
//!
//! An upgrade is answered here with the 101 (the upstream's, or the echo's) and leaves
//! what runs next on the connection in [`Connection::next`]; the connection layer takes
//! it once hyper has written the 101 and handed back the socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::body::Body;
use super::forward::Origin;
use super::forwarding::ClientAddress;
use super::http::{self, MAX_HEAD, MAX_HEADERS};
use super::proxy;
use super::relay::Limits;
use super::state::Server;
use super::websocket::Next;
use super::{echo, test_page, upgrade};

/// The longest request target (path and query) accepted.
const MAX_TARGET: usize = 8 * 1024;

/// What a connection's requests share.
pub struct Connection {
    pub server: Arc<Server>,
    pub peer: SocketAddr,
    /// The connection worker it runs on (its upstream client is that worker's).
    pub worker: usize,
    /// The client's address as the forwarding headers give it, made by the first plain
    /// request ([`Connection::address`]).
    pub address: OnceLock<ClientAddress>,
    /// The verified client certificate (mTLS), described for the upstream.
    pub client_identity: Option<String>,
    pub drain: CancellationToken,
    /// Set by the response that upgrades the connection.
    pub next: Mutex<Option<(OnUpgrade, Next)>>,
}

impl Connection {
    pub fn address(&self) -> &ClientAddress {
        self.address
            .get_or_init(|| ClientAddress::new(self.peer.ip()))
    }
}

/// The hyper service of one connection.
#[derive(Clone)]
pub struct Service(pub Arc<Connection>);

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let conn = self.0.clone();
        let h2_head =
            req.method() == hyper::Method::HEAD && req.version() == hyper::Version::HTTP_2;
        Box::pin(async move {
            let response = handle(&conn, req).await;
            let upstream = matches!(response.body(), http_body_util::Either::Left(_));
            conn.server
                .metrics
                .response(response.status().as_u16(), upstream);
            Ok(if h2_head {
                bodiless(response)
            } else {
                response
            })
        })
    }
}

/// The answer to a HEAD over HTTP/2: wssd's own body left out (hyper sends it over h2,
/// and clients end the stream with PROTOCOL_ERROR), its length kept, as HTTP/1.1 does.
/// An upstream's answer to a HEAD has no body already.
fn bodiless(response: Response<Body>) -> Response<Body> {
    use http_body_util::Either;
    let (mut parts, body) = response.into_parts();
    let body = match body {
        Either::Right(full) => {
            let length = hyper::body::Body::size_hint(&full).exact().unwrap_or(0);
            parts
                .headers
                .entry(hyper::header::CONTENT_LENGTH)
                .or_insert_with(|| hyper::header::HeaderValue::from(length));
            Either::Right(http_body_util::Full::default())
        }
        upstream => upstream,
    };
    Response::from_parts(parts, body)
}

async fn handle(conn: &Arc<Connection>, mut req: Request<Incoming>) -> Response<Body> {
    let server = &conn.server;
    let security = &server.headers;
    let peer = conn.peer;
    let refuse = |status, headers: &[(&str, &str)], message: &str| {
        http::response(status, headers, message, security)
    };
    let checked = http::Request::from_head(&req);
    if checked.headers.len() > MAX_HEADERS || checked.head_size() > MAX_HEAD {
        return refuse(431, &[], "Request header fields too large.\n");
    }
    if checked.target.len() > MAX_TARGET {
        return refuse(414, &[], "Request target too long.\n");
    }
    // The target and Host first, whatever the route; then the route.
    if let Err(r) = upgrade::check_target_and_host(&checked) {
        debug!(%peer, status = r.status, target = %checked.target, "request refused");
        return refuse(r.status, &r.headers, &r.message);
    }
    let route = match server.routes.select(&checked.target) {
        Ok(route) => route,
        Err(miss) => {
            debug!(%peer, status = miss.status(), target = %checked.target, "no route");
            return refuse(miss.status(), &[], miss.message());
        }
    };
    if req.method() == hyper::Method::CONNECT {
        // Over HTTP/2, a WebSocket is an extended CONNECT (RFC 8441); a CONNECT to tunnel
        // TCP is not something wssd does.
        let websocket = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket || req.version() != hyper::Version::HTTP_2 {
            return refuse(
                405,
                &[("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")],
                "CONNECT is only for WebSockets over HTTP/2.\n",
            );
        }
        return Box::pin(websocket_over_h2(conn, req, checked, route)).await;
    }
    let wants_websocket = checked
        .tokens("upgrade")
        .any(|t| t.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return match &route.upstream {
            None if test_page::wanted(&checked) => test_page::response(security),
            None => refuse(
                426,
                &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                "This is a WebSocket endpoint: connect with a WebSocket client (wss://).\n",
            ),
            Some(upstream) => {
                let from = Origin {
                    peer,
                    address: conn.address(),
                    client_identity: conn.client_identity.as_deref(),
                };
                server
                    .forwarder
                    .forward(conn.worker, req, upstream, route, from, security)
                    .await
            }
        };
    }
    if req.version() != hyper::Version::HTTP_11 {
        return refuse(400, &[], "WebSocket upgrades need HTTP/1.1.\n");
    }
    let upgrade = match upgrade::check_upgrade(&checked, &route.allowed_origins) {
        Ok(u) => u,
        Err(r) => {
            debug!(%peer, status = r.status, target = %checked.target, "request refused");
            return refuse(r.status, &r.headers, &r.message);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (headers, next) = match &route.upstream {
        None => (
            echo::switching_protocols(&upgrade, &checked, security),
            Next::Echo,
        ),
        Some(upstream) => match Box::pin(relay_to(conn, upstream, route, &checked, &upgrade)).await
        {
            Ok(ready) => ready,
            Err(refused) => return refused,
        },
    };
    if let Ok(mut slot) = conn.next.lock() {
        *slot = Some((on_upgrade, next));
    }
    switching_protocols(headers)
}

/// A WebSocket over HTTP/2 (RFC 8441): the stream is accepted with 200 once the
/// upstream accepted its HTTP/1.1 upgrade, and the echo or the relay then runs on the
/// stream in a task of its own, as the connection carries other streams meanwhile.
async fn websocket_over_h2(
    conn: &Arc<Connection>,
    mut req: Request<Incoming>,
    mut checked: http::Request,
    route: &super::routes::Target,
) -> Response<Body> {
    let server = &conn.server;
    let security = &server.headers;
    let peer = conn.peer;
    let upgrade = match upgrade::check_h2_upgrade(&checked, &route.allowed_origins) {
        Ok(u) => u,
        Err(r) => {
            debug!(%peer, status = r.status, target = %checked.target, "request refused");
            return http::response(r.status, &r.headers, &r.message, security);
        }
    };
    // A WebSocket counts against `max_connections` and the per-IP limits however it
    // arrives: many over one HTTP/2 connection are as many connections.
    let Ok(slot) = server.slots.clone().try_acquire_owned() else {
        server.metrics.connection_refused();
        return http::response(
            503,
            &[("Retry-After", "1")],
            "Too many connections.\n",
            security,
        );
    };
    let ip_permit = match server.ip_limits.admit(peer.ip(), std::time::Instant::now()) {
        Ok(p) => p,
        Err(refusal) => {
            server.metrics.connection_refused();
            debug!(%peer, ?refusal, "per-IP limit reached; WebSocket over h2 refused");
            return http::response(
                503,
                &[("Retry-After", "1")],
                "Too many connections from this address.\n",
                security,
            );
        }
    };
    // The upstream's HTTP/1.1 upgrade carries the key wssd made.
    if let Ok(key) = hyper::header::HeaderValue::from_str(&upgrade.key) {
        checked
            .headers
            .insert(hyper::header::SEC_WEBSOCKET_KEY, key);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (mut headers, next) = match &route.upstream {
        None => {
            let mut headers: hyper::HeaderMap = security.headers().iter().cloned().collect();
            if let Some(protocol) = echo::chosen_protocol(&checked) {
                headers.insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, protocol);
            }
            (headers, Next::Echo)
        }
        Some(upstream) => match relay_to(conn, upstream, route, &checked, &upgrade).await {
            Ok(ready) => ready,
            Err(refused) => return refused,
        },
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        let _permits = (slot, ip_permit);
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let stream = hyper_util::rt::TokioIo::new(upgraded);
        super::websocket::run(stream, Vec::new(), next, &conn).await;
    });
    // No accept key over HTTP/2: the stream itself is the handshake.
    headers.remove(hyper::header::SEC_WEBSOCKET_ACCEPT);
    let mut response = Response::new(http_body_util::Either::Right(
        http_body_util::Full::default(),
    ));
    *response.headers_mut() = headers;
    response
}

/// Opens the upstream's HTTP/1.1 upgrade for a checked WebSocket request: the headers of
/// the answer to the client and the relay to run, or wssd's 502.
async fn relay_to(
    conn: &Connection,
    upstream: &crate::config::Upstream,
    route: &super::routes::Target,
    checked: &http::Request,
    upgrade: &upgrade::Upgrade,
) -> Result<(hyper::HeaderMap, Next), Response<Body>> {
    let server = &conn.server;
    let settings = &server.settings;
    let target = proxy::Target {
        upstream,
        request: checked,
        upgrade,
        peer: conn.peer,
        client_identity: conn.client_identity.as_deref(),
    };
    let now = Instant::now();
    let deadline = now + settings.handshake_timeout;
    let connect_deadline = deadline.min(now + settings.upstream_connect_timeout);
    match proxy::connect(&target, connect_deadline, deadline, &server.headers).await {
        Ok(mut connected) => {
            let headers = std::mem::take(&mut connected.headers);
            let limits = Limits {
                max_message_size: route.max_message_size,
                idle_timeout: settings.idle_timeout,
            };
            Ok((
                headers,
                Next::Relay {
                    upstream: connected,
                    limits,
                },
            ))
        }
        Err(e) => {
            warn!(peer = %conn.peer, error = %e, "upstream unavailable; answered 502");
            Err(http::response(
                502,
                &[],
                "The upstream WebSocket service is unavailable.\n",
                &server.headers,
            ))
        }
    }
}

/// The 101 with `headers` (the accept key, the upstream's choices, security headers).
fn switching_protocols(mut headers: hyper::HeaderMap) -> Response<Body> {
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    let mut response = Response::new(http_body_util::Either::Right(
        http_body_util::Full::default(),
    ));
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = headers;
    response
}
