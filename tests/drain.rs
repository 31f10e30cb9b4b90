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
