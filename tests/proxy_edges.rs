//! The proxy against upstreams that misbehave or are slow, and what reaches them: a wrong
//! `Sec-WebSocket-Accept` and an upstream silent past `handshake_timeout` give 502, an
//! upstream that cannot be connected to gives 502 at `upstream_connect_timeout`, the
//! forwarding headers are wssd's own, permessage-deflate passes through untouched, frames
//! the upstream sends right behind its 101 reach the client, and an answer that is not
//! HTTP gives 502.

mod common;

use std::time::{Duration, Instant};

use common::edge::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every upgrade with `answer(key)` (or nothing, for `None`),
/// then echoes the client's frames unmasked, exactly as they came (RSV bits included).
async fn scripted_upstream(answer: fn(&str) -> Option<Vec<u8>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                // Header names are case-insensitive (wssd sends them in lower case).
                let key = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then_some(value)
                    })
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let Some(response) = answer(&key) else {
                    // Silent: hold the connection and say nothing.
                    let _ = stream.read(&mut chunk).await;
                    return;
                };
                let _ = stream.write_all(&response).await;
                // Echo frames: unmask and send back with the same first byte.
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut pending = buf[end..].to_vec();
                loop {
                    while let Some((frame, used)) = unmask_one(&pending) {
                        let _ = stream.write_all(&frame).await;
                        pending.drain(..used);
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// One complete masked frame at the start of `data`, unmasked; and its length in `data`.
fn unmask_one(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    if data.len() < 2 {
        return None;
    }
    let len = (data[1] & 0x7f) as usize;
    assert!(len < 126, "small frames only");
    let total = 2 + 4 + len;
    if data.len() < total {
        return None;
    }
    let key = &data[2..6];
    let mut frame = vec![data[0], len as u8];
    frame.extend(
        data[6..total]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4]),
    );
    Some((frame, total))
}

fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

async fn status(s: &Setup, request: &str) -> (String, Duration) {
    let started = Instant::now();
    let response = raw_exchange(
        s.wssd.addr,
        &s.client(),
        request.as_bytes(),
        Duration::from_secs(20),
    )
    .await;
    (
        response.lines().next().unwrap_or("").to_string(),
        started.elapsed(),
    )
}

fn upgrade_request() -> String {
    format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_accept_and_a_silent_upstream_get_502() {
    let wrong = scripted_upstream(|_| {
        Some("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: c2VjcmV0IGJ1dCB3cm9uZw==\r\n\r\n".into())
    })
    .await;
    let s = Setup::start(&format!("upstream = \"ws://{wrong}\""), "");
    let (line, _) = status(&s, &upgrade_request()).await;
    assert_eq!(line, "HTTP/1.1 502 Bad Gateway");

    let silent = scripted_upstream(|_| None).await;
    let s = Setup::start(
        &format!("upstream = \"ws://{silent}\"\nhandshake_timeout = \"2s\""),
        "",
    );
    let (line, took) = status(&s, &upgrade_request()).await;
    assert_eq!(line, "HTTP/1.1 502 Bad Gateway");
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_cannot_be_connected_to_gets_502_at_the_connect_timeout() {
    // A listening socket with a backlog of one, already taken: further connection
    // attempts get no answer at all (their SYNs are dropped), as from a dead host.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(probe.is_err(), "the backlog trick does not work here");

    let s = Setup::start(
        &format!(
            "upstream = \"ws://{addr}\"\nupstream_connect_timeout = \"1s\"\nhandshake_timeout = \"10s\""
        ),
        "",
    );
    let (line, took) = status(&s, &upgrade_request()).await;
    assert_eq!(line, "HTTP/1.1 502 Bad Gateway");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(6),
        "answered after {took:?}"
    );
    drop(full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarding_headers_are_wssds_own() {
    let up = RawUpstream::start().await;
    let s = Setup::start(&format!("upstream = \"ws://{}\"", up.addr), "");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app.example.test:8443\r\n{UPGRADE}X-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n\r\n"
    );
    let (line, _) = status(&s, &request).await;
    assert_eq!(line, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(up.header("x-forwarded-host"), ["app.example.test:8443"]);
    assert!(up.header("x-real-ip").is_empty(), "{:?}", up.heads());
    assert!(up.header("x-forwarded-port").is_empty());
    assert_eq!(up.header("host"), ["app.example.test:8443"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_negotiated_end_to_end_and_compressed_frames_pass() {
    let up = scripted_upstream(|key| {
        Some(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
            accept_for(key)
        ).into_bytes())
    })
    .await;
    let s = Setup::start(&format!("upstream = \"ws://{up}\""), "");
    let (mut tls, _) = tls_connect(s.wssd.addr, &s.client()).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(
            "\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    // "Hello", compressed (RFC 7692 §7.2.3.1), in one frame with RSV1 set.
    let deflated = [0xf2u8, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let key = [9u8, 8, 7, 6];
    let mut frame = vec![0xc1, 0x80 | deflated.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(deflated.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    tls.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 + deflated.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got[0], 0xc1, "RSV1 (compressed) kept");
    assert_eq!(
        &got[2..2 + deflated.len()],
        deflated,
        "the compressed bytes passed unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_right_behind_the_upstreams_101_reach_the_client_and_garbage_gets_502() {
    // The 101 and a first text frame ("hello", unmasked) in one write: the frame must
    // not be lost with the head's read buffer.
    let eager = scripted_upstream(|key| {
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(key)
        )
        .into_bytes();
        answer.extend_from_slice(b"\x81\x05hello");
        Some(answer)
    })
    .await;
    let s = Setup::start(&format!("upstream = \"ws://{eager}\""), "");
    let (mut tls, _) = tls_connect(s.wssd.addr, &s.client()).await.unwrap();
    tls.write_all(upgrade_request().as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\x81\x05hello") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        got.ends_with(b"\x81\x05hello"),
        "the early frame is missing: {text:?}"
    );

    // Not HTTP at all.
    let garbage =
        scripted_upstream(|_| Some(b"SSH-2.0-OpenSSH_9.2\r\nwhat\r\n\r\n".to_vec())).await;
    let s = Setup::start(&format!("upstream = \"ws://{garbage}\""), "");
    let (line, _) = status(&s, &upgrade_request()).await;
    assert_eq!(line, "HTTP/1.1 502 Bad Gateway");
}
