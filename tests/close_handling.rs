//! How proxied connections end, seen from both ends: `idle_timeout` closes a silent peer
//! with 1001 (after a ping it did not answer), a frame no endpoint may send gets 1002 on
//! both sides, a client that vanishes makes wssd send the upstream 1001, and a client that
//! never answers wssd's close is cut off after the 5 s closing-handshake bound.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// An echo upstream that notes every close code it receives.
async fn upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<u16>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let codes = Arc::new(Mutex::new(Vec::new()));
    let seen = codes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(message) = rx.next().await {
                    match message {
                        Ok(Message::Close(frame)) => {
                            seen.lock()
                                .unwrap()
                                .push(frame.map_or(1005, |f| u16::from(f.code)));
                        }
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            let _ = futures_util::SinkExt::send(&mut tx, m).await;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            seen.lock().unwrap().push(0);
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, codes)
}

async fn wait_codes(codes: &Mutex<Vec<u16>>, n: usize) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while codes.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "the upstream saw {:?}",
            codes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    codes.lock().unwrap().clone()
}

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A raw client connection after the 101 (its head read and dropped).
async fn raw_upgraded(wssd: &Wssd, client: &Arc<rustls::ClientConfig>) -> Tls {
    let (mut tls, _) = tls_connect(wssd.addr, client).await.unwrap();
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tls
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// The server frames in `bytes`: (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        if bytes.len() < at + len {
            break;
        }
        out.push((opcode, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

fn start(dir: &std::path::Path, ca: &TestCa, upstream: std::net::SocketAddr, extra: &str) -> Wssd {
    write_pair(dir, &ca.leaf(&["localhost"]));
    Wssd::start(
        dir,
        &files_config(dir, &format!("upstream = \"ws://{upstream}\"\n{extra}"), ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_gets_a_ping_then_1001_and_is_cut_off_five_seconds_later() {
    let (up, codes) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let wssd = start(dir.path(), &ca, up, "idle_timeout = \"2s\"");
    let started = Instant::now();
    let mut tls = raw_upgraded(&wssd, &client_config(&ca.cert_pem)).await;
    // Say nothing, answer nothing; read what comes, until wssd ends the connection.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 20 s"),
        }
    };
    let frames = frames(&got);
    assert_eq!(
        frames[0],
        (0x9, b"wssd".to_vec()),
        "a keepalive ping first: {frames:?}"
    );
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a close frame");
    assert_eq!(close_code(&close.1), 1001);
    assert_eq!(&close.1[2..], b"idle timeout");
    // Closed at 2 s, then the client had 5 s to answer.
    assert!(
        ended >= Duration::from_millis(6_500) && ended < Duration::from_secs(12),
        "cut off after {ended:?}"
    );
    assert_eq!(
        wait_codes(&codes, 1).await[0],
        1001,
        "the upstream is told too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_no_endpoint_may_send_gets_1002_on_both_sides() {
    let (up, codes) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let wssd = start(dir.path(), &ca, up, "");
    let mut tls = raw_upgraded(&wssd, &client_config(&ca.cert_pem)).await;
    // A masked text "hi", then a frame with the reserved opcode 3.
    let mut bytes = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    bytes.extend_from_slice(&[0x83, 0x80, 0, 0, 0, 0]);
    tls.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
    let frames = frames(&got);
    assert_eq!(
        frames[0],
        (0x1, b"hi".to_vec()),
        "what came before still arrives: {frames:?}"
    );
    assert_eq!(
        frames.last().map(|(op, p)| (*op, close_code(p))),
        Some((0x8, 1002))
    );
    assert_eq!(wait_codes(&codes, 1).await, [1002]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_makes_wssd_tell_the_upstream_1001() {
    let (up, codes) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let wssd = start(dir.path(), &ca, up, "");
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    echo(&mut ws, "here").await.unwrap();
    // Gone without a closing handshake (the TCP connection just ends).
    drop(ws);
    assert_eq!(wait_codes(&codes, 1).await, [1001]);
}
