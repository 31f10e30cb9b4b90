//! wssd under hostile clients and faults: origin checks before the upstream is touched,
//! strict upgrades, size and time limits (slowloris in TLS and in HTTP), connection caps,
//! backpressure against a flooding upstream, keepalive, and peers that vanish. (mTLS, TLS
//! profiles and private key files: tests/tls_policy.rs.)

#![allow(clippy::result_large_err)] // tungstenite's callback signature

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::edge::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_origin_gets_403_before_the_upstream_is_contacted() {
    let up = Upstream::start().await;
    let s = Setup::start(
        &format!(
            "upstream = \"ws://{}\"\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]",
            up.addr
        ),
        "",
    );
    let client = s.client();
    for origin in [
        "https://evil.example.net",
        "https://example.org",
        "http://app.example.com",
        "",
    ] {
        let header = if origin.is_empty() {
            String::new()
        } else {
            format!("Origin: {origin}\r\n")
        };
        let response = raw_request(
            s.wssd.addr,
            &client,
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}{header}\r\n").as_bytes(),
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 403"),
            "{origin:?}: {response}"
        );
        assert!(
            response.contains("Strict-Transport-Security: max-age=31536000\r\n"),
            "{response}"
        );
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        0,
        "the upstream must not be contacted"
    );
    for origin in [
        "https://app.example.com",
        "https://chat.example.org",
        "https://a.b.example.org",
    ] {
        let response = raw_request(
            s.wssd.addr,
            &client,
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Origin: {origin}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 101"), "{origin}: {response}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_requests_are_refused_with_the_right_status() {
    let s = Setup::start("hsts_max_age = \"1d\"", "");
    let client = s.client();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("POST / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n"),
            "HTTP/1.1 405",
        ),
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
            "HTTP/1.1 426",
        ),
        (format!("GET / HTTP/1.1\r\n{UPGRADE}\r\n"), "HTTP/1.1 400"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}X-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}{}\r\n",
                "X-Many: 1\r\n".repeat(100)
            ),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "GET /{} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n",
                "a".repeat(9000)
            ),
            "HTTP/1.1 414",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"
            ),
            "HTTP/1.1 400",
        ),
        // An upgrade needs HTTP/1.1 (hyper answers an HTTP/1.0 request in HTTP/1.0).
        (
            format!("GET / HTTP/1.0\r\nHost: localhost\r\n{UPGRADE}\r\n"),
            "HTTP/1.0 400",
        ),
    ];
    for (request, status) in cases {
        let response = raw_request(s.wssd.addr, &client, request.as_bytes()).await;
        assert!(
            response.starts_with(status),
            "expected {status} for {:?}: {response}",
            &request[..request.len().min(60)]
        );
        for header in [
            "Strict-Transport-Security: max-age=86400",
            "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'",
            "X-Frame-Options: DENY",
            "X-Content-Type-Options: nosniff",
            "Referrer-Policy: no-referrer",
        ] {
            assert!(
                response.contains(header),
                "{header} missing from {response}"
            );
        }
    }
    // What is not HTTP at all never reaches wssd's request handling: hyper answers it
    // with its own bare 400 (no body; no page to frame or sniff) and closes.
    for garbage in [
        "\x16\x03\x01garbage\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
    ] {
        let response = raw_request(s.wssd.addr, &client, garbage.as_bytes()).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage:?}: {response}"
        );
        assert!(
            response.contains("\r\nConnection: close\r\n"),
            "{garbage:?}: {response}"
        );
        assert!(response.ends_with("\r\n\r\n"), "a body: {response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_in_tls_and_in_http_is_cut_at_handshake_timeout() {
    let s = Setup::start("handshake_timeout = \"1s\"", "");
    let client = s.client();
    // TLS slowloris: a TCP connection that sends half a ClientHello and waits.
    let mut tls_slow = TcpStream::connect(s.wssd.addr).await.unwrap();
    tls_slow
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .await
        .unwrap();
    // HTTP slowloris: a finished TLS handshake, then a header line now and then.
    let tcp = TcpStream::connect(s.wssd.addr).await.unwrap();
    let mut http_slow = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    http_slow
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut tls_done, mut http_done) = (None, None);
    while tls_done.is_none() || http_done.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slow clients were not cut"
        );
        // Meanwhile a normal client connects and echoes.
        let (mut ws, _) = ws_connect(s.wssd.addr, &client, "/").await;
        echo(&mut ws, "normal client").await.unwrap();
        if http_done.is_none() {
            let _ = http_slow.write_all(b"X-Slow: 1\r\n").await;
            let mut buf = [0u8; 256];
            if let Ok(read) =
                tokio::time::timeout(Duration::from_millis(200), http_slow.read(&mut buf)).await
            {
                let text = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).into_owned();
                assert!(
                    text.is_empty() || text.starts_with("HTTP/1.1 408"),
                    "{text}"
                );
                http_done = Some(started.elapsed());
            }
        }
        if tls_done.is_none() {
            let mut buf = [0u8; 64];
            if let Ok(read) =
                tokio::time::timeout(Duration::from_millis(200), tls_slow.read(&mut buf)).await
                && matches!(read, Ok(0) | Err(_))
            {
                tls_done = Some(started.elapsed());
            }
        }
    }
    // Cut at the timeout (1 s), not before it, and not much after.
    for done in [tls_done.unwrap(), http_done.unwrap()] {
        assert!(
            done >= Duration::from_millis(800) && done < Duration::from_secs(8),
            "{done:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_refused_before_tls() {
    let s = Setup::start("max_connections = 3", "");
    let client = s.client();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_connect(s.wssd.addr, &client, "/").await.0);
    }
    // The fourth is closed at once: its TLS handshake cannot complete.
    assert!(
        tls_connect(s.wssd.addr, &client).await.is_err(),
        "max_connections + 1 was served"
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut ws, _) = ws_connect(s.wssd.addr, &client, "/").await;
    echo(&mut ws, "a freed place is usable").await.unwrap();
    for ws in &mut held {
        echo(ws, "still here").await.unwrap();
    }

    let per_ip = Setup::start("max_connections_per_ip = 2", "");
    let client = per_ip.client();
    let _a = ws_connect(per_ip.wssd.addr, &client, "/").await;
    let _b = ws_connect(per_ip.wssd.addr, &client, "/").await;
    assert!(
        tls_connect(per_ip.wssd.addr, &client).await.is_err(),
        "a third connection from one IP was served"
    );

    // A bucket of 2 (twice the rate), refilled at 1 per second: however long the 30
    // attempts take on a busy machine, at most 2 + that many seconds (rounded up) pass.
    let rate = Setup::start("handshake_rate_per_ip = 1", "");
    let client = rate.client();
    let started = Instant::now();
    let mut ok = 0u64;
    for _ in 0..30 {
        if tls_connect(rate.wssd.addr, &client).await.is_ok() {
            ok += 1;
        }
    }
    let refill = started.elapsed().as_secs_f64().ceil() as u64;
    assert!(
        ok >= 2 && ok <= 2 + refill,
        "a burst of 2, then 1 per second: {ok} of 30 got through in {refill} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_with_a_flooding_upstream_keeps_memory_flat() {
    // An upstream that floods every client with 64 KiB messages as fast as it can.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let flood = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let block = vec![0x5Au8; 64 * 1024];
                while ws.send(Message::binary(block.clone())).await.is_ok() {
                    counter.fetch_add(block.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let s = Setup::start(&format!("upstream = \"ws://{up}\""), "");
    let baseline = rss_kib(s.wssd.pid());
    let (mut ws, _) = ws_connect(s.wssd.addr, &s.client(), "/").await;
    // Read one message, then stop reading for a while: the upstream keeps pushing.
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.len(), 64 * 1024);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(s.wssd.pid());
    let pushed = sent.load(Ordering::Relaxed);
    // TCP buffers on both sides and one relay buffer hold what the client has not read;
    // wssd itself must not queue the flood.
    assert!(
        during < baseline + 16 * 1024,
        "RSS grew from {baseline} KiB to {during} KiB"
    );
    assert!(
        pushed < 64 << 20,
        "the upstream pushed {pushed} bytes: backpressure did not reach it"
    );
    // Reading resumes and the stream is intact.
    for _ in 0..20 {
        let m = ws.next().await.unwrap().unwrap();
        assert!(m.into_data().iter().all(|b| *b == 0x5A));
    }
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_get_pings_and_live_ones_stay() {
    let up = Upstream::start().await;
    for extra in [
        format!("upstream = \"ws://{}\"\nidle_timeout = \"2s\"", up.addr),
        "idle_timeout = \"2s\"".to_string(),
    ] {
        let s = Setup::start(&extra, "");
        let (mut ws, _) = ws_connect(s.wssd.addr, &s.client(), "/").await;
        // Silence: a ping arrives after about half of idle_timeout; answering it (tungstenite
        // does, on the next read) keeps the connection open well past idle_timeout.
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(payload))) => assert_eq!(payload.as_ref(), b"wssd"),
            other => panic!("{extra}: expected a keepalive ping, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(800));
        let keep_reading = async { while let Some(Ok(_)) = ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(3), keep_reading).await;
        echo(&mut ws, "alive after 3 s of an idle_timeout of 2 s")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_upstream_is_reported_to_the_client_with_1011() {
    // An upstream that completes the upgrade and then drops the TCP connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let _ = ws.next().await;
                drop(ws); // no close frame: the process "crashed"
            });
        }
    });
    let s = Setup::start(&format!("upstream = \"ws://{up}\""), "");
    let (mut ws, _) = ws_connect(s.wssd.addr, &s.client(), "/").await;
    ws.send(Message::text("bye")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected close 1011, got {other:?}"),
    }
}
