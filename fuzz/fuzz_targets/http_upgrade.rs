//! The HTTP upgrade request as a hostile client sends it: parsed as hyper parses it
//! (httparse), the upgrade checks (method, headers, key, Origin), the route its path
//! picks, and the request wssd would send upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::config::{ListenerConfig, OriginPattern, RouteConfig, Upstream, UpstreamScheme};
use wssd::server::http::Request;
use wssd::server::routes::{Miss, Routes};
use wssd::server::{proxy, upgrade};

/// The checked view of a head, as `Request::from_head` makes it from hyper's.
fn parse(data: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(data), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    // A name or value hyper would not take gets its 400 before wssd sees the request.
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    Some(Request {
        method: req.method?.parse().ok()?,
        target: req.path?.to_string(),
        headers: map,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = parse(data) else { return };
    let origins: Vec<OriginPattern> = ["https://app.example.com", "https://*.example.com"]
        .iter()
        .filter_map(|p| OriginPattern::parse(p).ok())
        .collect();
    let _ = upgrade::check(&request, &[]);
    // Routes: a path either has a route, or none (404), or is refused (400); a target
    // that is not a path is always refused.
    let route = |path: &str, port| RouteConfig {
        path: path.into(),
        upstream: Upstream { host: "127.0.0.1".into(), port, scheme: UpstreamScheme::Http },
        allowed_origins: None,
        max_message_size: None,
        max_body_size: None,
    };
    let listener = ListenerConfig {
        routes: vec![route("/ws", 1), route("/ws/admin", 2), route("/api/", 3)],
        ..ListenerConfig::default()
    };
    let routes = Routes::new(&listener);
    let selected = routes.select(&request.target);
    if !request.target.starts_with('/') {
        assert_eq!(selected.err(), Some(Miss::BadPath));
    }
    if upgrade::check(&request, &origins).is_ok() {
        let upstream = Upstream { host: "127.0.0.1".into(), port: 9000, scheme: UpstreamScheme::Ws };
        // Whatever the client sent, the forwarded head has one Host, one Upgrade and one
        // Connection, wssd's, or it is not built at all (the client then gets 502).
        if let Ok(out) = proxy::upstream_request(&request, "192.0.2.1".parse().unwrap(), &upstream, Some("Hash=00")) {
            for name in ["host", "upgrade", "connection"] {
                assert_eq!(out.headers().get_all(name).iter().count(), 1, "{name}");
            }
            assert_eq!(out.headers()["upgrade"], "websocket");
            assert_eq!(out.uri().path_and_query().map(|p| p.as_str()), Some(request.target.as_str()));
        }
    }
});
