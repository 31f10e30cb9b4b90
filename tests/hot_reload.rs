//! Hot reload under load: certificates swapped on disk in each of the ways real
//! deployments do it, while 50 clients keep echoing; bad pairs refused; SIGHUP.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const CLIENTS: usize = 50;
const SWAPS: usize = 10;

#[derive(Clone, Copy, Debug)]
enum Swap {
    /// Write temp files, rename the certificate over, then the key (the certificate is new
    /// and the key old for a moment: a half-written pair).
    RenameOver,
    /// Truncate and rewrite both files in place.
    InPlace,
    /// The kubelet's Secret volume update: new timestamped dir, `..data_tmp` symlink,
    /// rename over `..data`, old dir removed.
    KubernetesSecret,
}

fn kube_dir_name(n: usize) -> String {
    format!("..2026_11_25_00_00_{n:02}.{:09}", n * 7919)
}

/// Lays out `tls/` the way the swap method expects, with `pair` in place.
fn install_initial(dir: &Path, method: Swap, pair: &Pair) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    match method {
        Swap::RenameOver | Swap::InPlace => {
            write_pair(dir, pair);
        }
        Swap::KubernetesSecret => {
            let ts = tls.join(kube_dir_name(0));
            std::fs::create_dir(&ts).unwrap();
            std::fs::write(ts.join("cert.pem"), &pair.cert_pem).unwrap();
            std::fs::write(ts.join("key.pem"), &pair.key_pem).unwrap();
            std::os::unix::fs::symlink(kube_dir_name(0), tls.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/cert.pem", tls.join("cert.pem")).unwrap();
            std::os::unix::fs::symlink("..data/key.pem", tls.join("key.pem")).unwrap();
        }
    }
}

fn swap(dir: &Path, method: Swap, pair: &Pair, n: usize) {
    let tls = dir.join("tls");
    match method {
        Swap::RenameOver => {
            std::fs::write(tls.join("cert.pem.new"), &pair.cert_pem).unwrap();
            std::fs::write(tls.join("key.pem.new"), &pair.key_pem).unwrap();
            std::fs::rename(tls.join("cert.pem.new"), tls.join("cert.pem")).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            std::fs::rename(tls.join("key.pem.new"), tls.join("key.pem")).unwrap();
        }
        Swap::InPlace => {
            std::fs::write(tls.join("cert.pem"), &pair.cert_pem).unwrap();
            std::fs::write(tls.join("key.pem"), &pair.key_pem).unwrap();
        }
        Swap::KubernetesSecret => {
            let new = tls.join(kube_dir_name(n));
            std::fs::create_dir(&new).unwrap();
            std::fs::write(new.join("cert.pem"), &pair.cert_pem).unwrap();
            std::fs::write(new.join("key.pem"), &pair.key_pem).unwrap();
            std::os::unix::fs::symlink(kube_dir_name(n), tls.join("..data_tmp")).unwrap();
            std::fs::rename(tls.join("..data_tmp"), tls.join("..data")).unwrap();
            std::fs::remove_dir_all(tls.join(kube_dir_name(n - 1))).unwrap();
        }
    }
}

