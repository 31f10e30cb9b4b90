//! Load with faults: 2,000 live connections (1,000 proxied, 1,000 to the echo service of a
//! second wssd on the same certificate files) while the certificate is swapped 50 times
//! and the upstream restarts once. Only the proxied connections, whose upstream went
//! away, are closed, and with a close frame (1011), not a reset; everything else keeps
//! echoing; memory comes back down afterwards.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const PER_SERVER: usize = 1000;
const SWAPS: usize = 50;

/// An upstream echo server that can die (every connection dropped without a close frame,
/// as when its process is killed) and come back on the same port.
struct Upstream {
    port: u16,
    alive: CancellationToken,
}

impl Upstream {
    async fn start(port: u16) -> Upstream {
        // Coming back on the same port: the old listener closes when its task next runs,
        // which on a loaded machine can be a while after `kill`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(_) if port != 0 && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on port {port}: {e}"),
            }
        };
        let port = listener.local_addr().unwrap().port();
        let alive = CancellationToken::new();
        let token = alive.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => return },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let (tx, rx) = ws.split();
                    let echo = rx
                        .filter(|m| {
                            std::future::ready(matches!(
                                m,
                                Ok(Message::Text(_) | Message::Binary(_))
                            ))
                        })
                        .forward(tx);
                    tokio::select! { _ = token.cancelled() => {}, _ = echo => {} }
                });
            }
        });
        Upstream { port, alive }
    }

    fn kill(&self) {
        self.alive.cancel();
    }
}

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq)]
enum Ended {
    StillEchoing,
    Closed(u16),
    Broken(String),
}

fn replace_pair(tls: &Path, pair: &Pair) {
    replace_file(&tls.join("key.pem"), &pair.key_pem);
    replace_file(&tls.join("cert.pem"), &pair.cert_pem);
}

fn config(dir: &Path, tls: &Path, extra: &str) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\nmax_connections = 5000\n{extra}\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"files\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("data").display(),
        tls.join("cert.pem").display(),
        tls.join("key.pem").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_through_swaps_and_an_upstream_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let tls = write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let upstream = Upstream::start(0).await;
    let (proxy_dir, echo_dir) = (dir.path().join("proxy"), dir.path().join("echo"));
    std::fs::create_dir_all(&proxy_dir).unwrap();
    std::fs::create_dir_all(&echo_dir).unwrap();
    let proxy = Wssd::start(
        &proxy_dir,
        &config(
            &proxy_dir,
            &tls,
            &format!("upstream = \"ws://127.0.0.1:{}\"", upstream.port),
        ),
    );
    let echo_server = Wssd::start(&echo_dir, &config(&echo_dir, &tls, ""));
    let client = client_config(&ca.cert_pem);
    let baseline = (rss_kib(proxy.pid()), rss_kib(echo_server.pid()));

    // 2,000 connections, each echoing now and then until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (server, label) in [(proxy.addr, "proxy"), (echo_server.addr, "echo")] {
        for batch in 0..PER_SERVER / 50 {
            let connects = (0..50).map(|_| ws_connect(server, &client, "/"));
            for (i, (mut ws, _)) in futures_util::future::join_all(connects)
                .await
                .into_iter()
                .enumerate()
            {
                let (stop, echoes) = (stop.clone(), echoes.clone());
                let id = batch * 50 + i;
                clients.push((
                    label,
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                let _ = ws.close(None).await;
                                while let Some(Ok(_)) = ws.next().await {}
                                return Ended::StillEchoing;
                            }
                            let text = format!("{label} {id} {n}");
                            if let Err(e) = ws.send(Message::text(text.clone())).await {
                                return Ended::Broken(format!("send: {e}"));
                            }
                            match ws.next().await {
                                Some(Ok(Message::Text(t))) if t.as_str() == text => {}
                                Some(Ok(Message::Close(frame))) => {
                                    while let Some(Ok(_)) = ws.next().await {}
                                    return Ended::Closed(
                                        frame.map(|f| u16::from(f.code)).unwrap_or(1005),
                                    );
                                }
                                other => return Ended::Broken(format!("{other:?}")),
                            }
                            echoes.fetch_add(1, Ordering::Relaxed);
                            n += 1;
                            tokio::time::sleep(Duration::from_millis(300 + (id as u64 * 7) % 700))
                                .await;
                        }
                    }),
                ));
            }
        }
    }
    let peak = (rss_kib(proxy.pid()), rss_kib(echo_server.pid()));

    let mut restarted = None;
    for swap in 1..=SWAPS {
        let next = ca.leaf(&["localhost"]);
        replace_pair(&tls, &next);
        wait_for_serial(proxy.addr, &client, &next.serial, Duration::from_secs(20)).await;
        wait_for_serial(
            echo_server.addr,
            &client,
            &next.serial,
            Duration::from_secs(20),
        )
        .await;
        if swap == SWAPS / 2 {
            upstream.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            restarted = Some(Upstream::start(upstream.port).await);
        }
    }
    let _restarted = restarted.unwrap();

    // New proxied connections work against the restarted upstream.
    let (mut fresh, _) = ws_connect(proxy.addr, &client, "/").await;
    echo(&mut fresh, "after the restart").await.unwrap();
    drop(fresh);

    let before_stop = echoes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        echoes.load(Ordering::Relaxed) > before_stop + 500,
        "echo traffic stalled"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut proxied, mut echoed) = (Vec::new(), Vec::new());
    for (label, task) in clients {
        let ended = task.await.unwrap();
        if label == "proxy" {
            proxied.push(ended)
        } else {
            echoed.push(ended)
        }
    }
    let broken: Vec<_> = proxied
        .iter()
        .chain(&echoed)
        .filter(|e| matches!(e, Ended::Broken(_)))
        .collect();
    assert!(
        broken.is_empty(),
        "{} connections were broken, not closed: {:?}",
        broken.len(),
        &broken[..broken.len().min(5)]
    );
    assert!(
        proxied.iter().all(|e| *e == Ended::Closed(1011)),
        "every proxied connection lost its upstream and was closed with 1011: {:?}",
        proxied.iter().find(|e| **e != Ended::Closed(1011))
    );
    assert!(
        echoed.iter().all(|e| *e == Ended::StillEchoing),
        "an echo connection was closed: {:?}",
        echoed.iter().find(|e| **e != Ended::StillEchoing)
    );
    assert_eq!(
        proxy.count_logs("certificate refused") + echo_server.count_logs("certificate refused"),
        0
    );

    // With the connections gone, memory comes back down (the allocator returns freed
    // pages after a decay of about ten seconds).
    let back_down =
        |pid: u32, b: u64, p: u64| rss_kib(pid) <= b + p.saturating_sub(b) / 4 + 4 * 1024;
    for _ in 0..30 {
        if back_down(proxy.pid(), baseline.0, peak.0)
            && back_down(echo_server.pid(), baseline.1, peak.1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = (rss_kib(proxy.pid()), rss_kib(echo_server.pid()));
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    eprintln!(
        "open fds after: proxy {} echo {}",
        fds(proxy.pid()),
        fds(echo_server.pid())
    );
    eprintln!(
        "RSS KiB baseline {baseline:?}, with 1,000 connections each {peak:?}, after {after:?}"
    );
    for (b, p, a) in [(baseline.0, peak.0, after.0), (baseline.1, peak.1, after.1)] {
        assert!(
            a <= b + p.saturating_sub(b) / 4 + 4 * 1024,
            "RSS stayed up: baseline {b}, peak {p}, after {a} KiB"
        );
    }
}
