//! Requests that must be refused (RFC 9112 §3.2, RFC 6455 §4.1, RFC 6454) and headers that
//! must not reach the upstream as the client sent them: an invalid or repeated Host, a
//! repeated Origin, Origin values that only look like the allowed pattern, request targets
//! that are not origin-form, headers with underscores, and IPv4 clients of a dual-stack
//! listener. Each case looks at what the upstream received (bytes, not a parsed view), or
//! that it received nothing.

mod common;

use std::time::Duration;

use common::edge::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

async fn status_of(s: &Setup, request: String) -> String {
    let response = raw_exchange(s.wssd.addr, &s.client(), request.as_bytes(), WAIT).await;
    response.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_repeated_host_is_a_bad_request() {
    let up = RawUpstream::start().await;
    let s = Setup::start(&format!("upstream = \"ws://{}\"", up.addr), "");
    for host in [
        "Host: a\";proto=http;x=\"\\\r\n",
        "Host: a, for=1.2.3.4;by=x\r\n",
        "Host: localhost\r\nHost: localhost\r\n",
        "Host: local host\r\n",
        "Host: localhost:x\r\n",
        "Host: localhost/\r\n",
        "Host: user@localhost\r\n",
        "Host: [::1\r\n",
    ] {
        let status = status_of(&s, format!("GET / HTTP/1.1\r\n{host}{UPGRADE}\r\n")).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{host:?}");
    }
    assert!(
        up.heads().is_empty(),
        "reached the upstream: {:?}",
        up.heads()
    );
    for host in [
        "localhost",
        "localhost:8443",
        "127.0.0.1:8443",
        "[::1]:8443",
        "chat.example.com",
    ] {
        let status = status_of(
            &s,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n{UPGRADE}\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "{host}");
        assert_eq!(up.header("host"), [host]);
        assert_eq!(up.header("x-forwarded-host"), [host]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_origin_is_refused_and_connection_cannot_strip_checked_headers() {
    let up = RawUpstream::start().await;
    let s = Setup::start(
        &format!(
            "upstream = \"ws://{}\"\nallowed_origins = [\"https://app.example.com\"]",
            up.addr
        ),
        "",
    );
    let twice = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Origin: https://app.example.com\r\nOrigin: https://evil.example\r\n\r\n"
    );
    assert_eq!(status_of(&s, twice).await, "HTTP/1.1 400 Bad Request");
    assert!(up.heads().is_empty());

    // Connection may name hop-by-hop headers, but not the ones wssd checked or the
    // handshake needs: they reach the upstream once, as sent.
    let named = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade, Origin, Sec-WebSocket-Protocol, Sec-WebSocket-Key, Host, X-Hop\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://app.example.com\r\nSec-WebSocket-Protocol: chat\r\nX-Hop: 1\r\n\r\n";
    assert_eq!(
        status_of(&s, named.to_string()).await,
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(up.header("origin"), ["https://app.example.com"]);
    assert_eq!(up.header("sec-websocket-protocol"), ["chat"]);
    assert_eq!(up.header("sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="]);
    assert_eq!(up.header("host"), ["localhost"]);
    assert!(up.header("x-hop").is_empty(), "X-Hop is hop-by-hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_parsed_as_origins_before_matching() {
    let up = RawUpstream::start().await;
    let s = Setup::start(
        &format!(
            "upstream = \"ws://{}\"\nallowed_origins = [\"https://*.example.com\", \"http://localhost:3000\"]",
            up.addr
        ),
        "",
    );
    for origin in [
        "https://evil.com?.example.com",
        "https://evil.com#.example.com",
        "https://a@b.example.com",
        "https://evil.com/.example.com",
        "https://evil.com\\.example.com",
        "https://a.example.com/",
        "https://a.example.com/path",
        "https://a..example.com",
        "https://.example.com",
        "https://a.example.com:443x",
        "http://localhost:3000/x",
        "http://localhost:3000@evil.com",
        "null",
    ] {
        let status = status_of(
            &s,
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Origin: {origin}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{origin}");
    }
    assert!(up.heads().is_empty());
    for origin in [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://A.Example.COM",
        "https://a.example.com:443",
        "http://localhost:3000",
    ] {
        let status = status_of(
            &s,
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Origin: {origin}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "{origin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_that_are_not_origin_form_are_refused() {
    let up = RawUpstream::start().await;
    let s = Setup::start(&format!("upstream = \"ws://{}\"", up.addr), "");
    for target in ["http://evil.com/x", "*", "@evil.com", "evil.com/x"] {
        let status = status_of(
            &s,
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{target}");
    }
    assert!(up.heads().is_empty(), "{:?}", up.heads());
    let status = status_of(
        &s,
        format!("GET /chat?room=1 HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert!(up.heads()[0].starts_with("GET /chat?room=1 HTTP/1.1\r\n"));
    // A fragment (which a request target cannot carry) is cut off by the parser, so the
    // upstream and wssd's routes see the same path.
    let status = status_of(
        &s,
        format!("GET /a#/admin HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert!(
        up.heads()[1].starts_with("GET /a HTTP/1.1\r\n"),
        "{:?}",
        up.heads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_underscores_never_reach_the_upstream() {
    let up = RawUpstream::start().await;
    let s = Setup::start(&format!("upstream = \"ws://{}\"", up.addr), "");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Kept: yes\r\n\r\n"
    );
    assert_eq!(
        status_of(&s, request).await,
        "HTTP/1.1 101 Switching Protocols"
    );
    let head = &up.heads()[0];
    assert!(!head.contains('_'), "an underscore header passed: {head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert_eq!(up.header("x-kept"), ["yes"]);
    assert_eq!(up.header("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_listener_are_forwarded_as_ipv4() {
    let up = RawUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(dir.path(), &format!("upstream = \"ws://{}\"", up.addr), "")
        .replace("bind = \"127.0.0.1:0\"", "bind = \"[::]:0\"");
    let wssd = Wssd::start(dir.path(), &config);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], wssd.addr.port()));
    let request = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n");
    let response = raw_exchange(v4, &client_config(&ca.cert_pem), request.as_bytes(), WAIT).await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    assert_eq!(up.header("x-forwarded-for"), ["127.0.0.1"]);
    let forwarded = up.header("forwarded");
    assert!(forwarded[0].starts_with("for=127.0.0.1;"), "{forwarded:?}");
}

/// wssd with an ACME certificate answered by http-01 (the CA is not reachable: only the
/// responder matters here) and the admin server.
fn with_side_ports(dir: &std::path::Path) -> Wssd {
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nchallenge = \"http-01\"\nhttp01_bind = \"127.0.0.1:0\"\n",
        dir.join("data").display()
    );
    Wssd::start(dir, &config)
}

async fn plain_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_ports_refuse_odd_targets_and_answer_oversize_heads_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let wssd = with_side_ports(dir.path());
    let http01 = wssd.logged_addr("http-01 responder listening");
    let admin = wssd.logged_addr("admin server listening");
    assert_ne!(http01.port(), 0);

    // The redirect must not be turned into an open redirect.
    for target in ["@evil.com/x", "http://evil.com/x", "*", "evil.com"] {
        let response = plain_exchange(
            http01,
            format!("GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{target}: {response}");
        assert!(!response.contains("Location"), "{target}: {response}");
    }
    let redirect = plain_exchange(
        http01,
        b"GET /chat?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n",
    )
    .await;
    assert!(redirect.starts_with("HTTP/1.1 301"), "{redirect}");
    let location = redirect
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap();
    assert!(
        location.starts_with("https://example.test:") && location.ends_with("/chat?x=1"),
        "{location}"
    );

    let big = format!(
        "GET / HTTP/1.1\r\nHost: example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    for addr in [http01, admin] {
        let response = plain_exchange(addr, big.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{addr}: {response:?}");
        let response = plain_exchange(
            addr,
            b"GET http://evil.com/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{addr}: {response:?}");
    }
    let ok = plain_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