async fn swaps_keep_every_connection(method: Swap) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    install_initial(dir.path(), method, &first);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let client = client_config(&ca.cert_pem);
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);

    let load = Load::start(wssd.addr, &client, CLIENTS).await;
    load.progress(200).await;
    for n in 1..=SWAPS {
        let next = ca.leaf(&["localhost"]);
        swap(dir.path(), method, &next, n);
        wait_for_serial(wssd.addr, &client, &next.serial, Duration::from_secs(10)).await;
        load.progress(100).await;
    }
    let total = load.finish().await;
    assert!(total >= (SWAPS as u64) * 100);
    assert_eq!(
        wssd.count_logs("certificate refused"),
        0,
        "a normal {method:?} swap must never be reported as a failure:\n{}",
        wssd.logs()
    );
    // Each swap logs once (the line can trail the swap itself by a moment).
    wssd.wait_for_logs("certificate swapped", SWAPS, Duration::from_secs(10))
        .await;
    assert_eq!(wssd.count_logs("certificate loaded"), 1, "{}", wssd.logs());
    assert_eq!(
        wssd.count_logs("certificate swapped"),
        SWAPS,
        "{}",
        wssd.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_swaps_keep_50_live_connections() {
    swaps_keep_every_connection(Swap::RenameOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_swaps_keep_50_live_connections() {
    swaps_keep_every_connection(Swap::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_swaps_keep_50_live_connections() {
    swaps_keep_every_connection(Swap::KubernetesSecret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pairs_are_refused_and_the_old_certificate_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &good);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let client = client_config(&ca.cert_pem);
    let load = Load::start(wssd.addr, &client, 10).await;

    let other_a = ca.leaf(&["localhost"]);
    let other_b = ca.leaf(&["localhost"]);
    let expired = ca.leaf_between(&["localhost"], -10 * 86_400, -86_400);
    let wrong_name = ca.leaf(&["elsewhere.example"]);
    let not_yet = ca.leaf_between(&["localhost"], 86_400, 90 * 86_400);
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "garbage PEM",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
            &good.key_pem,
            "malformed PEM",
        ),
        (
            "mismatched key",
            &other_a.cert_pem,
            &other_b.key_pem,
            "does not match",
        ),
        (
            "expired certificate",
            &expired.cert_pem,
            &expired.key_pem,
            "expired",
        ),
        (
            "wrong domain",
            &wrong_name.cert_pem,
            &wrong_name.key_pem,
            "does not cover localhost",
        ),
        (
            "not yet valid",
            &not_yet.cert_pem,
            &not_yet.key_pem,
            "not valid before",
        ),
    ];
    for (i, (what, cert, key, reason)) in cases.iter().enumerate() {
        replace_file(&tls.join("key.pem"), key);
        replace_file(&tls.join("cert.pem"), cert);
        wssd.wait_for_logs("certificate refused", i + 1, Duration::from_secs(15))
            .await;
        let line = wssd
            .logs()
            .lines()
            .filter(|l| l.contains("certificate refused"))
            .nth(i)
            .unwrap()
            .to_string();
        assert!(
            line.contains(reason),
            "{what}: the log must give the reason {reason:?}: {line}"
        );
        assert!(
            line.contains("cert.pem") || line.contains("key.pem"),
            "{what}: the log must name the file: {line}"
        );
        assert!(
            line.contains(&good.serial),
            "{what}: the log must say what still serves: {line}"
        );
        assert_eq!(
            served_serial(wssd.addr, &client).await,
            good.serial,
            "{what} replaced the good certificate"
        );
        load.progress(50).await;
    }
    // Once the files are good again, they are taken.
    let fixed = ca.leaf(&["localhost"]);
    replace_file(&tls.join("key.pem"), &fixed.key_pem);
    replace_file(&tls.join("cert.pem"), &fixed.cert_pem);
    wait_for_serial(wssd.addr, &client, &fixed.serial, Duration::from_secs(10)).await;
    load.finish().await;
    assert!(
        !wssd.logs().contains("PRIVATE KEY"),
        "key material must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_watching_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &first);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", "watch = false"));
    let client = client_config(&ca.cert_pem);
    let (mut live, _) = ws_connect(wssd.addr, &client, "/").await;

    let second = ca.leaf(&["localhost"]);
    replace_file(&tls.join("key.pem"), &second.key_pem);
    replace_file(&tls.join("cert.pem"), &second.cert_pem);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_serial(wssd.addr, &client).await,
        first.serial,
        "watch = false must not reload"
    );

    wssd.signal("HUP");
    wait_for_serial(wssd.addr, &client, &second.serial, Duration::from_secs(10)).await;
    echo(&mut live, "still here after SIGHUP").await.unwrap();
    wssd.wait_for_logs("reason=\"SIGHUP\"", 1, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_recreated_files_are_served_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &first);
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let client = client_config(&ca.cert_pem);
    let load = Load::start(wssd.addr, &client, 10).await;
    // Deleted: the certificate in memory keeps serving.
    std::fs::remove_file(tls.join("cert.pem")).unwrap();
    std::fs::remove_file(tls.join("key.pem")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);
    load.progress(50).await;
    // Recreated (new files, new inodes, written in place): taken once both are whole.
    let second = ca.leaf(&["localhost"]);
    std::fs::write(tls.join("key.pem"), &second.key_pem).unwrap();
    std::fs::write(tls.join("cert.pem"), &second.cert_pem).unwrap();
    wait_for_serial(wssd.addr, &client, &second.serial, Duration::from_secs(10)).await;
    load.progress(50).await;
    load.finish().await;
}
