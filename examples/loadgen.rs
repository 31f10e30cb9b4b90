//! A small WebSocket load generator: N connections, each sending a message of SIZE bytes
//! and waiting for its echo, for DURATION. Prints messages/s, MB/s and latency
//! percentiles as one JSON line.
//!
//!     cargo run --release --example loadgen -- wss://localhost:8443/ --ca ca.pem --conns 50 --size 64 --secs 10

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    url: String,
    ca: Option<String>,
    conns: usize,
    size: usize,
    secs: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: String::new(),
        ca: None,
        conns: 50,
        size: 64,
        secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--ca" => args.ca = Some(value()),
            "--conns" => args.conns = value().parse().expect("--conns N"),
            "--size" => args.size = value().parse().expect("--size BYTES"),
            "--secs" => args.secs = value().parse().expect("--secs N"),
            url => args.url = url.to_string(),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let uri: tokio_tungstenite::tungstenite::http::Uri = args.url.parse().expect("URL");
    let host = uri.host().unwrap_or("localhost").to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tls = uri.scheme_str() == Some("wss");
    let connector = args.ca.as_ref().map(|ca| {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(c.expect("CA cert")).expect("CA cert");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(wssd::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    });
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let payload = vec![b'x'; args.size];
    let mut tasks = Vec::new();
    for _ in 0..args.conns {
        let (host, url, payload, connector) = (
            host.clone(),
            args.url.clone(),
            payload.clone(),
            connector.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .expect("connect");
            tcp.set_nodelay(true).ok();
            let mut latencies = Vec::new();
            macro_rules! drive {
                ($stream:expr) => {{
                    let (mut ws, _) = tokio_tungstenite::client_async(
                        url.into_client_request().unwrap(),
                        $stream,
                    )
                    .await
                    .expect("upgrade");
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        ws.send(Message::binary(payload.clone()))
                            .await
                            .expect("send");
                        loop {
                            match ws.next().await {
                                Some(Ok(Message::Binary(b))) => {
                                    assert_eq!(b.len(), payload.len());
                                    break;
                                }
                                Some(Ok(_)) => continue,
                                other => panic!("connection lost: {other:?}"),
                            }
                        }
                        latencies.push(sent.elapsed());
                    }
                    let _ = ws.close(None).await;
                }};
            }
            match (tls, connector) {
                (true, Some(c)) => {
                    let s = c
                        .connect(ServerName::try_from(host.clone()).unwrap(), tcp)
                        .await
                        .expect("TLS");
                    drive!(s)
                }
                _ => drive!(tcp),
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let rate = all.len() as f64 / args.secs as f64;
    println!(
        "{{\"messages\":{},\"msg_per_s\":{:.0},\"mb_per_s\":{:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3}}}",
        all.len(),
        rate,
        rate * args.size as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
}
