//! `wssd probe`: connect to a `wss://` (or `ws://`) URL the way a client would and report
//! what happened at each step: TCP connect, TLS (version, suite, ALPN, the chain the
//! server sent, handshake time), the HTTP upgrade, and optionally an echo round trip.
//!
//! The chain is recorded by the certificate verifier itself, before it decides, so the
//! report shows what the server sent even when verification fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cert::inspect::CertSummary;

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub url: String,
    /// Trust these roots instead of the system's.
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (the chain is still reported).
    pub insecure: bool,
    /// Send this text and expect it back.
    pub send: Option<String>,
    pub timeout: Duration,
    /// Fail when the served certificate expires within this many days.
    pub expect_days: Option<u32>,
    /// The `Origin` to send with the upgrade (none by default, like a non-browser client).
    pub origin: Option<String>,
    /// More request headers for the upgrade, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Connect here instead of the URL's host and port (TLS name and `Host` stay the
    /// URL's), like curl's `--connect-to`.
    pub connect_to: Option<(String, u16)>,
}

/// What can be told wrong before connecting: the URL, the CA file, the headers. A probe
/// with bad arguments makes no connection.
pub fn check_options(opts: &ProbeOptions) -> Result<(), String> {
    parse_url(&opts.url)?;
    if let Some(ca) = &opts.ca {
        // Read as the probe will read it: a file that is there but unreadable, or holds
        // no certificate, is a bad argument too.
        crate::tls::add_pem_roots(&mut RootCertStore::empty(), ca)
            .map_err(|reason| format!("--ca {}: {reason}", ca.display()))?;
    }
    for (name, value) in &opts.headers {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("--header {name:?}: not a header name"))?;
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("--header {name}: not a valid header value"))?;
    }
    if let Some(origin) = &opts.origin {
        http::HeaderValue::from_str(origin)
            .map_err(|_| format!("--origin {origin:?}: not a valid header value"))?;
    }
    Ok(())
}

/// `NAME: VALUE`, for `--header`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected NAME: VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?}: no header name before the colon"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// `HOST:PORT` (or `[IPV6]:PORT`), for `--connect-to`.
pub fn parse_connect_to(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?}: no host"));
    }
    Ok((host.to_string(), port))
}

/// One certificate of the peer's chain, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PeerCertificate {
    #[serde(flatten)]
    pub summary: CertSummary,
    pub days_left: i64,
}

/// Everything `probe` found. `error` is set when a step failed; the steps before it are
/// filled in.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub url: String,
    pub address: Option<String>,
    pub connect_ms: Option<f64>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub alpn: Option<String>,
    pub handshake_ms: Option<f64>,
    pub upgrade_status: Option<u16>,
    pub subprotocol: Option<String>,
    pub echo_ok: Option<bool>,
    pub echo_ms: Option<f64>,
    pub peer_certificates: Vec<PeerCertificate>,
    pub error: Option<String>,
}

