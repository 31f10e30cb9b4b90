//! `wssd run` in an empty directory: the zero-config dev mode on 127.0.0.1:8443.
//! This is the one test with a fixed port, because the port is the contract.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_serves_localhost_8443_and_probe_succeeds() {
    if std::net::TcpListener::bind("127.0.0.1:8443").is_err() {
        panic!("port 8443 is busy: the zero-config test needs it (is a wssd dev server running?)");
    }
    let dir = tempfile::tempdir().unwrap();
    let wssd = Wssd::spawn(dir.path(), &["run"]);
    assert_eq!(wssd.addr.to_string(), "127.0.0.1:8443");
    // stdout is read by a thread; give it a moment to catch up with the log line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !wssd.stdout().contains("wssd probe") {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe line: {}",
            wssd.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stdout = wssd.stdout();
    assert!(stdout.contains("wss://localhost:8443/"), "{stdout}");
    let ca = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("CA to trust:"))
        .map(|s| s.trim().to_string())
        .expect("the CA path is printed");
    assert!(ca.ends_with("wssd/ca/ca.pem"), "{ca}");

    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            "--ca",
            &ca,
            "--send",
            "hi",
            "wss://localhost:8443/",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("echo       ok"), "{text}");

    // The certificate covers ::1, and so does the listener.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let out = wssd_cmd(
            dir.path(),
            &["probe", "--ca", &ca, "--send", "hi", "wss://[::1]:8443/"],
        );
        assert!(
            out.status.success(),
            "[::1]:8443: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The printed probe line works as printed.
    let line = stdout.lines().find(|l| l.contains("wssd probe")).unwrap();
    let args: Vec<&str> = line
        .split("wssd probe")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let mut full = vec!["probe"];
    full.extend(args);
    assert!(
        wssd_cmd(dir.path(), &full).status.success(),
        "printed command failed: {line}"
    );
    // Relative paths are watched too: a new pair written into ./wssd-data is served.
    let before = wssd::cert::inspect::CertSummary::from_der(
        &pki_types::pem::PemObject::from_pem_file(
            dir.path().join("wssd-data/certs/localhost/cert.pem"),
        )
        .map(|c: pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap(),
    )
    .unwrap();
    let out = wssd_cmd(
        dir.path(),
        &["selfsigned", "--out-dir", "wssd-data/certs/localhost"],
    );
    assert!(out.status.success());
    let after = wssd::cert::inspect::CertSummary::from_der(
        &pki_types::pem::PemObject::from_pem_file(
            dir.path().join("wssd-data/certs/localhost/cert.pem"),
        )
        .map(|c: pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap(),
    )
    .unwrap();
    assert_ne!(before.serial, after.serial);
    let client = client_config(&std::fs::read_to_string(&ca).unwrap());
    wait_for_serial(wssd.addr, &client, &after.serial, Duration::from_secs(10)).await;

    // A dev certificate landed under ./wssd-data with a 0600 key.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("wssd-data/certs/localhost/key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
