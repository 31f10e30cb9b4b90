//! The connection workers (`[listener] workers`): the configured number of worker
//! threads exists, every one of them carries connections under load, and a certificate
//! swap reaches handshakes on all of them while the connections they hold keep echoing.

mod common;

use std::time::Duration;

use common::*;

/// CPU ticks (user + system) of each of the process's threads named `wssd-conn-*`.
fn worker_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("wssd-conn-") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        out.push((comm.to_string(), ticks));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_carries_connections_and_sees_each_swap() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &first);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "workers = 3", ""));
    let client = client_config(&ca.cert_pem);

    // A thread names itself once it runs (std sets the name from inside the new thread),
    // so on a busy machine a worker can still be unnamed for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let ticks = worker_ticks(wssd.pid());
        if ticks.len() >= 3 || std::time::Instant::now() > deadline {
            break ticks;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<_> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["wssd-conn-0", "wssd-conn-1", "wssd-conn-2"]);

    // 30 clients: 10 per worker (each new connection goes to the least loaded one).
    let load = Load::start(wssd.addr, &client, 30).await;
    load.progress(20_000).await;
    let after = worker_ticks(wssd.pid());
    for ((name, t0), (_, t1)) in before.iter().zip(&after) {
        assert!(
            t1 > t0,
            "{name} carried no connection: {before:?} -> {after:?}"
        );
    }

    // A swap is seen by fresh handshakes on every worker, while the 30 connections keep
    // echoing.
    let second = ca.leaf(&["localhost"]);
    std::fs::write(tls.join("key.tmp"), &second.key_pem).unwrap();
    std::fs::write(tls.join("cert.tmp"), &second.cert_pem).unwrap();
    std::fs::rename(tls.join("key.tmp"), tls.join("key.pem")).unwrap();
    std::fs::rename(tls.join("cert.tmp"), tls.join("cert.pem")).unwrap();
    wait_for_serial(wssd.addr, &client, &second.serial, Duration::from_secs(10)).await;
    // Six fresh handshakes held open at once: least-loaded assignment spreads them, two
    // per worker. Each sees the new serial, and the log says which worker took it.
    let mut fresh = Vec::new();
    let mut workers_seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (tls, serial) = tls_connect(wssd.addr, &client).await.unwrap();
        assert_eq!(serial, second.serial);
        let port = tls.get_ref().0.local_addr().unwrap().port();
        let needle = format!("peer=127.0.0.1:{port} ");
        wssd.wait_for_logs(&needle, 1, Duration::from_secs(5)).await;
        let worker = wssd
            .logs()
            .lines()
            .find(|l| l.contains("connection on a worker") && l.contains(&needle))
            .and_then(|l| l.split("worker=").nth(1))
            .and_then(|w| w.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no worker logged for port {port}"));
        workers_seen.insert(worker);
        fresh.push(tls);
    }
    assert_eq!(
        workers_seen.into_iter().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "the swap was not seen through every worker"
    );
    drop(fresh);
    load.progress(1_000).await;
    assert!(load.finish().await >= 21_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "workers = 1", ""));
    let client = client_config(&ca.cert_pem);
    let (mut ws, _) = ws_connect(wssd.addr, &client, "/").await;
    echo(&mut ws, "one worker").await.unwrap();
    let names: Vec<_> = worker_ticks(wssd.pid())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["wssd-conn-0"]);
}
