//! The built-in echo service streams: a message comes back frame by frame as it arrives,
//! so memory per connection stays bounded whatever the message size, also for clients
//! that send a huge message and never read. And it is still a WebSocket echo: large and
//! fragmented messages come back whole, pings are answered, a close is returned.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A client that upgrades, then sends one 16 MiB binary message as fast as wssd takes it,
/// and never reads.
async fn flooder(addr: std::net::SocketAddr, client: Arc<rustls::ClientConfig>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let _ = tls.read(&mut head).await.unwrap();
    let len: u64 = 16 << 20;
    // FIN + binary, masked, 64-bit length, mask key 0 (the payload goes as it is).
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    tls.write_all(&frame).await.unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    for _ in 0..(len / chunk.len() as u64) {
        if tls.write_all(&chunk).await.is_err() {
            return;
        }
    }
    // Everything was taken (a buffering echo): hold the connection, reading nothing.
    std::future::pending::<()>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_that_send_16_mib_and_never_read_leave_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let client = client_config(&ca.cert_pem);
    // Warm up (TLS, the workers), then the baseline.
    let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
    echo(&mut ws, "warm").await.unwrap();
    let baseline = rss_kib(wssd.pid());
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(flooder(wssd.addr, client.clone())))
        .collect();
    // Long enough for a buffering echo to take all 20 × 16 MiB on loopback.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let grown = rss_kib(wssd.pid()).saturating_sub(baseline);
    for t in &tasks {
        t.abort();
    }
    assert!(
        grown < 48 * 1024,
        "20 non-reading clients grew wssd by {} MiB",
        grown / 1024
    );
    // And the service still echoes for everyone else.
    let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
    echo(&mut ws, "still here").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_fragmented_messages_pings_and_closes_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let client = client_config(&ca.cert_pem);
    let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;

    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..], "the 3 MiB came back changed"),
        other => panic!("expected the binary message, got {other:?}"),
    }
    let text = "héllo wörld ".repeat(1000);
    ws.send(Message::text(text.clone())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected the text, got {other:?}"),
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected the close back, got {other:?}"),
    }
    assert!(ws.next().await.is_none(), "wssd closes TCP after the close");

    // A message sent in fragments, with a ping between them, by hand.
    let (tls, _) = tls_connect(wssd.addr, &client).await.unwrap();
    let mut tls = tls;
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    let masked = |first: u8, payload: &[u8]| {
        let key = [1u8, 2, 3, 4];
        let mut f = vec![first, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    };
    let mut frames = masked(0x01, b"frag");
    frames.extend(masked(0x89, b"p"));
    frames.extend(masked(0x80, b"ment"));
    tls.write_all(&frames).await.unwrap();
    let want = [
        &[0x01, 4, b'f', b'r', b'a', b'g'][..],
        &[0x8a, 1, b'p'][..],
        &[0x80, 4, b'm', b'e', b'n', b't'][..],
    ]
    .concat();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want, "fragments, and a pong between them, unmasked");
    // An unmasked client frame is a protocol error: close 1002, then the end.
    tls.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(rest.starts_with(&[0x88, 0x10, 0x03, 0xea]), "{rest:?}");
}
