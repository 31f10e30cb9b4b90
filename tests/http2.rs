//! HTTP/2 on the listener (SPEC "Routes and HTTP"): ALPN offers `h2` unless `http2 =
//! false`; plain requests over h2 (curl `--http2`) are proxied to the HTTP/1.1 upstream;
//! WebSockets over h2 (RFC 8441 extended CONNECT, with hyper's h2 client) reach the echo
//! and the upstream, with origins checked, many on one connection, through a
//! certificate swap; and a rapid-reset flood ends only the flooding connection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::edge::*;
use common::http_upstream::HttpUpstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A TLS connection offering `alpn`; returns the protocol wssd chose.
async fn tls_with_alpn(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let mut config = (*client_config(ca_pem)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (tls, chosen)
}

/// An HTTP/2 connection to wssd.
async fn h2(s: &Setup) -> SendRequest<Empty<Bytes>> {
    h2_at(s.wssd.addr, &s.ca.cert_pem).await
}

/// An HTTP/2 connection to the wssd at `addr`, whose certificate `ca_pem` signed.
async fn h2_at(addr: std::net::SocketAddr, ca_pem: &str) -> SendRequest<Empty<Bytes>> {
    let (tls, chosen) = tls_with_alpn(addr, ca_pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(chosen.as_deref(), Some(b"h2".as_slice()));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Opens a WebSocket over the h2 connection `send` (RFC 8441): the status, and the
/// WebSocket when it is 200.
async fn ws_over_h2(
    send: &mut SendRequest<Empty<Bytes>>,
    port: u16,
    path: &str,
    origin: Option<&str>,
) -> (u16, hyper::HeaderMap, Option<Ws>) {
    let mut req = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("https://localhost:{port}{path}"))
        .header("sec-websocket-version", "13");
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let mut req = req.body(Empty::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await.unwrap();
    let res = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    if status != 200 {
        return (status, headers, None);
    }
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (status, headers, Some(ws))
}

async fn echo_h2(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("no echo of {text:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_unless_turned_off() {
    let s = Setup::start("", "");
    let (_, chosen) = tls_with_alpn(s.wssd.addr, &s.ca.cert_pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(chosen.as_deref(), Some(b"h2".as_slice()));
    let (_, chosen) = tls_with_alpn(s.wssd.addr, &s.ca.cert_pem, &[b"http/1.1"]).await;
    assert_eq!(chosen.as_deref(), Some(b"http/1.1".as_slice()));
    let off = Setup::start("http2 = false", "");
    let (_, chosen) = tls_with_alpn(off.wssd.addr, &off.ca.cert_pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(chosen.as_deref(), Some(b"http/1.1".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_over_h2_reach_the_http1_upstream() {
    let up = HttpUpstream::start().await;
    let s = Setup::start(&format!("upstream = \"http://{}\"", up.addr), "");
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("ca.pem"), &s.ca.cert_pem).unwrap();
    let port = s.wssd.addr.port();
    let payload = "p".repeat(2 * 1024 * 1024);
    std::fs::write(files.path().join("body"), &payload).unwrap();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
            .arg(files.path().join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let (out, err) = curl(&[
        "-w",
        "\n%{http_version} %{http_code}",
        &url("/hello?x=1"),
        &url("/hello"),
    ]);
    assert_eq!(out, "hello\n2 200hello\n2 200", "{err}");
    let heads = up.heads();
    assert_eq!(heads[0].version, "HTTP/1.1");
    assert_eq!(heads[0].target, "/hello?x=1");
    assert_eq!(heads[0].header("host"), [format!("localhost:{port}")]);
    assert_eq!(heads[0].header("x-forwarded-proto"), ["https"]);
    let (out, err) = curl(&[
        "--data-binary",
        &format!("@{}", files.path().join("body").display()),
        "-w",
        "\n%{http_version} %{http_code}",
        &url("/echo"),
    ]);
    assert!(out.ends_with("\n2 200"), "{err}");
    assert_eq!(out.len(), payload.len() + "\n2 200".len(), "{err}");
    let (out, _) = curl(&["-I", &url("/hello")]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("content-length: 5"), "{out}");
    assert!(out.contains("strict-transport-security:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_h2_reach_the_echo_and_the_upstream_with_origins_checked() {
    let up = Upstream::start().await;
    let s = Setup::start(
        &format!(
            "upstream = \"ws://{}\"\nallowed_origins = [\"https://app.example\"]",
            up.addr
        ),
        "",
    );
    let port = s.wssd.addr.port();
    let mut send = h2(&s).await;
    let (status, headers, ws) =
        ws_over_h2(&mut send, port, "/chat?room=1", Some("https://app.example")).await;
    assert_eq!(status, 200, "{headers:?}");
    assert!(
        headers.get("sec-websocket-accept").is_none(),
        "no accept key over h2"
    );
    let mut ws = ws.unwrap();
    echo_h2(&mut ws, "over h2").await;
    // A ping is answered through the relay.
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => break p,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(pong.as_ref(), b"p1");
    let (status, _, _) = ws_over_h2(&mut send, port, "/chat", Some("https://evil.example")).await;
    assert_eq!(status, 403, "the origin is checked over h2 too");
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the refused one never reached the upstream"
    );
    assert_eq!(up.header("sec-websocket-version"), ["13"]);
    // The close code passes.
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001.into(),
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    let closed = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, Some(4001));

    // The built-in echo over h2.
    let echo = Setup::start("", "");
    let mut send = h2(&echo).await;
    let (status, _, ws) = ws_over_h2(&mut send, echo.wssd.addr.port(), "/", None).await;
    assert_eq!(status, 200);
    echo_h2(&mut ws.unwrap(), "echo over h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_websockets_share_one_h2_connection_through_a_certificate_swap() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls_dir = write_pair(dir.path(), &first);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let mut send = h2_at(wssd.addr, &ca.cert_pem).await;
    let mut sockets = Vec::new();
    for i in 0..50 {
        let (status, _, ws) = ws_over_h2(&mut send, wssd.addr.port(), &format!("/{i}"), None).await;
        assert_eq!(status, 200, "stream {i}");
        sockets.push(ws.unwrap());
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        echo_h2(ws, &format!("before {i}")).await;
    }
    let second = ca.leaf(&["localhost"]);
    replace_file(&tls_dir.join("key.pem"), &second.key_pem);
    replace_file(&tls_dir.join("cert.pem"), &second.cert_pem);
    let client = client_config(&ca.cert_pem);
    wait_for_serial(wssd.addr, &client, &second.serial, WAIT).await;
    for (i, ws) in sockets.iter_mut().enumerate() {
        echo_h2(ws, &format!("after {i}")).await;
    }
}

/// The flood is cut by h2's limits on reset streams (hyper's `max_pending_accept_reset_
/// streams` and `max_local_error_reset_streams`, and h2's own): the connection ends after
/// some hundreds to a few thousand resets, depending on how quickly wssd answers each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_ends_that_connection_and_others_are_served() {
    let s = Setup::start("", "");
    let rss_before = rss_kib(s.wssd.pid());
    let (tls, _) = tls_with_alpn(s.wssd.addr, &s.ca.cert_pem, &[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    // Open streams and reset each at once (CVE-2023-44487), as fast as the connection
    // takes them.
    let mut sent = 0;
    let flood = async {
        loop {
            let req = http::Request::builder()
                .uri(format!("https://localhost:{}/", s.wssd.addr.port()))
                .body(())
                .unwrap();
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            client = ready;
            let Ok((response, _)) = client.send_request(req, true) else {
                break;
            };
            drop(response);
            sent += 1;
            if sent >= 100_000 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .ok();
    let ended = tokio::time::timeout(WAIT, driver).await;
    eprintln!("the flood sent {sent} reset streams before wssd ended the connection: {ended:?}");
    assert!(
        ended.is_ok(),
        "the flooding connection is still open after {sent} resets"
    );
    assert!(
        sent < 100_000,
        "wssd took {sent} reset streams without ending the connection"
    );
    let grown = rss_kib(s.wssd.pid()).saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB during the flood");
    // Another client is served as before.
    let (mut ws, _) = ws_connect(s.wssd.addr, &s.client(), "/").await;
    echo(&mut ws, "still serving").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_h2_count_against_the_connection_limits() {
    // Three per address: the TLS connection and two WebSockets on it.
    let s = Setup::start("max_connections_per_ip = 3", "");
    let port = s.wssd.addr.port();
    let mut send = h2(&s).await;
    let (first, _, ws1) = ws_over_h2(&mut send, port, "/", None).await;
    let (second, _, ws2) = ws_over_h2(&mut send, port, "/", None).await;
    assert_eq!((first, second), (200, 200));
    let (third, headers, _) = ws_over_h2(&mut send, port, "/", None).await;
    assert_eq!(
        third, 503,
        "a third WebSocket over one connection: {headers:?}"
    );
    let (mut ws1, ws2) = (ws1.unwrap(), ws2.unwrap());
    echo_h2(&mut ws1, "still open").await;
    // Closing one frees its place.
    drop(ws2);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _, ws) = ws_over_h2(&mut send, port, "/", None).await;
        if status == 200 {
            echo_h2(&mut ws.unwrap(), "a freed place").await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not freed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_over_h2_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let mut wssd = Wssd::start(
        dir.path(),
        &files_config(dir.path(), "drain_timeout = \"3s\"", ""),
    );
    let mut send = h2_at(wssd.addr, &ca.cert_pem).await;
    let mut sockets = Vec::new();
    for i in 0..5 {
        let (status, _, ws) = ws_over_h2(&mut send, wssd.addr.port(), "/", None).await;
        assert_eq!(status, 200);
        let mut ws = ws.unwrap();
        echo_h2(&mut ws, &format!("before the drain {i}")).await;
        sockets.push(ws);
    }
    let sent = std::time::Instant::now();
    wssd.signal("TERM");
    for ws in &mut sockets {
        let code = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("no close")
            {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("expected close 1001, got {other:?}"),
            }
        };
        assert_eq!(code, Some(1001));
        // Read on, so that the client's close reply goes out, as a real client's does.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    }
    let status = wssd
        .wait_exit(Duration::from_secs(3 + 5))
        .expect("wssd did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}:\n{}", wssd.logs());
    assert!(sent.elapsed() < Duration::from_secs(3 + 5));
}
