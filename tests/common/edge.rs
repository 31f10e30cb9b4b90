//! Helpers for the edge tests (hardening, TLS policy): an upstream echo server that counts
//! its connections and keeps the last request's headers, wssd with a `files` certificate,
//! and raw requests over TLS.
#![allow(clippy::result_large_err)] // tungstenite's callback signature

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{TestCa, Wssd, client_config, files_config, write_pair};

/// An upstream echo server that counts its connections and remembers the last request's
/// headers.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    last_headers: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: TcpListener) -> Upstream {
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

    pub fn header(&self, name: &str) -> Vec<String> {
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

pub struct Setup {
    _dir: tempfile::TempDir,
    pub ca: TestCa,
    pub wssd: Wssd,
}

impl Setup {
    /// wssd with a `files` certificate; `tail` is appended to the config (more sections).
    pub fn start(listener_extra: &str, tail: &str) -> Setup {
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

    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.cert_pem)
    }
}

/// Sends a raw request over TLS and returns the response head and body.
pub async fn raw_request(
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

/// The headers of a valid WebSocket upgrade request.
pub const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// An upstream that answers every WebSocket upgrade with a valid 101 and keeps each
/// request head exactly as it arrived, bytes and all (header order, repeats, case).
pub struct RawUpstream {
    pub addr: SocketAddr,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
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
                    let key = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("sec-websocket-key")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    seen.lock().unwrap().push(head);
                    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                        key.as_bytes(),
                    );
                    let response = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    // Hold the connection until the peer goes.
                    let _ = stream.read(&mut chunk).await;
                });
            }
        });
        RawUpstream { addr, heads, task }
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The header lines of the last head called `name` (case-insensitive), values trimmed.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.heads()
            .last()
            .map(|head| {
                head.lines()
                    .skip(1)
                    .filter_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends a raw request over TLS and returns what came back within `wait` (the
/// connection may stay open, as after a 101).
pub async fn raw_exchange(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    request: &[u8],
    wait: Duration,
) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.starts_with(b"HTTP/1.1 101") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
