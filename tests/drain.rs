//! SIGTERM: every client gets close 1001, and the process exits 0 within drain_timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

async fn expect_going_away(ws: &mut Wss) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close frame")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001, "close code");
                // Keep reading so the client's close reply goes out, as a real client's does.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

async fn drain(extra_listener: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(
        dir.path(),
        &format!("drain_timeout = \"3s\"\n{extra_listener}"),
        "",
    );
    let mut wssd = Wssd::start(dir.path(), &config);
    let client = client_config(&ca.cert_pem);
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
        echo(&mut ws, &format!("before drain {i}")).await.unwrap();
        clients.push(ws);
    }
    let sent = Instant::now();
    wssd.signal("TERM");
    for ws in &mut clients {
        expect_going_away(ws).await;
    }
    let status = wssd
        .wait_exit(Duration::from_secs(3 + 5))
        .expect("wssd did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}:\n{}", wssd.logs());
    assert!(sent.elapsed() < Duration::from_secs(3 + 5));
    assert!(
        tokio::net::TcpStream::connect(wssd.addr).await.is_err(),
        "the listener must be closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_echo_clients_with_1001_and_exits_0() {
    drain("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_proxied_clients_with_1001_and_exits_0() {
    // A real upstream: a tokio-tungstenite echo server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (tx, rx) = ws.split();
                let _ = rx
                    .filter(|m| {
                        std::future::ready(matches!(m, Ok(Message::Text(_) | Message::Binary(_))))
                    })
                    .forward(tx)
                    .await;
            });
        }
    });
    drain(&format!("upstream = \"ws://{up}\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_closes_an_oversize_message_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let wssd = Wssd::start(
        dir.path(),
        &files_config(dir.path(), "max_message_size = \"1KiB\"", ""),
    );
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    echo(&mut ws, &"a".repeat(1024)).await.unwrap();
    futures_util::SinkExt::send(&mut ws, Message::text("b".repeat(2048)))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncooperative_client_cannot_hold_the_drain_past_drain_timeout() {
    // An upstream that notes the close code each connection receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let codes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let seen = codes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Close(frame) = message {
                        seen.lock()
                            .unwrap()
                            .push(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(
        dir.path(),
        &format!("drain_timeout = \"3s\"\nupstream = \"ws://{up}\""),
        "",
    );
    let mut wssd = Wssd::start(dir.path(), &config);
    let client = client_config(&ca.cert_pem);
    // A client that upgrades and then neither reads nor answers anything.
    let (mut tls, _) = tls_connect(wssd.addr, &client).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut tls, &mut head)
        .await
        .unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));

    let sent = Instant::now();
    wssd.signal("TERM");
    // Draining: the process is still there, holding the silent client, and refuses new
    // connections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wssd.wait_exit(Duration::ZERO).is_none(),
        "wssd left before the drain timeout"
    );
    assert!(
        tokio::net::TcpStream::connect(wssd.addr).await.is_err(),
        "a new connection was accepted while draining"
    );
    // The upstream heard 1001 for the client's connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    while codes.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the upstream got no close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*codes.lock().unwrap(), [1001]);
    // And wssd is gone by drain_timeout plus a small margin, client or no client.
    let margin = Duration::from_millis(1_500);
    let status = wssd
        .wait_exit(
            (sent + Duration::from_secs(3) + margin).saturating_duration_since(Instant::now()),
        )
        .expect("the silent client held the drain past drain_timeout");
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "wssd did not wait for the client at all"
    );
    drop(tls);
}

/// An upstream echo that records the close code of each connection, and can be stopped
/// the way an app exits: its connections cut, no close frames sent.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let codes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let seen = codes.clone();
    let app = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            connections.spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Close(frame) = &message {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        seen.lock().unwrap().push(code);
                    } else if (message.is_text() || message.is_binary())
                        && futures_util::SinkExt::send(&mut ws, message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (up, codes, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_tells_clients_1001_before_the_app_stops_and_waits_for_sigterm() {
    // The Kubernetes sequence with wssd as a native sidecar: the app's preStop hook GETs
    // /drain, then the app gets SIGTERM and exits without closing anything, then wssd
    // gets SIGTERM.
    let (up, codes, app) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(
        dir.path(),
        &format!("drain_timeout = \"8s\"\nupstream = \"ws://{up}\""),
        "",
    ) + "\n[admin]\nbind = \"127.0.0.1:0\"\ndrain_endpoint = true\n";
    let mut wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let client = client_config(&ca.cert_pem);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
        echo(&mut ws, &format!("before drain {i}")).await.unwrap();
        clients.push(ws);
    }

    let asked = Instant::now();
    let pre_stop = tokio::spawn(async move { http_get(admin, "/drain").await });
    for ws in &mut clients {
        expect_going_away(ws).await;
    }
    let (status, body) = tokio::time::timeout(Duration::from_secs(15), pre_stop)
        .await
        .expect("/drain did not answer")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("drained"), "{body}");
    // The clients answered their closes, so the drain ended well before drain_timeout.
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(*codes.lock().unwrap(), [1001, 1001, 1001], "the app heard");

    // Drained but alive: no new connections, not ready, still live.
    assert!(
        tokio::net::TcpStream::connect(wssd.addr).await.is_err(),
        "the listener must be closed"
    );
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    // A second /drain (a retried hook) answers at once.
    assert_eq!(http_get(admin, "/drain").await.0, 200);

    // The app exits, cutting what it had; nothing is left for wssd to lose.
    app.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        wssd.wait_exit(Duration::ZERO).is_none(),
        "wssd must wait for SIGTERM after /drain:\n{}",
        wssd.logs()
    );
    let term = Instant::now();
    wssd.signal("TERM");
    let status = wssd
        .wait_exit(Duration::from_secs(5))
        .expect("wssd did not exit on SIGTERM after /drain");
    assert!(status.success(), "{status}:\n{}", wssd.logs());
    assert!(
        term.elapsed() < Duration::from_secs(3),
        "{:?}",
        term.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_is_off_unless_the_config_turns_it_on() {
    let (up, codes, _app) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(dir.path(), &format!("upstream = \"ws://{up}\""), "")
        + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    echo(&mut ws, "one").await.unwrap();
    assert_eq!(http_get(admin, "/drain").await.0, 404);
    echo(&mut ws, "still open").await.unwrap();
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    assert!(codes.lock().unwrap().is_empty());
}
