//! wssd under hostile clients and faults: origin checks before the upstream is touched,
//! strict upgrades, size and time limits (slowloris in TLS and in HTTP), connection caps,
//! backpressure against a flooding upstream, mTLS identity, keepalive, peers that vanish,
//! TLS profiles and resumption, and private files.

#![allow(clippy::result_large_err)] // tungstenite's callback signature

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An upstream echo server that counts its connections and remembers the last request's
/// headers.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    last_headers: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        Upstream::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn start_on(listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let last_headers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, headers) = (connections.clone(), last_headers.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let headers = headers.clone();
                tokio::spawn(async move {
                    let callback = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                         res: tokio_tungstenite::tungstenite::handshake::server::Response| {
                        *headers.lock().unwrap() = req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        Ok(res)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                        return;
                    };
                    let (tx, rx) = ws.split();
                    let _ = rx
                        .filter(|m| {
                            std::future::ready(matches!(
                                m,
                                Ok(Message::Text(_) | Message::Binary(_))
                            ))
                        })
                        .forward(tx)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            last_headers,
            task,
        }
    }

    fn header(&self, name: &str) -> Vec<String> {
        self.last_headers
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: TestCa,
    wssd: Wssd,
}

impl Setup {
    /// wssd with a `files` certificate; `tail` is appended to the config (more sections).
    fn start(listener_extra: &str, tail: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        write_pair(dir.path(), &ca.leaf(&["localhost"]));
        let config = format!("{}{tail}", files_config(dir.path(), listener_extra, ""));
        let wssd = Wssd::start(dir.path(), &config);
        Setup {
            _dir: dir,
            ca,
            wssd,
        }
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.cert_pem)
    }
}

/// Sends a raw request over TLS and returns the response head and body.
async fn raw_request(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    request: &[u8],
) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

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
        (
            "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
        ("\x16\x03\x01garbage\r\n\r\n".to_string(), "HTTP/1.1 400"),
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

    let rate = Setup::start("handshake_rate_per_ip = 5", "");
    let client = rate.client();
    let mut ok = 0;
    for _ in 0..30 {
        if tls_connect(rate.wssd.addr, &client).await.is_ok() {
            ok += 1;
        }
    }
    assert!(
        (10..=14).contains(&ok),
        "a burst of 10, then 5 per second: {ok} of 30 got through"
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
async fn mtls_required_refuses_anonymous_clients_and_passes_the_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let clients = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("clients.pem"), &clients.cert_pem).unwrap();
    let tls = format!(
        "[tls]\nclient_ca_file = \"{}\"\nclient_auth = \"required\"\n",
        dir.path().join("clients.pem").display()
    );
    let config = format!(
        "{}{tls}",
        files_config(dir.path(), &format!("upstream = \"ws://{}\"", up.addr), "")
    );
    let wssd = Wssd::start(dir.path(), &config);

    // No certificate: the handshake fails (or the connection dies right after it).
    let anonymous = client_config(&ca.cert_pem);
    let refused = async {
        let (tls, _) = tls_connect(wssd.addr, &anonymous).await?;
        let url = format!("wss://localhost:{}/", wssd.addr.port());
        tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(())
    };
    assert!(refused.await.is_err(), "an anonymous client got through");
    // A certificate from another CA is refused too.
    let stranger = client_config_with_cert(&ca.cert_pem, &TestCa::new().client("mallory"));
    assert!(
        tls_connect(wssd.addr, &stranger).await.is_err()
            || up.connections.load(Ordering::SeqCst) == 0
    );

    // A valid certificate: the upstream learns who it is, and a forged header is dropped.
    let alice = client_config_with_cert(&ca.cert_pem, &clients.client("alice"));
    let (tls, _) = tls_connect(wssd.addr, &alice).await.unwrap();
    let mut request = format!("wss://localhost:{}/", wssd.addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "x-forwarded-client-cert",
        "Hash=forged;Subject=\"CN=admin\"".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    echo(&mut ws, "hello as alice").await.unwrap();
    let identity = up.header("x-forwarded-client-cert");
    assert_eq!(
        identity.len(),
        1,
        "exactly one identity header: {identity:?}"
    );
    assert!(
        identity[0].contains("Subject=\"CN=alice\"") && identity[0].starts_with("Hash="),
        "{identity:?}"
    );
    assert!(!identity[0].contains("forged") && !identity[0].contains("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_lets_anonymous_clients_in_without_an_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("clients.pem"), TestCa::new().cert_pem).unwrap();
    let tls = format!(
        "[tls]\nclient_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
        dir.path().join("clients.pem").display()
    );
    let config = format!(
        "{}{tls}",
        files_config(dir.path(), &format!("upstream = \"ws://{}\"", up.addr), "")
    );
    let wssd = Wssd::start(dir.path(), &config);
    let (tls, _) = tls_connect(wssd.addr, &client_config(&ca.cert_pem))
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}/", wssd.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    echo(&mut ws, "anonymous").await.unwrap();
    assert!(
        up.header("x-forwarded-client-cert").is_empty(),
        "a forged identity reached the upstream"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_profiles_set_the_versions_and_sessions_resume() {
    let versions = |v: &[&'static rustls::SupportedProtocolVersion], ca: &str| {
        let mut roots = rustls::RootCertStore::empty();
        for c in pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(wssd::tls::provider())
                .with_protocol_versions(v)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    let intermediate = Setup::start("", "");
    let tls12 = versions(&[&rustls::version::TLS12], &intermediate.ca.cert_pem);
    assert!(
        tls_connect(intermediate.wssd.addr, &tls12).await.is_ok(),
        "intermediate offers TLS 1.2"
    );

    let modern = Setup::start("", "[tls]\nprofile = \"modern\"\n");
    let tls12 = versions(&[&rustls::version::TLS12], &modern.ca.cert_pem);
    assert!(
        tls_connect(modern.wssd.addr, &tls12).await.is_err(),
        "modern must refuse TLS 1.2"
    );
    let tls13 = versions(&[&rustls::version::TLS13], &modern.ca.cert_pem);
    assert!(tls_connect(modern.wssd.addr, &tls13).await.is_ok());

    // A second connection with the same client config resumes (stateless tickets).
    let client = intermediate.client();
    let (mut first, _) = tls_connect(intermediate.wssd.addr, &client).await.unwrap();
    // TLS 1.3 tickets arrive after the handshake: read until they are processed.
    let _ = tokio::time::timeout(Duration::from_millis(300), first.read(&mut [0u8; 1])).await;
    let (second, _) = tls_connect(intermediate.wssd.addr, &client).await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // openssl agrees: nothing below TLS 1.2, no CBC suites.
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &intermediate.wssd.addr.to_string(),
                "-servername",
                "localhost",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    assert!(!openssl(&["-tls1_1"]).status.success(), "TLS 1.1 accepted");
    assert!(
        !openssl(&[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256"
        ])
        .status
        .success(),
        "a CBC or non-ECDHE suite accepted"
    );
    assert!(
        openssl(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
            .status
            .success()
    );
}

#[test]
fn an_open_private_key_stops_startup_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\nca_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
        dir.path().join("data").display(),
        dir.path().join("ca").display()
    );
    let path = dir.path().join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    // A first pass makes the key, private.
    assert!(
        wssd_cmd(dir.path(), &["issue", "--config", path.to_str().unwrap()])
            .status
            .success()
    );
    let key = dir.path().join("data/certs/localhost/key.pem");
    use std::os::unix::fs::PermissionsExt;
    let real = std::fs::canonicalize(&key).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = wssd_cmd(dir.path(), &["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())) && err.contains("mode 644"),
        "{err}"
    );
}
