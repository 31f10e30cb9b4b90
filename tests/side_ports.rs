//! The side ports (the http-01 responder, public on port 80 while `wssd run` runs, and the
//! admin server) cannot take the process's file descriptors from the WSS listener: each
//! has a connection cap and a per-IP cap derived from the descriptor limit, and a head
//! timeout. With `ulimit -n 256`, 300 idle connections to each side port leave the
//! listener serving.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_side_ports_cannot_starve_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    // certificate[0] from files serves the listener; certificate[1] from an ACME CA that
    // is not there keeps the http-01 responder up.
    let config = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"acme.example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nchallenge = \"http-01\"\nhttp01_bind = \"127.0.0.1:0\"\nretry_backoff = \"1h\"\n",
        files_config(dir.path(), "", "")
    );
    let path = write_config(dir.path(), &config);
    let wssd = Wssd::spawn_wrapped(dir.path(), "ulimit -n 256;", &["run", "--config", &path]);
    let http01 = wssd.logged_addr("http-01 responder listening");
    let admin = wssd.logged_addr("admin server listening");
    let client = client_config(&ca.cert_pem);

    let mut idle = Vec::new();
    for addr in [http01, admin] {
        for _ in 0..300 {
            if let Ok(stream) = TcpStream::connect(addr).await {
                idle.push(stream);
            }
        }
    }
    // Let the accept loops take (or refuse) all of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..10 {
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(5), ws_connect(wssd.addr, &client, "/"))
                .await
                .unwrap_or_else(|_| panic!("WSS client {i} got no handshake:\n{}", tail(&wssd)));
        echo(&mut ws, "through").await.unwrap();
    }
    assert_eq!(
        wssd.count_logs("Too many open files"),
        0,
        "the process ran out of descriptors:\n{}",
        tail(&wssd)
    );

    // Over the caps, a side-port connection is closed at once instead of being held.
    let mut extra = TcpStream::connect(http01).await.unwrap();
    let mut byte = [0u8; 1];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut byte))
        .await
        .expect("a refused side-port connection is closed, not held");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(3));

    // The head timeout frees the held ones; then the admin server answers again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_string(&mut out)).await;
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "admin never recovered: {out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_side_port_client_is_cut_at_the_head_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let config = files_config(dir.path(), "", "") + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let wssd = Wssd::start(dir.path(), &config);
    let admin = wssd.logged_addr("admin server listening");
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /heal").await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out)).await;
    let held = started.elapsed();
    assert!(
        held >= Duration::from_secs(4) && held < Duration::from_secs(15),
        "held for {held:?}"
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

fn tail(wssd: &Wssd) -> String {
    let logs = wssd.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.contains("DEBUG")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
