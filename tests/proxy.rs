//! The proxy against a real upstream WebSocket server started here: messages of every
//! kind both ways, close codes, subprotocols, forwarding headers, and a dead upstream.

#![allow(clippy::result_large_err)] // tungstenite's callback signature

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What the upstream saw of one connection.
#[derive(Debug)]
enum Seen {
    Request {
        uri: String,
        headers: Vec<(String, String)>,
    },
    /// A text or binary message of this many bytes.
    Data(usize),
    Close(Option<(u16, String)>),
}

/// An upstream echo server: answers `superchat` when offered, closes with 4000 when it
/// receives the text "close-me", reports requests and close frames on the channel.
async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let report = tx.clone();
                let callback =
                    move |req: &Request, mut res: Response| -> Result<Response, ErrorResponse> {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| {
                                (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect();
                        let _ = report.send(Seen::Request {
                            uri: req.uri().to_string(),
                            headers,
                        });
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if offered.split(',').any(|p| p.trim() == "superchat") {
                            res.headers_mut()
                                .insert("sec-websocket-protocol", "superchat".parse().unwrap());
                        }
                        Ok(res)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "close-me" => {
                            let frame = CloseFrame {
                                code: CloseCode::from(4000),
                                reason: "bye from upstream".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                        }
                        m @ (Message::Text(_) | Message::Binary(_)) => {
                            let _ = tx.send(Seen::Data(m.len()));
                            let Ok(()) = ws.send(m).await else { return };
                        }
                        Message::Close(frame) => {
                            let _ = tx.send(Seen::Close(
                                frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                            ));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn proxy_config(dir: &std::path::Path, upstream: SocketAddr) -> String {
    files_config(dir, &format!("upstream = \"ws://{upstream}\""), "")
}

async fn next_data(ws: &mut Wss) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("timed out")
        {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_kind_pass_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let (up, mut seen) = upstream().await;
    let wssd = Wssd::start(dir.path(), &proxy_config(dir.path(), up));
    let client = client_config(&ca.cert_pem);

    let path = "/room/7?token=a%20b&x=1";
    let (tls, _) = tls_connect(wssd.addr, &client).await.unwrap();
    let mut request = format!("wss://localhost:{}{path}", wssd.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    request
        .headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    request
        .headers_mut()
        .insert("x-custom", "kept".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "superchat"
    );

    let Seen::Request { uri, headers } = seen.recv().await.unwrap() else {
        panic!("no request")
    };
    let header = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        uri, path,
        "path and query must reach the upstream unchanged"
    );
    assert_eq!(header("host"), format!("localhost:{}", wssd.addr.port()));
    assert_eq!(
        header("x-forwarded-for"),
        "127.0.0.1",
        "the client's copy is replaced"
    );
    assert_eq!(header("x-forwarded-proto"), "https");
    assert_eq!(
        header("forwarded"),
        format!(
            "for=127.0.0.1;proto=https;host=\"localhost:{}\"",
            wssd.addr.port()
        )
    );
    assert_eq!(header("x-custom"), "kept");
    assert_eq!(header("sec-websocket-protocol"), "chat, superchat");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(big),
        "1 MiB message"
    );
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    // Close from the client, with code and reason: the upstream sees both.
    let frame = CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye from client".into(),
    };
    ws.close(Some(frame)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Seen::Close(close) => {
                assert_eq!(close, Some((4001, "bye from client".to_string())));
                break;
            }
            Seen::Data(_) => continue,
            Seen::Request { .. } => panic!("unexpected second request"),
        }
    }
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001, "the upstream's reply comes back")
        }
        other => panic!("expected the close reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_code_and_reason_reach_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let (up, _seen) = upstream().await;
    let wssd = Wssd::start(dir.path(), &proxy_config(dir.path(), up));
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    ws.send(Message::text("close-me")).await.unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "bye from upstream");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The connection then ends cleanly.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        end.is_none() || matches!(end, Some(Err(_))) || matches!(end, Some(Ok(Message::Close(_))))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gets_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    // A port that was free a moment ago and has nothing listening now.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let wssd = Wssd::start(dir.path(), &proxy_config(dir.path(), dead));
    let client = client_config(&ca.cert_pem);
    let (tls, _) = tls_connect(wssd.addr, &client).await.unwrap();
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    let started = std::time::Instant::now();
    match tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502);
            for name in [
                "strict-transport-security",
                "content-security-policy",
                "x-frame-options",
                "x-content-type-options",
            ] {
                assert!(response.headers().contains_key(name), "502 without {name}");
            }
        }
        other => panic!("expected HTTP 502, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead upstream must not hang the client"
    );
    wssd.wait_for_logs("upstream unavailable", 1, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_the_upgrade_gets_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    // An HTTP server that is not a WebSocket server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let wssd = Wssd::start(dir.path(), &proxy_config(dir.path(), up));
    let (tls, _) = tls_connect(wssd.addr, &client_config(&ca.cert_pem))
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    match tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502)
        }
        other => panic!("expected HTTP 502, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_closed_with_1009_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let (up, mut seen) = upstream().await;
    let config = files_config(
        dir.path(),
        &format!("upstream = \"ws://{up}\"\nmax_message_size = \"64KiB\""),
        "",
    );
    let wssd = Wssd::start(dir.path(), &config);
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    let fits = vec![7u8; 64 * 1024];
    ws.send(Message::binary(fits.clone())).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(fits),
        "a message at the limit passes"
    );
    ws.send(Message::binary(vec![7u8; 128 * 1024]))
        .await
        .unwrap();
    match next_data(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The upstream is told too, and never gets a byte of the oversize frame: it sees the
    // message at the limit, then wssd's close, as clean frames (a forwarded part of the
    // big frame would swallow the close frame as payload).
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the upstream never saw a clean close")
            .unwrap()
        {
            Seen::Close(close) => {
                assert_eq!(close.map(|c| c.0), Some(1009));
                break;
            }
            Seen::Data(len) => data.push(len),
            Seen::Request { .. } => continue,
        }
    }
    assert_eq!(
        data,
        [64 * 1024],
        "the upstream got part of the oversize message"
    );
}
