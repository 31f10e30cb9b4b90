//! The HTTP upgrade request as a hostile client sends it: parsing, the upgrade checks
//! (method, headers, key, Origin) and the request wssd would send upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::config::{OriginPattern, Upstream};
use wssd::server::http::Request;
use wssd::server::{proxy, upgrade};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::parse(data) else { return };
    let origins: Vec<OriginPattern> = ["https://app.example.com", "https://*.example.com"]
        .iter()
        .filter_map(|p| OriginPattern::parse(p).ok())
        .collect();
    let _ = upgrade::check(&request, &[]);
    if upgrade::check(&request, &origins).is_ok() {
        let upstream = Upstream { host: "127.0.0.1".into(), port: 9000 };
        let out = proxy::upstream_request(&request, "192.0.2.1".parse().unwrap(), &upstream, Some("Hash=00"));
        // Whatever the client sent, the forwarded head is one head: it ends once.
        assert!(out.ends_with(b"\r\n\r\n"));
        assert_eq!(out.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    }
});
