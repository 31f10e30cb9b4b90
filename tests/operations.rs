//! What operators look at: /metrics, /healthz and /readyz on the admin server, the
//! systemd notify protocol, JSON logs, and the monitoring side of `wssd probe`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pebble::{Pebble, PebbleOptions};
use common::*;

fn admin_config(dir: &std::path::Path) -> String {
    files_config(dir, "", "") + "\n[admin]\nbind = \"127.0.0.1:0\"\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_certificate_swaps_refusals_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &first);
    let wssd = Wssd::start(dir.path(), &admin_config(dir.path()));
    let admin = wssd.logged_addr("admin server listening");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);

    let client = client_config(&ca.cert_pem);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws_connect(wssd.addr, &client, "/").await.0);
    }
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_connections_active"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "wssd_connections_active_by_certificate{certificate=\"0\",domains=\"localhost\"}"
        ),
        Some(3.0)
    );
    let leaf = wssd::cert::inspect::CertSummary::from_der(
        &pki_types::pem::PemObject::from_pem_slice(first.cert_pem.as_bytes())
            .map(|c: pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap(),
    )
    .unwrap();
    let not_after = leaf.not_after.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(
        sample(
            &metrics,
            "wssd_certificate_not_after_seconds{domain=\"localhost\"}"
        ),
        Some(not_after)
    );
    assert_eq!(
        sample(&metrics, "wssd_certificate_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "wssd_certificate_reloads_total{result=\"error\"}"),
        Some(0.0)
    );
    let days = metrics
        .lines()
        .find(|l| l.starts_with("wssd_certificate_days_left"))
        .unwrap();
    // The leaf has 90 days minus a minute to go.
    let left: f64 = days.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(days.contains("certificate=\"0\""), "{days}");
    assert!((89.9..90.0).contains(&left), "{days}");
    assert!(sample(&metrics, "wssd_tls_handshake_duration_seconds_count").unwrap() >= 3.0);
    // The three 101s of the echo, wssd's own.
    assert_eq!(
        sample(
            &metrics,
            "wssd_http_responses_total{code=\"101\",by=\"wssd\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    // Process metrics, under their standard names.
    assert!(
        sample(&metrics, "process_resident_memory_bytes").unwrap() > 1e6,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "process_open_fds").unwrap() >= 5.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "process_cpu_seconds_total").is_some(),
        "{metrics}"
    );
    let started = sample(&metrics, "process_start_time_seconds").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 120.0..=now + 2.0).contains(&started),
        "{started} vs {now}"
    );
    // A plain GET is a 426, counted.
    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tls, _) = tls_connect(wssd.addr, &client).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "wssd_http_responses_total{code=\"426\",by=\"wssd\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // A swap moves the ok counter and the expiry; a refused pair moves the error counter.
    let second = ca.leaf_between(&["localhost"], -60, 30 * 86_400);
    replace_file(&tls.join("key.pem"), &second.key_pem);
    replace_file(&tls.join("cert.pem"), &second.cert_pem);
    wait_for_serial(wssd.addr, &client, &second.serial, Duration::from_secs(10)).await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_certificate_reloads_total{result=\"ok\"}"),
        Some(2.0)
    );
    let expiry = sample(
        &metrics,
        "wssd_certificate_not_after_seconds{domain=\"localhost\"}",
    )
    .unwrap();
    // The swap came from a file change: its time to served is in the histogram, with
    // the certificate's labels.
    assert!(
        sample(
            &metrics,
            "wssd_certificate_file_to_served_seconds_count{certificate=\"0\",domains=\"localhost\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        expiry < not_after - 50.0 * 86_400.0,
        "the new certificate's not_after"
    );
    replace_file(&tls.join("cert.pem"), "not a certificate\n");
    wssd.wait_for_logs("certificate refused", 1, Duration::from_secs(15))
        .await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_certificate_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert!(sample(&metrics, "wssd_watcher_events_total").unwrap() >= 2.0);

    // Connections closed are connections no longer active.
    for mut ws in clients.drain(..) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        if sample(&metrics, "wssd_connections_active") == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_certificates_load_and_once_they_expire() {
    // An ACME certificate whose dns-01 hook waits for a gate file: not ready until then.
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let log = dir.path().join("hook.log");
    let real_hook = pebble.dns_hook(dir.path(), &log);
    let gate = dir.path().join("gate");
    let hook = dir.path().join("gated-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\nexec {} \"$@\"\n",
            gate.display(),
            real_hook.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"ready.example.test\"]\nsource = \"acme\"\n{}",
        dir.path().join("data").display(),
        pebble.acme_section("dns-01", &format!("dns01_hook = \"{}\"", hook.display()))
    );
    let wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("certificate[0] (ready.example.test): not loaded yet"),
        "{body}"
    );
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "alive while not ready"
    );
    std::fs::write(&gate, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(admin, "/readyz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A certificate that expires while served makes wssd unready. (It has 10 s to live:
    // room for a slow start, and the wait below polls rather than guesses.)
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let written = std::time::Instant::now();
    write_pair(dir.path(), &ca.leaf_between(&["localhost"], -60, 10));
    let wssd = Wssd::start(dir.path(), &admin_config(dir.path()));
    let admin = wssd.logged_addr("admin server listening");
    let (status, body) = http_get(admin, "/readyz").await;
    if written.elapsed() < Duration::from_secs(9) {
        assert_eq!(status, 200, "{body}");
    }
    let deadline = written + Duration::from_secs(30);
    let body = loop {
        let (status, body) = http_get(admin, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after expiry: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        written.elapsed() >= Duration::from_secs(9),
        "unready before the expiry"
    );
    assert!(body.contains("expired at"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next = |socket: &UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let wssd = Wssd::start_with(
        dir.path(),
        &files_config(dir.path(), "", ""),
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    assert_eq!(next(&socket).trim(), "READY=1");
    // Ready means ready: the listener accepts.
    let client = client_config(&ca.cert_pem);
    let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
    echo(&mut ws, "ready").await.unwrap();

    wssd.signal("HUP");
    let reloading = next(&socket);
    assert!(reloading.starts_with("RELOADING=1"), "{reloading}");
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "Type=notify-reload needs MONOTONIC_USEC: {reloading}"
    );
    assert_eq!(next(&socket).trim(), "READY=1");

    wssd.signal("TERM");
    assert_eq!(next(&socket).trim(), "STOPPING=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_a_swap_is_one_event_with_the_new_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let tls = write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let wssd = Wssd::start_with(
        dir.path(),
        &files_config(dir.path(), "", ""),
        &["--log-format", "json"],
        &[],
    );
    let client = client_config(&ca.cert_pem);
    let next = ca.leaf(&["localhost"]);
    replace_file(&tls.join("key.pem"), &next.key_pem);
    replace_file(&tls.join("cert.pem"), &next.cert_pem);
    wait_for_serial(wssd.addr, &client, &next.serial, Duration::from_secs(10)).await;
    wssd.wait_for_logs("certificate_swapped", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<serde_json::Value> = wssd
        .logs()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let swaps: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "certificate_swapped")
        .collect();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0]["serial"], next.serial.as_str());
    assert_eq!(swaps[0]["message"], "certificate swapped");
    assert_eq!(swaps[0]["domains"], "localhost");
    assert!(swaps[0]["not_after"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "certificate_loaded")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_expect_days_fails_when_expiry_is_near() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(
        dir.path(),
        &ca.leaf_between(&["localhost"], -60, 10 * 86_400 + 3600),
    );
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    let ca_file = dir.path().join("ca.pem");
    let ok = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca_file.to_str().unwrap(),
            "--expect-days",
            "7",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let near = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca_file.to_str().unwrap(),
            "--expect-days",
            "30",
        ],
    );
    assert_eq!(near.status.code(), Some(1));
    let text = String::from_utf8_lossy(&near.stdout);
    assert!(
        text.contains("expires in 10 days") && text.contains("--expect-days"),
        "{text}"
    );
    let _ = SystemTime::now();
}

#[test]
fn version_completions_and_man_page_come_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    let version = String::from_utf8(wssd_cmd(dir.path(), &["--version"]).stdout).unwrap();
    assert!(
        version.starts_with("wssd ") && version.contains("(git "),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = wssd_cmd(dir.path(), &["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("selfsigned") && text.contains("expect-days"),
            "{shell}"
        );
    }
    let man = wssd_cmd(dir.path(), &["man"]);
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(
        text.contains(".TH wssd 1") && text.contains("probe"),
        "{text}"
    );
}

/// `wssd_relay_messages_total` and `wssd_relay_bytes_total` count what a proxied
/// WebSocket carried, by direction, once it has closed (they were always 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_counters_count_a_proxied_connection_by_direction() {
    use futures_util::{SinkExt, StreamExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(dir.path(), &format!("upstream = \"ws://{up_addr}\""), "")
        + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let (mut ws, _) = ws_connect(wssd.addr, &client_config(&ca.cert_pem), "/").await;
    for _ in 0..2 {
        echo(&mut ws, "hello").await.unwrap();
    }
    // A connection that stays open is counted while it is: a chunk that goes by more
    // than 5 s after the relay started brings the counts so far to the metrics.
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    echo(&mut ws, "hello").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        let up = sample(&metrics, "wssd_relay_messages_total{direction=\"up\"}");
        let down = sample(&metrics, "wssd_relay_messages_total{direction=\"down\"}");
        if up == Some(3.0) && down == Some(3.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "while open: up {up:?}, down {down:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo(&mut ws, "still open").await.unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        if sample(&metrics, "wssd_relay_messages_total{direction=\"down\"}") == Some(4.0) {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&metrics, "wssd_relay_messages_total{direction=\"up\"}"),
        Some(4.0)
    );
    // Three 5-byte texts and one of 10 each way (masked frames of 11 and 16 bytes up, 7
    // and 12 down) plus the closes.
    let up = sample(&metrics, "wssd_relay_bytes_total{direction=\"up\"}").unwrap();
    let down = sample(&metrics, "wssd_relay_bytes_total{direction=\"down\"}").unwrap();
    assert!(up >= 49.0 && down >= 33.0, "up {up}, down {down}");
}
