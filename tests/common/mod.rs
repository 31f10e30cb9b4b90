//! Shared test helpers: start the real `wssd` binary on `127.0.0.1:0`, make certificates
//! with a throwaway CA, and connect real TLS + WebSocket clients. Every process started
//! here is killed when its handle drops, also when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub mod acme_front;
pub mod browser;
pub mod edge;
pub mod etcd;
pub mod http_upstream;
pub mod pebble;

pub const WSSD: &str = env!("CARGO_BIN_EXE_wssd");

/// A running `wssd` process; killed on drop.
pub struct Wssd {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Runs a `wssd` command to completion with its own data dir (XDG_DATA_HOME).
pub fn wssd_cmd(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(WSSD)
        .args(args)
        .current_dir(home)
        .env("XDG_DATA_HOME", home.join("xdg"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run wssd")
}

/// Writes `config` to `dir/wssd.toml` and runs `wssd issue` on it, which must exit with
/// `code`; returns its stdout and stderr.
pub fn issue(dir: &Path, config: &str, code: i32) -> (String, String) {
    let out = wssd_cmd(dir, &["issue", "--config", &write_config(dir, config)]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stdout}{stderr}");
    (stdout, stderr)
}

impl Wssd {
    /// Writes `config` to `dir/wssd.toml` and runs `wssd run --config` on it, waiting for
    /// the "listening" line.
    pub fn start(dir: &Path, config: &str) -> Wssd {
        Wssd::start_with(dir, config, &[], &[])
    }

    /// Like `start`, with extra arguments before `run` and extra environment.
    pub fn start_with(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Wssd {
        let path = write_config(dir, config);
        let mut command = Command::new(WSSD);
        command.args(args).args(["run", "--config", &path]);
        for (k, v) in env {
            command.env(k, v);
        }
        Wssd::spawn_command(dir, &mut command)
    }

    /// The `addr=` of the first log line containing `needle`.
    pub fn logged_addr(&self, needle: &str) -> SocketAddr {
        self.logs()
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|rest| {
                rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
                    .find(|s| !s.is_empty())
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {needle:?} line with addr=:\n{}", self.logs()))
    }

    /// Runs `wssd ARGS` in `dir` and waits for the "listening" log line.
    pub fn spawn(dir: &Path, args: &[&str]) -> Wssd {
        Wssd::spawn_command(dir, Command::new(WSSD).args(args))
    }

    /// Runs `wssd` under `sh -c PREFIX exec wssd ARGS` (limits, signal dispositions).
    pub fn spawn_wrapped(dir: &Path, prefix: &str, args: &[&str]) -> Wssd {
        let script = format!("{prefix} exec \"$0\" \"$@\"");
        Wssd::spawn_command(
            dir,
            Command::new("sh").args(["-c", &script, WSSD]).args(args),
        )
    }

    fn spawn_command(dir: &Path, command: &mut Command) -> Wssd {
        let mut child = command
            .current_dir(dir)
            .env("XDG_DATA_HOME", dir.join("xdg"))
            .env("RUST_LOG", "wssd=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wssd");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut wssd = Wssd {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = wssd.logs().lines().find_map(|l| {
                let text = l.contains(": listening ") || l.contains("\"message\":\"listening\"");
                if !text {
                    return None;
                }
                l.split("addr=")
                    .nth(1)
                    .or_else(|| l.split("\"addr\":\"").nth(1))
                    .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
                    .and_then(|a| a.parse().ok())
            }) {
                wssd.addr = addr;
                return wssd;
            }
            if let Ok(Some(status)) = wssd.child.try_wait() {
                panic!(
                    "wssd exited with {status} before listening:\n{}",
                    wssd.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "wssd did not start:\n{}",
                wssd.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a real signal (`HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until at least `n` log lines contain `needle`.
    pub async fn wait_for_logs(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count_logs(needle) < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} log lines with {needle:?}, got {}:\n{}",
                self.count_logs(needle),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Wssd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect<R: std::io::Read + Send + 'static>(reader: R) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A throwaway CA for tests that need certificates the dev CA would not make
/// (expired ones, mismatched pairs).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A generated pair, PEM, with its serial (lowercase hex, as wssd prints it).
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        // A unique name: two CAs with one name make webpki try the wrong one's signature.
        let id: String = (0..4).map(|_| format!("{:02x}", rand_byte())).collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("wssd test CA {id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` valid from `from` to `to` (relative to now, in seconds).
    pub fn leaf_between(&self, names: &[&str], from: i64, to: i64) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = SystemTime::now();
        let at = |offset: i64| {
            if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            }
        };
        params.not_before = at(from).into();
        params.not_after = at(to).into();
        let mut serial = [0u8; 16];
        for b in serial.iter_mut() {
            *b = rand_byte();
        }
        serial[0] = 0x40 | (serial[0] & 0x3f);
        params.serial_number = Some(serial.to_vec().into());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// A client certificate (clientAuth) with common name `cn`.
    pub fn client(&self, cn: &str) -> Pair {
        self.client_with_names(cn, &[])
    }

    /// A client certificate (clientAuth) with common name `cn` and DNS names `dns`.
    pub fn client_with_names(&self, cn: &str, dns: &[&str]) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            serial: String::new(),
        }
    }

    /// A leaf for `names` valid for 90 days.
    pub fn leaf(&self, names: &[&str]) -> Pair {
        self.leaf_between(names, -60, 90 * 86_400)
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b[0]
}

/// A rustls client config trusting the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(wssd::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client config trusting `ca_pem` and presenting `client` (mTLS).
pub fn client_config_with_cert(ca_pem: &str, client: &Pair) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(wssd::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS handshake to `addr` for `localhost`, returning the stream and the leaf's serial.
pub async fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| {
            wssd::cert::inspect::CertSummary::from_der(leaf)
                .unwrap()
                .serial
        })
        .unwrap_or_default();
    Ok((tls, serial))
}

/// A TLS handshake to `addr` for `name`, returning the leaf's serial.
pub async fn served_serial_for(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tls = connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| {
            wssd::cert::inspect::CertSummary::from_der(leaf)
                .unwrap()
                .serial
        })
        .unwrap_or_default())
}

/// The serial a fresh handshake sees now.
pub async fn served_serial(addr: SocketAddr, config: &Arc<ClientConfig>) -> String {
    tls_connect(addr, config).await.expect("TLS handshake").1
}

/// Polls fresh handshakes until one sees `serial`.
pub async fn wait_for_serial(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    serial: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = served_serial(addr, config).await;
        if seen == serial {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {seen}, expected {serial}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket connection over TLS to `wss://localhost:PORT{path}`.
pub async fn ws_connect(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> (Wss, String) {
    let (tls, serial) = tls_connect(addr, config).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls)
        .await
        .expect("WebSocket upgrade");
    (ws, serial)
}

/// Sends `text` and expects it back.
pub async fn echo(ws: &mut Wss, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
            Some(Ok(Message::Text(t))) => {
                return Err(format!("expected {text:?}, got {:?}", t.as_str()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("expected {text:?}, got {other:?}")),
        }
    }
}

/// Clients echoing continuously until told to stop; each reports how many round trips
/// it made, or the first error.
pub struct Load {
    stop: Arc<AtomicBool>,
    echoes: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Result<u64, String>>>,
}

impl Load {
    pub async fn start(
        addr: std::net::SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        n: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (mut ws, _) = ws_connect(addr, config, &format!("/load/{i}")).await;
            let (stop, echoes) = (stop.clone(), echoes.clone());
            tasks.push(tokio::spawn(async move {
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    echo(&mut ws, &format!("client {i} message {count}")).await?;
                    count += 1;
                    echoes.fetch_add(1, Ordering::Relaxed);
                }
                // A clean close proves the connection was still whole at the end.
                ws.close(None).await.map_err(|e| format!("close: {e}"))?;
                while let Some(msg) = futures_util::StreamExt::next(&mut ws).await {
                    msg.map_err(|e| format!("after close: {e}"))?;
                }
                Ok(count)
            }));
        }
        Load {
            stop,
            echoes,
            tasks,
        }
    }

    /// Waits until the clients together complete `n` more round trips.
    pub async fn progress(&self, n: u64) {
        let start = self.echoes.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.echoes.load(Ordering::Relaxed) < start + n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "echo traffic stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients; every one must have echoed without a single error.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for (i, task) in self.tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(count) => {
                    assert!(count > 0, "client {i} never echoed");
                    total += count;
                }
                Err(e) => panic!("client {i} was disturbed: {e}"),
            }
        }
        total
    }
}

/// Writes `contents` to `path` by temp file + rename.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-test");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TOML config for one `files` certificate for localhost with the built-in echo.
pub fn files_config(dir: &Path, extra_listener: &str, extra_top: &str) -> String {
    format!(
        "{extra_top}\ndata_dir = \"{data}\"\n[listener]\nbind = \"127.0.0.1:0\"\n{extra_listener}\n\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"files\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
        data = dir.join("data").display(),
        cert = dir.join("tls").join("cert.pem").display(),
        key = dir.join("tls").join("key.pem").display(),
    )
}

/// Writes `pair` as `dir/tls/cert.pem` and `dir/tls/key.pem`.
pub fn write_pair(dir: &Path, pair: &Pair) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("cert.pem"), &pair.cert_pem).unwrap();
    std::fs::write(tls.join("key.pem"), &pair.key_pem).unwrap();
    tls
}

/// Writes `text` as `wssd.toml` in `dir`; returns its path for `--config`.
pub fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("wssd.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A plain HTTP GET (the admin server); returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample line of `series` (name and labels exactly) in a
/// Prometheus text exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
