//! http-01 answered by `wssd run` itself, the side ports' refusals, a damaged account
//! file, and the counters operators alert on: ACME orders, renewals and refused
//! connections move when those things happen.

mod common;

use std::time::Duration;

use common::pebble::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run_config(dir: &std::path::Path, pebble: &Pebble, extra_listener: &str) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n{extra_listener}\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"http.example.test\"]\nsource = \"acme\"\n{}",
        dir.join("data").display(),
        pebble.acme_section("http-01", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_http01_itself_and_the_counters_move() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let wssd = Wssd::start(
        dir.path(),
        &run_config(dir.path(), &pebble, "max_connections = 1"),
    );
    wssd.wait_for_logs(
        "certificate issued by the CA and stored",
        1,
        Duration::from_secs(60),
    )
    .await;
    let client = pebble_client(&pebble);
    let cert_file = dir.path().join("data/certs/http.example.test/cert.pem");
    let serial = assert_chain_verifies(&pebble, &cert_file, &["http.example.test"]);
    // Served once the reloader has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_serial_for(wssd.addr, &client, "http.example.test")
        .await
        .ok()
        != Some(serial.clone())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not served:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pebble.log().contains(&format!(
            "Attempting to validate w/ HTTP: http://http.example.test:{}",
            pebble.http_port
        )),
        "Pebble did not validate over http-01"
    );

    let admin = wssd.logged_addr("admin server listening");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_acme_orders_total{result=\"ok\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "wssd_acme_orders_total{result=\"error\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "wssd_renewals_total{certificate=\"0\",domains=\"http.example.test\",source=\"acme\",result=\"ok\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // max_connections = 1: a second connection is refused and counted.
    assert_eq!(
        sample(&metrics, "wssd_connections_refused_total"),
        Some(0.0)
    );
    let held = tokio::net::TcpStream::connect(wssd.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        served_serial_for(wssd.addr, &client, "http.example.test")
            .await
            .is_err()
    );
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_connections_refused_total"),
        Some(1.0),
        "{metrics}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_orders_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"down.example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nchallenge = \"tls-alpn-01\"\nretry_backoff = \"1s\"\n",
        dir.path().join("data").display()
    );
    let wssd = Wssd::start(dir.path(), &config);
    wssd.wait_for_logs("ACME order failed", 2, Duration::from_secs(30))
        .await;
    let admin = wssd.logged_addr("admin server listening");
    let (_, metrics) = http_get(admin, "/metrics").await;
    let errors = sample(&metrics, "wssd_acme_orders_total{result=\"error\"}").unwrap();
    assert!(errors >= 2.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "wssd_renewals_total{certificate=\"0\",domains=\"down.example.test\",source=\"acme\",result=\"error\"}"
        )
        .unwrap()
            >= 2.0
    );
}

#[test]
fn a_busy_http01_port_stops_run_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"busy.example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nchallenge = \"http-01\"\nhttp01_bind = \"127.0.0.1:{port}\"\n",
        dir.path().join("data").display()
    );
    let path = write_config(dir.path(), &config);
    let out = wssd_cmd(dir.path(), &["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "[acme] http01_bind = 127.0.0.1:{port}: cannot listen"
        )) && err.contains("Address already in use"),
        "{err}"
    );
}

#[test]
fn a_damaged_account_file_is_a_clear_error_and_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let config = format!(
        "{}{}",
        acme_cert("\"damaged.example.test\"", dir.path()),
        pebble.acme_section("http-01", "")
    );
    issue(dir.path(), &config, 0);
    let account = std::fs::read_dir(dir.path().join("data/acme"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .unwrap()
        .path();
    std::fs::write(&account, "{\"directory\": \"x\", \"credentials\": 42").unwrap();
    std::fs::remove_dir_all(dir.path().join("data/certs/damaged.example.test")).unwrap();
    let (_, err) = issue(dir.path(), &config, 1);
    assert!(
        err.contains(&account.display().to_string())
            && err.contains("not a wssd account file")
            && err.contains("move it away"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&account).unwrap(),
        "{\"directory\": \"x\", \"credentials\": 42",
        "the damaged file must be left for the operator"
    );
    // Accounts Pebble created (a POST retried after a rejected nonce creates none).
    assert_eq!(
        pebble.log().matches("accounts in memory").count(),
        1,
        "no second account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_answers_unknown_paths_404_and_other_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(dir.path(), "", "") + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let (status, body) = http_get(admin, "/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/healthz, /readyz or /metrics"), "{body}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("Allow: GET, HEAD\r\n"), "{out}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\n"),
        "HEAD has no body: {out:?}"
    );
}
