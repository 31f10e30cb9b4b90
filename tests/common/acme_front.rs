//! A front for Pebble, for the ACME features Debian's Pebble 2.4 does not serve: ACME
//! Renewal Information (RFC 9773), profiles (`meta.profiles`), rate limits (429 with
//! `Retry-After`) and `alreadyReplaced`. Everything else goes to the real Pebble, which
//! still validates the challenges and issues the certificates.
//!
//! The front speaks HTTPS with Pebble's own certificate (so `[acme] ca_file` is the same),
//! and forwards each request with the client's `Host`: Pebble builds every URL it hands
//! out (directory, account, orders) from `Host`, so they all point at the front and the
//! JWS `url` a client signs matches what Pebble checks. One request per connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pebble::Pebble;

/// What the front adds, and what it saw. Tests change it while wssd runs.
#[derive(Default)]
pub struct FrontState {
    /// The suggested window for every certificate (none: no `renewalInfo` in the directory).
    pub ari_window: Option<(SystemTime, SystemTime)>,
    /// The `Retry-After` of renewal information, in seconds.
    pub ari_retry_after: u64,
    /// `meta.profiles` added to the directory (name, description).
    pub profiles: Vec<(String, String)>,
    /// The next this many newOrder requests are answered 429 rateLimited.
    pub rate_limit_orders: usize,
    /// The `Retry-After` of those 429s, in seconds.
    pub rate_limit_retry_after: u64,
    /// A newOrder that carries `replaces` is answered 409 alreadyReplaced.
    pub already_replaced: bool,
    /// The certificate identifiers renewal information was asked for, in order.
    pub ari_requests: Vec<String>,
    /// Every newOrder payload, in order, and when it came; with the front's answer when it
    /// answered itself (429, 409).
    pub orders: Vec<(serde_json::Value, SystemTime, Option<u16>)>,
}

pub struct Front {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FrontState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const ARI_PATH: &str = "/renewal-info";

impl Front {
    pub async fn start(pebble: &Pebble, state: FrontState) -> Front {
        let (cert, key) = pebble.tls_files();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(wssd::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let client = super::client_config(&std::fs::read_to_string(&pebble.tls_ca).unwrap());
        let upstream: SocketAddr = pebble
            .directory
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, client, state) = (acceptor.clone(), client.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((head, body)) = read_request(&mut tls).await else {
                        return;
                    };
                    let response = answer(&head, &body, addr, upstream, &client, &state).await;
                    let _ = tls.write_all(&response).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Front { addr, state, task }
    }

    /// The directory URL to give wssd.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.addr)
    }

    /// An `[acme]` section pointing at the front.
    pub fn acme_section(&self, pebble: &Pebble, challenge: &str, extra: &str) -> String {
        pebble
            .acme_section(challenge, extra)
            .replace(&pebble.directory, &self.directory())
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn response(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Front\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn problem(status: u16, kind: &str, detail: &str, retry_after: Option<u64>) -> Vec<u8> {
    let body = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status,
    })
    .to_string();
    let mut headers = vec![("Content-Type", "application/problem+json".to_string())];
    if let Some(secs) = retry_after {
        headers.push(("Retry-After", secs.to_string()));
    }
    response(status, &headers, body.as_bytes())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn answer(
    head: &str,
    body: &[u8],
    front: SocketAddr,
    pebble: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    state: &Mutex<FrontState>,
) -> Vec<u8> {
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method == "GET" && path.starts_with(ARI_PATH) {
        let mut s = state.lock().unwrap();
        s.ari_requests
            .push(path[ARI_PATH.len()..].trim_start_matches('/').to_string());
        let Some((start, end)) = s.ari_window else {
            return problem(404, "malformed", "no renewal information here", None);
        };
        let body = serde_json::json!({
            "suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}
        })
        .to_string();
        let headers = [
            ("Content-Type", "application/json".to_string()),
            ("Retry-After", s.ari_retry_after.to_string()),
        ];
        return response(200, &headers, body.as_bytes());
    }
    if method == "POST" && path.starts_with("/order-plz") {
        let payload = jws_payload(body);
        let refusal = {
            let mut s = state.lock().unwrap();
            let answered = if s.rate_limit_orders > 0 {
                s.rate_limit_orders -= 1;
                Some(429)
            } else if s.already_replaced && payload.get("replaces").is_some() {
                Some(409)
            } else {
                None
            };
            s.orders.push((payload, SystemTime::now(), answered));
            match answered {
                Some(429) => Some(problem(
                    429,
                    "rateLimited",
                    "too many new orders recently (the front)",
                    Some(s.rate_limit_retry_after),
                )),
                Some(_) => Some(problem(
                    409,
                    "alreadyReplaced",
                    "this certificate was already replaced (the front)",
                    None,
                )),
                None => None,
            }
        };
        if let Some(refusal) = refusal {
            return refusal;
        }
    }
    let forwarded = forward(head, body, pebble, client).await;
    if method == "GET" && path == "/dir" {
        return directory(&forwarded, front, &state.lock().unwrap());
    }
    forwarded
}

/// The JSON payload of a JWS request body (flattened JSON serialization).
fn jws_payload(body: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let jws: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let payload = jws["payload"].as_str().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Sends the request to Pebble as it came (its `Host` is the front's), on a connection of
/// its own; returns Pebble's whole response.
async fn forward(
    head: &str,
    body: &[u8],
    pebble: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Vec<u8> {
    let mut request: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    request.push_str("Connection: close\r\n\r\n");
    let tcp = TcpStream::connect(pebble).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    out
}

/// Pebble's directory with `renewalInfo` and `meta.profiles` added, as the front offers.
fn directory(raw: &[u8], front: SocketAddr, state: &FrontState) -> Vec<u8> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(&raw[end..])
    } else {
        raw[end..].to_vec()
    };
    let mut dir: serde_json::Value = serde_json::from_slice(&body).unwrap();
    if state.ari_window.is_some() {
        dir["renewalInfo"] = format!("https://{front}{ARI_PATH}").into();
    }
    if !state.profiles.is_empty() {
        let profiles: serde_json::Map<String, serde_json::Value> = state
            .profiles
            .iter()
            .map(|(n, d)| (n.clone(), d.clone().into()))
            .collect();
        dir["meta"]["profiles"] = profiles.into();
    }
    let text = dir.to_string();
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(nonce) = header(&head, "replay-nonce") {
        headers.push(("Replay-Nonce", nonce.to_string()));
    }
    response(200, &headers, text.as_bytes())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// The RFC 9773 identifier of the leaf in a PEM chain file: base64url(AKI keyIdentifier)
/// "." base64url(serial DER bytes).
pub fn ari_id(cert_file: &Path) -> String {
    use base64::Engine;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    let serial = leaf.tbs_certificate.raw_serial().to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b64.encode(aki), b64.encode(serial))
}

/// Waits until `check` holds for the front's state.
pub async fn wait_for(
    state: &Mutex<FrontState>,
    what: &str,
    timeout: Duration,
    check: impl Fn(&FrontState) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !check(&state.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the front never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
