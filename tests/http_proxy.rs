//! Plain HTTP requests through wssd (SPEC "Routes and HTTP"), with curl as the client and
//! a hyper upstream that records what it receives: GET, HEAD and 304, POST bodies with
//! Content-Length and chunked (and `Expect: 100-continue`, which curl sends for large
//! bodies), a slowly streamed response and server-sent events arriving part by part, a
//! request body streamed rather than held, keep-alive on both sides, the headers that
//! must and must not pass, wssd's 502, 504 and 413, and requests whose framing is
//! ambiguous.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::edge::*;
use common::http_upstream::HttpUpstream;
use pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// wssd proxying every path to `up`, with `extra` in `[listener]`.
fn start(up: &HttpUpstream, extra: &str) -> (Setup, tempfile::TempDir) {
    start_for(up.addr, extra)
}

fn start_for(upstream: std::net::SocketAddr, extra: &str) -> (Setup, tempfile::TempDir) {
    let s = Setup::start(&format!("upstream = \"http://{upstream}\"\n{extra}"), "");
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("ca.pem"), &s.ca.cert_pem).unwrap();
    (s, files)
}

fn curl_args(s: &Setup, files: &Path) -> Vec<String> {
    let port = s.wssd.addr.port();
    vec![
        "-sS".into(),
        "--http1.1".into(),
        "--max-time".into(),
        "20".into(),
        "--cacert".into(),
        files.join("ca.pem").display().to_string(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
    ]
}

fn url(s: &Setup, path: &str) -> String {
    format!("https://localhost:{}{path}", s.wssd.addr.port())
}

/// Runs curl with `args`; returns (stdout, stderr).
async fn curl(s: &Setup, files: &Path, args: &[&str]) -> (Vec<u8>, String) {
    let out = tokio::process::Command::new("curl")
        .args(curl_args(s, files))
        .args(args)
        .output()
        .await
        .expect("curl runs");
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl -i`: the status, the lowercased head, and the body (after any 1xx heads, which
/// are at the start of the head returned).
async fn curl_i(s: &Setup, files: &Path, args: &[&str]) -> (u16, String, Vec<u8>) {
    let mut all = vec!["-i"];
    all.extend_from_slice(args);
    let (mut out, err) = curl(s, files, &all).await;
    let mut informational = String::new();
    while out.starts_with(b"HTTP/1.1 1") {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        informational.push_str(&String::from_utf8_lossy(&out[..end]).to_ascii_lowercase());
        out.drain(..end);
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {:?} {err}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (
        status,
        format!("{informational}{head}"),
        out[split + 4..].to_vec(),
    )
}

fn has_header(head: &str, line: &str) -> bool {
    head.lines().any(|l| l.trim_end() == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_head_and_304_pass_with_the_right_headers() {
    let up = HttpUpstream::start().await;
    let (s, files) = start(&up, "");
    let (status, head, body) = curl_i(
        &s,
        files.path(),
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Real-IP: 6.6.6.6",
            "-H",
            "Connection: X-Secret",
            "-H",
            "X-Secret: hop",
            "-H",
            "X_Under: 1",
            "-H",
            "Cookie: a=b",
            &url(&s, "/hello?a=1&b=%20"),
        ],
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (200, b"hello".as_slice()),
        "{head}"
    );
    assert!(has_header(&head, "x-upstream: 1"), "{head}");
    assert!(
        has_header(&head, "content-security-policy: default-src 'self'"),
        "the upstream's own CSP is left alone: {head}"
    );
    assert_eq!(head.matches("content-security-policy").count(), 1, "{head}");
    assert!(
        head.contains("strict-transport-security: max-age="),
        "{head}"
    );
    assert!(
        !head.contains("x-hop"),
        "a hop-by-hop response header reached the client: {head}"
    );

    let seen = up.heads();
    let req = seen.last().unwrap();
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("GET", "/hello?a=1&b=%20")
    );
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(
        req.header("host"),
        [format!("localhost:{}", s.wssd.addr.port())]
    );
    assert_eq!(req.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(req.header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        req.header("x-forwarded-host"),
        [format!("localhost:{}", s.wssd.addr.port())]
    );
    assert_eq!(req.header("forwarded").len(), 1);
    assert!(req.header("forwarded")[0].starts_with("for=127.0.0.1;proto=https;host="));
    assert_eq!(req.header("cookie"), ["a=b"]);
    for dropped in ["x-real-ip", "x-secret", "x_under"] {
        assert!(
            req.header(dropped).is_empty(),
            "{dropped} reached the upstream: {req:?}"
        );
    }

    // HEAD: the headers of a GET, no body.
    let (status, head, body) = curl_i(&s, files.path(), &["-I", &url(&s, "/hello")]).await;
    assert_eq!(status, 200, "{head}");
    assert!(has_header(&head, "content-length: 5"), "{head}");
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(up.heads().last().unwrap().method, "HEAD");

    // A conditional GET: the upstream's 304 passes, without a body.
    let (status, head, body) = curl_i(
        &s,
        files.path(),
        &["-H", "If-None-Match: \"v1\"", &url(&s, "/etag")],
    )
    .await;
    assert_eq!(status, 304, "{head}");
    assert!(has_header(&head, "etag: \"v1\""), "{head}");
    assert!(body.is_empty());
    let (status, _, body) = curl_i(&s, files.path(), &[&url(&s, "/etag")]).await;
    assert_eq!((status, body.as_slice()), (200, b"version 1".as_slice()));
    // The upstream's own 404 is the upstream's.
    let (status, _, body) = curl_i(&s, files.path(), &[&url(&s, "/nowhere")]).await;
    assert_eq!((status, body.as_slice()), (404, b"no such page".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_with_content_length_and_chunked() {
    let up = HttpUpstream::start().await;
    let (s, files) = start(&up, "");
    let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let file = files.path().join("body.bin");
    std::fs::write(&file, &payload).unwrap();
    let data = format!("@{}", file.display());
    // 2 MiB with Content-Length; curl sends `Expect: 100-continue` for a body this large
    // and waits for the 100 before sending it.
    let (status, head, body) = curl_i(
        &s,
        files.path(),
        &[
            "-v",
            "--data-binary",
            &data,
            "-H",
            "Content-Type: application/octet-stream",
            &url(&s, "/echo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.starts_with("http/1.1 100 continue\r\n"),
        "no 100 for the Expect: {head}"
    );
    assert!(
        has_header(&head, &format!("x-body-length: {}", payload.len())),
        "{head}"
    );
    assert!(
        body == payload,
        "the body came back different ({} bytes)",
        body.len()
    );
    let req = up.heads().last().unwrap().clone();
    assert_eq!(req.header("content-length"), [payload.len().to_string()]);
    assert!(
        req.header("expect").is_empty(),
        "wssd answers Expect itself"
    );

    // The same body chunked.
    let (status, head, body) = curl_i(
        &s,
        files.path(),
        &[
            "--data-binary",
            &data,
            "-H",
            "Transfer-Encoding: chunked",
            &url(&s, "/echo"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        body == payload,
        "chunked body came back different ({} bytes)",
        body.len()
    );
    let req = up.heads().last().unwrap().clone();
    assert_eq!(req.header("transfer-encoding"), ["chunked"]);
    assert!(req.header("content-length").is_empty());
}

/// A TLS connection to wssd.
async fn tls(s: &Setup) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(s.wssd.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(s.client())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_streamed_not_held() {
    let up = HttpUpstream::start().await;
    let (s, _files) = start(&up, "");
    let mut conn = tls(&s).await;
    conn.write_all(
        b"POST /count HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
    )
    .await
    .unwrap();
    conn.write_all(&[b'a'; 0x1000]).await.unwrap();
    conn.write_all(b"\r\n").await.unwrap();
    // The first chunk reaches the upstream while the client has not finished its body.
    let deadline = tokio::time::Instant::now() + WAIT;
    while up.received.load(Ordering::SeqCst) < 0x1000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream got {} bytes of a body the client is still sending",
            up.received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.write_all(b"3\r\nbcd\r\n0\r\n\r\n").await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, conn.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n4099"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_and_server_sent_events_arrive_part_by_part() {
    let up = HttpUpstream::start().await;
    let (s, files) = start(&up, "");
    for (path, first, last) in [
        ("/slow", "first", "last"),
        ("/sse", "data: one", "data: two"),
    ] {
        let mut child = tokio::process::Command::new("curl")
            .args(curl_args(&s, files.path()))
            .args(["-N", &url(&s, path)])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line()).await;
        assert_eq!(
            line.unwrap().unwrap().as_deref(),
            Some(first),
            "{path}: the first part did not arrive before the upstream sent the last"
        );
        up.release();
        let mut rest = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
            rest.push(line);
        }
        assert!(rest.iter().any(|l| l == last), "{path}: {rest:?}");
        assert!(child.wait().await.unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_alive_on_both_sides() {
    let up = HttpUpstream::start().await;
    let (s, files) = start(&up, "");
    let hello = url(&s, "/hello");
    let (out, err) = curl(&s, files.path(), &["-v", &hello, &hello, &hello]).await;
    assert_eq!(out, b"hellohellohello");
    assert_eq!(
        err.matches("Re-using existing connection").count(),
        2,
        "curl opened a new TLS connection: {err}"
    );
    // A second client: wssd reuses its pooled upstream connection.
    let (out, _) = curl(&s, files.path(), &[&hello]).await;
    assert_eq!(out, b"hello");
    assert_eq!(up.heads().len(), 4);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "four requests, one upstream connection"
    );
}

/// An upstream connection wssd holds idle can be closed by the upstream at any time (its
/// own keep-alive timeout, a restart): the next request must not get a 502 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_the_upstream_closed_is_not_used() {
    // Answers one request per connection, as HTTP/1.1 keep-alive, and hangs up a moment
    // later without saying so: wssd has put the connection back in its pool by then.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(got) => head.extend_from_slice(&chunk[..got]),
                    }
                }
                let body = format!("answer {n}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let (s, files) = start_for(addr, "");
    let page = url(&s, "/page");
    for n in 1..=4 {
        let (out, err) = curl(&s, files.path(), &[&page]).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("answer {n}\n"),
            "request {n} answered by a fresh upstream connection: {err}"
        );
        // The upstream hangs up on the idle connection in the meantime.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_silent_and_oversize_get_502_504_and_413() {
    let up = HttpUpstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (s, files) = start(
        &up,
        &format!(
            "upstream_response_timeout = \"1s\"\nmax_body_size = \"1KiB\"\n\n[[route]]\npath = \"/down\"\nupstream = \"http://127.0.0.1:{closed_port}\"\n"
        ),
    );
    let wssd_headers = |head: &str| {
        for h in [
            "strict-transport-security:",
            "content-security-policy: default-src 'none'",
            "x-frame-options: deny",
            "x-content-type-options: nosniff",
        ] {
            assert!(head.contains(h), "{h} missing: {head}");
        }
    };
    let started = std::time::Instant::now();
    let (status, head, _) = curl_i(&s, files.path(), &[&url(&s, "/down/x")]).await;
    assert_eq!(status, 502, "{head}");
    wssd_headers(&head);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "502 took {:?}",
        started.elapsed()
    );

    let (status, head, _) = curl_i(&s, files.path(), &[&url(&s, "/hang")]).await;
    assert_eq!(status, 504, "{head}");
    wssd_headers(&head);

    let big = "x".repeat(2048);
    let before = up.heads().len();
    let (status, head, _) = curl_i(
        &s,
        files.path(),
        &["--data-binary", &big, &url(&s, "/echo")],
    )
    .await;
    assert_eq!(status, 413, "{head}");
    wssd_headers(&head);
    assert_eq!(
        up.heads().len(),
        before,
        "a declared oversize body reached the upstream"
    );
    let (status, head, _) = curl_i(
        &s,
        files.path(),
        &[
            "--data-binary",
            &big,
            "-H",
            "Transfer-Encoding: chunked",
            &url(&s, "/count"),
        ],
    )
    .await;
    assert_eq!(status, 413, "{head}");
    assert!(
        up.received.load(Ordering::SeqCst) <= 1024,
        "more than max_body_size reached the upstream: {}",
        up.received.load(Ordering::SeqCst)
    );
    // Within the limit, the same request passes.
    let (status, _, body) = curl_i(
        &s,
        files.path(),
        &["--data-binary", "small", &url(&s, "/echo")],
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, b"small".as_slice()));
}

/// Sends `request` on a fresh connection; returns everything wssd sent until it closed.
async fn exchange(s: &Setup, request: &str) -> String {
    let mut conn = tls(s).await;
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_ambiguous_framing_are_not_smuggled() {
    let up = HttpUpstream::start().await;
    let (s, _files) = start(&up, "");
    // Content-Length and Transfer-Encoding: the body is the chunked one (RFC 9112 §6.3),
    // the upstream gets it chunked only, and the connection closes after the answer, so
    // the request hidden behind it is never read.
    let response = exchange(
        &s,
        "POST /count HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(response.matches("HTTP/1.1").count(), 1, "{response}");
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(heads[0].target, "/count");
    assert!(heads[0].header("content-length").is_empty(), "{heads:?}");
    assert_eq!(heads[0].header("transfer-encoding"), ["chunked"]);
    assert_eq!(up.received.load(Ordering::SeqCst), 5);

    for (what, request) in [
        (
            "two Content-Lengths",
            "POST /count HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            "GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "a Transfer-Encoding that is not chunked",
            "POST /count HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ),
        (
            "a space before the colon",
            "GET /hello HTTP/1.1\r\nHost: localhost\r\nContent-Length : 5\r\n\r\nhello",
        ),
    ] {
        let response = exchange(&s, request).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{what}: {response}");
    }
    assert_eq!(
        up.heads().len(),
        1,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_response_headers_are_added_where_the_upstream_set_none() {
    let up = HttpUpstream::start().await;
    let (s, files) = start(
        &up,
        "response_headers = { \"X-Frame-Options\" = \"SAMEORIGIN\", \"Content-Security-Policy\" = \"default-src 'none'\", \"Permissions-Policy\" = \"camera=()\" }",
    );
    let (status, head, _) = curl_i(&s, files.path(), &[&url(&s, "/hello")]).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        has_header(&head, "x-frame-options: sameorigin"),
        "added: {head}"
    );
    assert!(
        has_header(&head, "permissions-policy: camera=()"),
        "added: {head}"
    );
    assert!(
        has_header(&head, "content-security-policy: default-src 'self'"),
        "the upstream's own CSP wins: {head}"
    );
    assert_eq!(head.matches("content-security-policy").count(), 1, "{head}");
    // wssd's own answers keep their own full set.
    let (status, head, _) =
        curl_i(&s, files.path(), &["-H", "Host: a, b", &url(&s, "/hello")]).await;
    assert_eq!(status, 400, "{head}");
    assert!(has_header(&head, "x-frame-options: deny"), "{head}");
}
