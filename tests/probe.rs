//! `wssd probe` against a running wssd: the JSON report, and clear failures.

mod common;

use std::time::SystemTime;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_the_served_certificate_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let pair = ca.leaf(&["localhost"]);
    write_pair(dir.path(), &pair);
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    let ca_file = dir.path().join("ca.pem");
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca_file.to_str().unwrap(),
            "--send",
            "hi",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tls_version"], "TLSv1_3");
    assert!(
        report["cipher_suite"]
            .as_str()
            .unwrap()
            .starts_with("TLS13_")
    );
    assert_eq!(report["alpn"], "http/1.1");
    assert!(report["handshake_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(report["upgrade_status"], 101);
    assert_eq!(report["echo_ok"], true);
    let chain = report["peer_certificates"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "leaf and CA");
    let leaf = &chain[0];
    assert_eq!(leaf["serial"], pair.serial.as_str());
    assert_eq!(leaf["dns_names"], serde_json::json!(["localhost"]));
    assert_eq!(
        leaf["days_left"], 89,
        "a 90-day certificate issued a minute ago"
    );
    for key in [
        "subject",
        "issuer",
        "not_before",
        "not_after",
        "ip_addresses",
    ] {
        assert!(!leaf[key].is_null(), "{key} missing");
    }
    // not_after is RFC 3339 and matches the certificate.
    let not_after = leaf["not_after"].as_str().unwrap();
    let summary = wssd::cert::inspect::CertSummary::from_der(
        &pki_types::pem::PemObject::from_pem_slice(pair.cert_pem.as_bytes())
            .map(|c: pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(not_after, wssd::cert::inspect::rfc3339(summary.not_after));
    assert!(summary.not_after > SystemTime::now());

    // The human report says the same things.
    let human = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca_file.to_str().unwrap(),
            "--send",
            "hi",
        ],
    );
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(human.status.success(), "{text}");
    for needle in [
        "TLSv1_3",
        &pair.serial,
        "101 Switching Protocols",
        "echo       ok",
        "89 days left",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_with_the_wrong_ca_fails_naming_the_verification_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("other-ca.pem"), TestCa::new().cert_pem).unwrap();
    let wssd = Wssd::start(dir.path(), &files_config(dir.path(), "", ""));
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    let other = dir.path().join("other-ca.pem");
    let out = wssd_cmd(
        dir.path(),
        &["probe", &url, "--ca", other.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verification failed") && text.contains("UnknownIssuer"),
        "{text}"
    );

    // --insecure skips verification but still shows the chain, leaf then CA.
    let out = wssd_cmd(
        dir.path(),
        &["probe", &url, "--insecure", "--send", "x", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chain = report["peer_certificates"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "{report}");
    assert_eq!(chain[0]["dns_names"][0], "localhost");
    assert!(
        chain[1]["subject"]
            .as_str()
            .unwrap()
            .contains("wssd test CA"),
        "{report}"
    );
    assert_eq!(report["echo_ok"], true);
    let out = wssd_cmd(dir.path(), &["probe", &url, "--insecure"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wssd test CA") && text.contains("localhost"),
        "{text}"
    );
}

#[tokio::test]
async fn probe_of_a_closed_port_fails_naming_the_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("wss://127.0.0.1:{port}/");
    let out = wssd_cmd(dir.path(), &["probe", &url, "--json", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("cannot connect") && error.contains("refused"),
        "{error}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
