//! The `swap` mode: live connections keep echoing while the certificate is swapped, and
//! each swap is timed from its start to the first fresh handshake that sees the new
//! serial. How a swap is done is the caller's (wssd: renames; nginx: a command; HAProxy:
//! its runtime API).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;

use crate::{Target, echo_once, merge, percentiles, serial_of};

/// How to swap the certificate: an untimed preparation, then the timed swap itself.
pub struct SwapHow {
    pub prepare_cmd: Option<String>,
    pub rename: Vec<String>,
    pub swap_cmd: Option<String>,
    pub haproxy: Option<String>,
}

async fn sh(command: &str, i: usize) {
    let status = tokio::process::Command::new("sh")
        .args(["-c", command, "swap", &i.to_string()])
        .status()
        .await
        .expect("swap command");
    assert!(status.success(), "failed: {command} {i}");
}

/// HAProxy's runtime API: one command per connection.
async fn haproxy_command(socket: &str, command: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("HAProxy admin socket");
    stream.write_all(command.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

impl SwapHow {
    async fn run(&self, i: usize, cert_dir: &std::path::Path) {
        for pair in &self.rename {
            let (from, to) = pair.split_once(':').expect("--rename FROM:TO");
            std::fs::rename(
                from.replace("{i}", &i.to_string()),
                to.replace("{i}", &i.to_string()),
            )
            .expect("rename");
        }
        if let Some(command) = &self.swap_cmd {
            sh(command, i).await;
        }
        if let Some(spec) = &self.haproxy {
            let (socket, crt) = spec.split_once(':').expect("--haproxy SOCKET:CRT");
            let dir = cert_dir.join(i.to_string());
            let pem = std::fs::read_to_string(dir.join("cert.pem")).expect("cert")
                + &std::fs::read_to_string(dir.join("key.pem")).expect("key");
            let set = haproxy_command(
                socket,
                &format!("set ssl cert {crt} <<\n{}\n\n", pem.trim_end()),
            )
            .await;
            let commit = haproxy_command(socket, &format!("commit ssl cert {crt}\n")).await;
            assert!(commit.contains("Success"), "HAProxy: {set} / {commit}");
        }
    }
}

pub async fn swap(
    target: Target,
    live: usize,
    swaps: usize,
    how: &SwapHow,
    cert_dir: &std::path::Path,
) -> serde_json::Value {
    let target = Arc::new(target);
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let echoes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for batch in (0..live).collect::<Vec<_>>().chunks(100) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| target.ws())).await;
        for (i, ws) in opened.into_iter().enumerate() {
            let mut ws = ws.expect("live connection");
            let (stop, dropped, echoes) = (stop.clone(), dropped.clone(), echoes.clone());
            tasks.push(tokio::spawn(async move {
                let pause = Duration::from_millis(200 + (i as u64 * 37) % 600);
                while !stop.load(Ordering::Relaxed) {
                    if echo_once(&mut ws, b"live").await.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    echoes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                let _ = ws.close(None).await;
            }));
        }
    }
    let mut times = Vec::new();
    let mut timeouts = 0;
    for i in 1..=swaps {
        let pem =
            std::fs::read(cert_dir.join(i.to_string()).join("cert.pem")).expect("swap certificate");
        let leaf = CertificateDer::pem_slice_iter(&pem)
            .next()
            .expect("a certificate")
            .expect("PEM");
        let expected = serial_of(&leaf).expect("serial");
        if let Some(prepare) = &how.prepare_cmd {
            sh(prepare, i).await;
        }
        let start = Instant::now();
        how.run(i, cert_dir).await;
        loop {
            if target.serial().await.is_ok_and(|s| s == expected) {
                times.push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                timeouts += 1;
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    merge(
        serde_json::json!({
            "swaps": swaps,
            "seen": times.len(),
            "timeouts": timeouts,
            "live": live,
            "dropped": dropped.load(Ordering::Relaxed),
            "echoes": echoes.load(Ordering::Relaxed),
        }),
        percentiles(times),
    )
}
