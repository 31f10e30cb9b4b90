//! The HTTP upgrade request as a hostile client sends it: parsing, the upgrade checks
//! (method, headers, key, Origin), the route its path picks, and the request wssd would
//! send upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::config::{ListenerConfig, OriginPattern, RouteConfig, Upstream, UpstreamScheme};
use wssd::server::http::Request;
use wssd::server::routes::{Miss, Routes};
use wssd::server::{proxy, upgrade};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::parse(data) else { return };
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
        let out = proxy::upstream_request(&request, "192.0.2.1".parse().unwrap(), &upstream, Some("Hash=00"));
        // Whatever the client sent, the forwarded head is one head: it ends once.
        assert!(out.ends_with(b"\r\n\r\n"));
        assert_eq!(out.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    }
});
