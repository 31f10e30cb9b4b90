//! `source = "selfsigned"` in `wssd run`: a due certificate is re-issued from the same dev
//! CA at start-up, and a running wssd re-issues when the renewal time comes, swapping the
//! new certificate in while a live connection keeps echoing.

mod common;

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{CertificateParams, Issuer, KeyPair};

const DAY: u64 = 86_400;

/// Signs a localhost leaf with the dev CA in `ca_dir`, valid from `not_before` for 90 days,
/// and writes it where the config expects it. Returns its serial.
fn plant_leaf(ca_dir: &Path, cert_dir: &Path, not_before: SystemTime) -> String {
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = not_before.into();
    params.not_after = (not_before + Duration::from_secs(90 * DAY)).into();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    // As wssd keeps them: directories 0700, the key 0600 (it refuses anything more open).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cert_dir)
        .unwrap();
    std::fs::write(cert_dir.join("cert.pem"), format!("{}{ca_pem}", leaf.pem())).unwrap();
    wssd::cert::store::write_atomic(
        &cert_dir.join("key.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )
    .unwrap();
    wssd::cert::inspect::CertSummary::from_der(leaf.der())
        .unwrap()
        .serial
}

fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    // Make the dev CA the way a user would.
    let out = wssd_cmd(
        dir.path(),
        &[
            "selfsigned",
            "--out-dir",
            dir.path().join("scratch").to_str().unwrap(),
            "--ca-dir",
            ca_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let config = format!(
        "data_dir = \"{data}\"\nca_dir = \"{ca}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
        data = dir.path().join("data").display(),
        ca = ca_dir.display()
    );
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_certificate_is_reissued_at_startup() {
    let (dir, config) = setup();
    let cert_dir = dir.path().join("data/certs/localhost");
    // 80 of 90 days gone: inside the last third.
    let old = plant_leaf(
        &dir.path().join("ca"),
        &cert_dir,
        SystemTime::now() - Duration::from_secs(80 * DAY),
    );
    let wssd = Wssd::start(dir.path(), &config);
    let ca = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
    let served = served_serial(wssd.addr, &client_config(&ca)).await;
    assert_ne!(served, old, "a due certificate must be replaced");
    wssd.wait_for_logs(
        "issued a certificate from the dev CA",
        1,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_wssd_renews_and_swaps_without_dropping_connections() {
    let (dir, config) = setup();
    let cert_dir = dir.path().join("data/certs/localhost");
    // Renewal falls due 10 seconds from now (two thirds into a 90-day lifetime): room
    // for a slow start before it, and the wait below polls for it.
    let planted = std::time::Instant::now();
    let not_before = SystemTime::now() + Duration::from_secs(10) - Duration::from_secs(60 * DAY);
    let old = plant_leaf(&dir.path().join("ca"), &cert_dir, not_before);
    let wssd = Wssd::start(dir.path(), &config);
    let ca = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
    let client = client_config(&ca);
    let (mut live, serial) = ws_connect(wssd.addr, &client, "/").await;
    if planted.elapsed() < Duration::from_secs(9) {
        assert_eq!(serial, old, "not due yet at start-up");
    }

    let deadline = planted + Duration::from_secs(40);
    loop {
        echo(&mut live, "during renewal").await.unwrap();
        let now = served_serial(wssd.addr, &client).await;
        if now != old {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo(&mut live, "after renewal").await.unwrap();
    wssd.wait_for_logs("renewed from the dev CA", 1, Duration::from_secs(10))
        .await;
    // The renewed certificate is on disk, from the same CA, with a full lifetime.
    let pair = wssd::cert::pair::load_pair(
        &cert_dir.join("cert.pem"),
        &cert_dir.join("key.pem"),
        &[wssd::config::Domain::parse("localhost").unwrap()],
        SystemTime::now(),
        &wssd::tls::provider(),
    )
    .unwrap();
    assert_eq!(pair.summary.days_left(SystemTime::now()), 89);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_cannot_be_written_leaves_the_old_pair_serving() {
    let (dir, config) = setup();
    let cert_dir = dir.path().join("data/certs/localhost");
    let not_before = SystemTime::now() + Duration::from_secs(2) - Duration::from_secs(60 * DAY);
    let old = plant_leaf(&dir.path().join("ca"), &cert_dir, not_before);
    std::fs::write(dir.path().join("wssd.toml"), &config).unwrap();
    // Files may grow to 1 KiB at most (the chain is larger): writing the renewed pair
    // fails half-way, like a full disk. SIGXFSZ is ignored so the write just fails.
    let wssd = Wssd::spawn_wrapped(
        dir.path(),
        "trap '' XFSZ; ulimit -f 2;",
        &[
            "run",
            "--config",
            dir.path().join("wssd.toml").to_str().unwrap(),
        ],
    );
    let ca = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
    let client = client_config(&ca);
    let (mut live, _) = ws_connect(wssd.addr, &client, "/").await;
    wssd.wait_for_logs("renewal failed", 1, Duration::from_secs(20))
        .await;
    wssd.wait_for_logs("File too large", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        served_serial(wssd.addr, &client).await,
        old,
        "the old pair keeps serving"
    );
    echo(&mut live, "unaffected").await.unwrap();
    // On disk: still the old pair, whole, and no half-written version left behind.
    let pair = wssd::cert::pair::load_pair(
        &cert_dir.join("cert.pem"),
        &cert_dir.join("key.pem"),
        &[wssd::config::Domain::parse("localhost").unwrap()],
        SystemTime::now(),
        &wssd::tls::provider(),
    )
    .unwrap();
    assert_eq!(pair.summary.serial, old);
    let versions = std::fs::read_dir(&cert_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("..wssd-"))
        .count();
    assert!(versions <= 1, "{versions} version directories");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_ca_renewal_in_run_runs_the_deploy_hook_and_a_failing_hook_is_reported() {
    let (dir, config) = setup();
    let cert_dir = dir.path().join("data/certs/localhost");
    let planted = std::time::Instant::now();
    let not_before = SystemTime::now() + Duration::from_secs(3) - Duration::from_secs(60 * DAY);
    let old = plant_leaf(&dir.path().join("ca"), &cert_dir, not_before);
    let log = dir.path().join("hook.log");
    // The hook records what it was told, then fails loudly.
    let hook = format!(
        "echo \\\"$WSSD_DOMAINS $WSSD_CERT_FILE $WSSD_KEY_FILE\\\" >> {}; echo boom from the hook >&2; exit 3",
        log.display()
    );
    let config = config.replace(
        "source = \"selfsigned\"\n",
        &format!("source = \"selfsigned\"\ndeploy_hook = \"{hook}\"\n"),
    );
    let wssd = Wssd::start(dir.path(), &config);
    if planted.elapsed() < Duration::from_secs(2) {
        assert!(!log.exists(), "the hook ran before any renewal");
    }
    wssd.wait_for_logs("deploy hook failed", 1, Duration::from_secs(30))
        .await;
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        ran.trim(),
        format!(
            "localhost {} {}",
            cert_dir.join("cert.pem").display(),
            cert_dir.join("key.pem").display()
        )
    );
    let failed = wssd
        .logs()
        .lines()
        .find(|l| l.contains("deploy hook failed"))
        .unwrap()
        .to_string();
    assert!(
        failed.contains("exit status: 3") && failed.contains("boom from the hook"),
        "{failed}"
    );
    // The renewed certificate serves anyway: a hook never undoes it.
    let ca = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
    assert_ne!(served_serial(wssd.addr, &client_config(&ca)).await, old);
}
