//! wssd-loadgen: the client side of the benchmark suite (`bench/run`). Every mode prints
//! one JSON object on stdout. The same client drives wssd, nginx and HAProxy, so only the
//! server differs between runs.
//!
//! * `throughput`: N WebSockets, each sending a message and waiting for its echo, for a
//!   while; messages/s, MB/s, latency percentiles. With `--h2`, the WebSockets run over
//!   HTTP/2 (RFC 8441), `--per-conn` of them on each TLS connection.
//! * `connect`: new connections, each TCP + TLS + upgrade + one echo + close, with or
//!   without TLS session resumption; connections/s and latency percentiles.
//! * `idle`: opens N connections and holds them until stdin closes (the caller measures
//!   the server's memory meanwhile).
//! * `swap`: keeps L connections echoing while a command swaps the certificate K times;
//!   the time from the start of each swap to the first fresh handshake that sees the new
//!   serial, and the live connections lost.
//! * `startup`: runs a server command and times exec to the first successful handshake.
//! * `upstream`: the plain ws:// echo server behind every proxy under test.
//! * `http-upstream`: the plain HTTP/1.1 server behind the HTTP phases (h2load's GETs).

mod http;
mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser)]
struct Cli {
    /// wss://host:port/path of the server under test.
    #[arg(long, global = true, default_value = "wss://localhost:8443/")]
    url: String,
    /// The CA that signed the server's certificate.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Throughput {
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// WebSockets over HTTP/2 (RFC 8441 extended CONNECT) instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// With `--h2`: WebSockets per TLS connection.
        #[arg(long, default_value_t = 10)]
        per_conn: usize,
    },
    Connect {
        /// Connections in flight at once.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Resume TLS sessions (tickets) instead of full handshakes.
        #[arg(long)]
        resume: bool,
    },
    Idle {
        #[arg(long, default_value_t = 1000)]
        conns: usize,
    },
    Swap {
        #[arg(long, default_value_t = 1000)]
        live: usize,
        #[arg(long, default_value_t = 50)]
        swaps: usize,
        /// Where swap i's pair is: DIR/i/cert.pem and DIR/i/key.pem.
        #[arg(long)]
        cert_dir: PathBuf,
        /// Untimed preparation, run with `sh -c` and the swap number as `$1`.
        #[arg(long)]
        prepare_cmd: Option<String>,
        /// The timed swap: renames done here, `FROM:TO` with `{i}` for the swap number
        /// (in order: key first, then certificate).
        #[arg(long)]
        rename: Vec<String>,
        /// The timed swap: a command run with `sh -c` and the swap number as `$1`.
        #[arg(long)]
        swap_cmd: Option<String>,
        /// The timed swap: HAProxy's runtime API, `SOCKET:CRT_FILE` (set ssl cert + commit).
        #[arg(long)]
        haproxy: Option<String>,
    },
    Startup {
        /// The server command line, run directly (no shell).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A plain ws:// echo server: the upstream every proxy under test forwards to.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
    /// A plain HTTP/1.1 server answering every request with 200 and `--size` bytes.
    HttpUpstream {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: String,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

struct Target {
    host: String,
    port: u16,
    url: String,
    tls: Arc<ClientConfig>,
    /// The same, offering only h2 in ALPN.
    tls_h2: Arc<ClientConfig>,
}

impl Target {
    fn new(url: &str, ca: Option<&PathBuf>, resume: bool) -> Target {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().expect("a wss:// URL");
        let host = uri
            .host()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        let ca = ca.expect("--ca: the CA of the server's certificate");
        for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots
                .add(cert.expect("CA certificate"))
                .expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Target {
            host,
            port,
            url: url.to_string(),
            tls: Arc::new(config),
            tls_h2: Arc::new(h2),
        }
    }

    async fn tls(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone()).map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
    }

    async fn ws(&self) -> std::io::Result<Wss> {
        let tls = self.tls().await?;
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(std::io::Error::other)?;
        let (ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(std::io::Error::other)?;
        Ok(ws)
    }

    /// The serial of the leaf a fresh handshake sees.
    async fn serial(&self) -> std::io::Result<String> {
        let tls = self.tls().await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| std::io::Error::other("no certificate"))?;
        serial_of(leaf)
    }
}

fn serial_of(der: &[u8]) -> std::io::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(std::io::Error::other)?;
    let raw = cert.raw_serial();
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    Ok(raw[start..].iter().map(|b| format!("{b:02x}")).collect())
}