impl ProbeReport {
    /// Did every asked-for step succeed?
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.upgrade_status == Some(101) && self.echo_ok != Some(false)
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = format!("probe {}\n", self.url);
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or_default();
        if let Some(addr) = &self.address {
            out.push_str(&format!("  connect    {addr} in {}\n", ms(self.connect_ms)));
        }
        if let Some(version) = &self.tls_version {
            out.push_str(&format!(
                "  tls        {version}, {}, ALPN {}, handshake {}\n",
                self.cipher_suite.as_deref().unwrap_or("?"),
                self.alpn.as_deref().unwrap_or("none"),
                ms(self.handshake_ms)
            ));
        }
        for (i, cert) in self.peer_certificates.iter().enumerate() {
            let s = &cert.summary;
            out.push_str(&format!("  cert[{i}]    {}\n", s.subject));
            out.push_str(&format!("             issuer  {}\n", s.issuer));
            out.push_str(&format!("             serial  {}\n", s.serial));
            let names = s.names();
            if !names.is_empty() {
                out.push_str(&format!("             names   {names}\n"));
            }
            out.push_str(&format!(
                "             valid   {} .. {} ({} days left)\n",
                crate::cert::inspect::rfc3339(s.not_before),
                crate::cert::inspect::rfc3339(s.not_after),
                cert.days_left
            ));
        }
        if let Some(status) = self.upgrade_status {
            out.push_str(&format!(
                "  upgrade    {status} {}{}\n",
                crate::server::http::reason_phrase(status),
                self.subprotocol
                    .as_ref()
                    .map(|p| format!(", subprotocol {p}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(ok) = self.echo_ok {
            out.push_str(&format!(
                "  echo       {} {}\n",
                if ok { "ok" } else { "MISMATCH" },
                ms(self.echo_ms)
            ));
        }
        match &self.error {
            None => out.push_str("  result     ok\n"),
            Some(e) => out.push_str(&format!("  result     FAILED: {e}\n")),
        }
        out
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Runs the probe; never fails, the report says what went wrong.
pub async fn probe(opts: &ProbeOptions) -> ProbeReport {
    let mut report = ProbeReport {
        url: opts.url.clone(),
        address: None,
        connect_ms: None,
        tls_version: None,
        cipher_suite: None,
        alpn: None,
        handshake_ms: None,
        upgrade_status: None,
        subprotocol: None,
        echo_ok: None,
        echo_ms: None,
        peer_certificates: Vec::new(),
        error: None,
    };
    let run = run(opts, &mut report);
    match tokio::time::timeout(opts.timeout, run).await {
        Ok(Ok(())) => {
            if let (Some(days), Some(leaf)) = (opts.expect_days, report.peer_certificates.first())
                && leaf.days_left < i64::from(days)
            {
                report.error = Some(format!(
                    "the certificate expires in {} days ({}), within the {days} days of --expect-days",
                    leaf.days_left,
                    crate::cert::inspect::rfc3339(leaf.summary.not_after)
                ));
            }
        }
        Ok(Err(e)) => report.error = Some(e),
        Err(_) => {
            let step = if report.address.is_none() {
                "connecting"
            } else if report.tls_version.is_none() && opts.url.starts_with("wss") {
                "in the TLS handshake"
            } else if report.upgrade_status.is_none() {
                "waiting for the upgrade response"
            } else {
                "waiting for the echo"
            };
            report.error = Some(format!("timed out after {:?} {step}", opts.timeout));
        }
    }
    report
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("wss") | Some("https") => true,
        Some("ws") | Some("http") => false,
        _ => return Err(format!("{url:?}: the URL must start with wss:// or ws://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?}: no host in the URL"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { tls, host, port })
}

async fn run(opts: &ProbeOptions, report: &mut ProbeReport) -> Result<(), String> {
    let target = parse_url(&opts.url)?;
    // tungstenite wants ws(s)://; only the scheme changes, never the rest of the URL.
    let url = match opts.url.split_once("://") {
        Some((_, rest)) => format!("{}://{rest}", if target.tls { "wss" } else { "ws" }),
        None => opts.url.clone(),
    };
    let started = Instant::now();
    let (host, port) = match &opts.connect_to {
        Some((host, port)) => (host.as_str(), *port),
        None => (target.host.as_str(), target.port),
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    report.connect_ms = Some(millis(started.elapsed()));
    report.address = tcp.peer_addr().ok().map(|a: SocketAddr| a.to_string());
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return upgrade(tcp, &url, opts, report).await.map_err(|e| {
            if report.upgrade_status.is_none() {
                format!("{e} (if {host}:{port} is a TLS port, use wss://)")
            } else {
                e
            }
        });
    }

    let verifier = Arc::new(RecordingVerifier::new(opts)?);
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![crate::tls::ALPN_HTTP11.to_vec()];
    let server_name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{:?} is not a valid server name: {e}", target.host))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = Instant::now();
    let handshake = connector.connect(server_name, tcp).await;
    report.peer_certificates = verifier.seen();
    let tls = handshake.map_err(|e| describe_tls_error(&e, opts, &target.host))?;
    report.handshake_ms = Some(millis(started.elapsed()));
    let (_, conn) = tls.get_ref();
    report.tls_version = conn.protocol_version().map(|v| format!("{v:?}"));
    report.cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    report.alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    upgrade(tls, &url, opts, report).await
}

async fn upgrade<S>(
    stream: S,
    url: &str,
    opts: &ProbeOptions,
    report: &mut ProbeReport,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let headers = request.headers_mut();
    for (name, value) in opts
        .origin
        .iter()
        .map(|o| ("origin", o.as_str()))
        .chain(opts.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        // (Checked before connecting: check_options.)
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let (mut ws, response) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(WsError::Http(response)) => {
            report.upgrade_status = Some(response.status().as_u16());
            let hint = match (response.status().as_u16(), &opts.origin) {
                (403, None) => " (wssd answers 403 to a WebSocket whose Origin is not in allowed_origins; probe sends none unless told: pass --origin with the page's origin, e.g. --origin https://app.example.com)".to_string(),
                (403, Some(origin)) => format!(" (is {origin} in the server's allowed_origins?)"),
                _ => String::new(),
            };
            return Err(format!(
                "the server refused the WebSocket upgrade with HTTP {}{hint}",
                response.status()
            ));
        }
        Err(e) => return Err(format!("WebSocket upgrade failed: {e}")),
    };
    report.upgrade_status = Some(response.status().as_u16());
    report.subprotocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(text) = &opts.send {
        let started = Instant::now();
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| format!("sending the echo message failed: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(reply))) => {
                    report.echo_ok = Some(reply.as_str() == text);
                    break;
                }
                Some(Ok(Message::Binary(reply))) => {
                    report.echo_ok = Some(reply.as_ref() == text.as_bytes());
                    break;
                }
                Some(Ok(Message::Close(frame))) => {
                    report.echo_ok = Some(false);
                    return Err(format!(
                        "the server closed the connection instead of echoing: {frame:?}"
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    report.echo_ok = Some(false);
                    return Err(format!("waiting for the echo failed: {e}"));
                }
                None => {
                    report.echo_ok = Some(false);
                    return Err("the connection ended before the echo came back".into());
                }
            }
        }
        report.echo_ms = Some(millis(started.elapsed()));
        if report.echo_ok == Some(false) {
            return Err("the echoed message differs from the one sent".into());
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(())
}

fn describe_tls_error(e: &std::io::Error, opts: &ProbeOptions, host: &str) -> String {
    let Some(rustls_error) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {e}");
    };
    let roots = match &opts.ca {
        Some(ca) => format!("the CA in {}", ca.display()),
        None => "the system's trusted CAs".to_string(),
    };
    if let rustls::Error::InvalidMessage(_) = rustls_error {
        return format!(
            "TLS handshake failed: {rustls_error} (the server did not answer in TLS: if this is a plain port, use ws://)"
        );
    }
    let hint = match rustls_error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => format!(
            " (the server's certificate is not signed by {roots}; pass its CA with --ca FILE, or --insecure to skip verification)"
        ),
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            ..
        }) => {
            format!(" (the certificate does not cover {host:?})")
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. }) => {
            " (the certificate has expired)".to_string()
        }
        _ => String::new(),
    };
    format!("TLS certificate verification failed: {rustls_error}{hint}")
}

/// Verifies the server's chain against the chosen roots (or not at all with
/// `--insecure`), recording it first. Handshake signatures are always checked.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
}

impl RecordingVerifier {
    fn new(opts: &ProbeOptions) -> Result<RecordingVerifier, String> {
        if opts.insecure {
            return Ok(RecordingVerifier {
                inner: None,
                seen: Mutex::new(Vec::new()),
            });
        }
        let mut roots = RootCertStore::empty();
        match &opts.ca {
            Some(path) => crate::tls::add_pem_roots(&mut roots, path)
                .map_err(|reason| format!("CA file {}: {reason}", path.display()))?,
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(
                        "no trusted CA certificates found on this system; pass --ca FILE".into(),
                    );
                }
            }
        }
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()
                .map_err(|e| e.to_string())?;
        Ok(RecordingVerifier {
            inner: Some(inner),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<PeerCertificate> {
        let now = SystemTime::now();
        self.seen
            .lock()
            .map(|chain| chain.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|der| CertSummary::from_der(der).ok())
            .map(|summary| PeerCertificate {
                days_left: summary.days_left(now),
                summary,
            })
            .collect()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        match &self.inner {
            Some(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