async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    payload: &[u8],
) -> Result<(), String> {
    ws.send(Message::binary(payload.to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if b.len() == payload.len() => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

fn percentiles(mut micros: Vec<u32>) -> serde_json::Value {
    micros.sort_unstable();
    let at = |p: f64| {
        micros
            .get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    serde_json::json!({ "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": at(1.0) })
}

fn merge(a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    let mut a = a.as_object().cloned().unwrap_or_default();
    a.extend(b.as_object().cloned().unwrap_or_default());
    serde_json::Value::Object(a)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let report = match cli.mode {
        Mode::Throughput {
            conns,
            size,
            secs,
            h2,
            per_conn,
        } => {
            let target = Target::new(&cli.url, cli.ca.as_ref(), false);
            if h2 {
                let mut sockets = Vec::with_capacity(conns);
                while sockets.len() < conns {
                    let n = per_conn.max(1).min(conns - sockets.len());
                    sockets.extend(
                        http::websockets_over_h2(
                            &target.host,
                            target.port,
                            &target.url,
                            target.tls_h2.clone(),
                            n,
                        )
                        .await
                        .expect("WebSockets over h2"),
                    );
                }
                throughput(sockets, size, secs).await
            } else {
                let mut sockets = Vec::with_capacity(conns);
                for _ in 0..conns {
                    sockets.push(target.ws().await.expect("connect"));
                }
                throughput(sockets, size, secs).await
            }
        }
        Mode::Connect {
            conns,
            secs,
            resume,
        } => connect(Target::new(&cli.url, cli.ca.as_ref(), resume), conns, secs).await,
        Mode::Idle { conns } => idle(Target::new(&cli.url, cli.ca.as_ref(), false), conns).await,
        Mode::Swap {
            live,
            swaps,
            cert_dir,
            prepare_cmd,
            rename,
            swap_cmd,
            haproxy,
        } => {
            let how = swap::SwapHow {
                prepare_cmd,
                rename,
                swap_cmd,
                haproxy,
            };
            swap::swap(
                Target::new(&cli.url, cli.ca.as_ref(), false),
                live,
                swaps,
                &how,
                &cert_dir,
            )
            .await
        }
        Mode::Startup { command } => {
            startup(Target::new(&cli.url, cli.ca.as_ref(), false), &command).await
        }
        Mode::Upstream { listen } => upstream(&listen).await,
        Mode::HttpUpstream { listen, size } => http::upstream(&listen, size).await,
    };
    println!("{report}");
}

async fn throughput<S>(
    sockets: Vec<WebSocketStream<S>>,
    size: usize,
    secs: u64,
) -> serde_json::Value
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let payload = Arc::new(vec![0x5Au8; size]);
    // A short warm-up, then the measured window.
    let warmup = Instant::now() + Duration::from_secs(1);
    let deadline = warmup + Duration::from_secs(secs);
    // The window's edges on stdout, so that bench/run.py samples the server's CPU over
    // exactly the messages counted here (not the connects and the warm-up).
    tokio::spawn(async move {
        tokio::time::sleep_until(warmup.into()).await;
        println!("{{\"window\":\"start\"}}");
        tokio::time::sleep_until(deadline.into()).await;
        println!("{{\"window\":\"end\"}}");
    });
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= deadline {
                        break;
                    }
                    echo_once(&mut ws, &payload).await.expect("echo");
                    if sent >= warmup {
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                }
                let _ = ws.close(None).await;
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let messages = all.len() as f64;
    let rate = messages / secs as f64;
    merge(
        serde_json::json!({
            "messages": all.len(),
            "msg_per_s": rate,
            "mb_per_s": rate * size as f64 / 1e6,
        }),
        percentiles(all),
    )
}

async fn connect(target: Target, conns: usize, secs: u64) -> serde_json::Value {
    let target = Arc::new(target);
    // Prime the session cache so that resumption starts with the first measured one.
    if let Ok(mut ws) = target.ws().await {
        let _ = echo_once(&mut ws, b"prime").await;
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let resumed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (target, resumed, failed) = (target.clone(), resumed.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let start = Instant::now();
                    let once = async {
                        let tls = target.tls().await.map_err(|e| e.to_string())?;
                        if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
                        {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        let request = target
                            .url
                            .as_str()
                            .into_client_request()
                            .map_err(|e| e.to_string())?;
                        let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
                            .await
                            .map_err(|e| e.to_string())?;
                        echo_once(&mut ws, b"hello").await?;
                        ws.close(None).await.map_err(|e| e.to_string())?;
                        while let Some(Ok(_)) = ws.next().await {}
                        Ok::<(), String>(())
                    };
                    match once.await {
                        Ok(()) => latencies
                            .push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let done = all.len();
    merge(
        serde_json::json!({
            "connections": done,
            "conn_per_s": done as f64 / secs as f64,
            "resumed": resumed.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
        }),
        percentiles(all),
    )
}

async fn idle(target: Target, conns: usize) -> serde_json::Value {
    let target = Arc::new(target);
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0usize;
    for batch in (0..conns).collect::<Vec<_>>().chunks(100) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| target.ws())).await;
        for ws in opened {
            match ws {
                Ok(ws) => held.push(ws),
                Err(_) => failed += 1,
            }
        }
    }
    // Tell the caller, then hold until it closes our stdin.
    println!(
        "{}",
        serde_json::json!({ "ready": held.len(), "failed": failed })
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
    serde_json::json!({ "held": held.len(), "failed": failed })
}

async fn startup(target: Target, command: &[String]) -> serde_json::Value {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("server command");
    let mut ms = None;
    while start.elapsed() < Duration::from_secs(10) {
        if target.tls().await.is_ok() {
            ms = Some(start.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    serde_json::json!({ "startup_ms": ms })
}

async fn upstream(listen: &str) -> serde_json::Value {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind the upstream");
    eprintln!(
        "upstream echo on ws://{}",
        listener.local_addr().expect("address")
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(16 * 1024)
                .write_buffer_size(0);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
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
}
