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

/// A wssd with a files certificate for localhost whose listener admits only `origin`;
/// with the CA file for --ca.
fn origin_checking_wssd(dir: &std::path::Path, origin: &str) -> (Wssd, std::path::PathBuf) {
    let ca = TestCa::new();
    write_pair(dir, &ca.leaf(&["localhost"]));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let listener = format!("allowed_origins = [\"{origin}\"]");
    (Wssd::start(dir, &files_config(dir, &listener, "")), ca_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_names_allowed_origins_and_origin_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wssd, ca_file) = origin_checking_wssd(dir.path(), "https://app.example.test");
    let url = format!("wss://localhost:{}/", wssd.addr.port());
    let ca = ca_file.to_str().unwrap();
    let out = wssd_cmd(dir.path(), &["probe", &url, "--ca", ca]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("403") && text.contains("allowed_origins") && text.contains("--origin"),
        "{text}"
    );
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca,
            "--origin",
            "https://app.example.test",
            "--send",
            "hi",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "--ca",
            ca,
            "--origin",
            "https://other.example.test",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("is https://other.example.test in the server's allowed_origins?")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_reaches_the_server_under_the_urls_name() {
    let dir = tempfile::tempdir().unwrap();
    let (wssd, ca_file) = origin_checking_wssd(dir.path(), "https://app.example.test");
    // Port 1 in the URL: nothing listens there; --connect-to goes to wssd, while the TLS
    // name (and Host) stay "localhost".
    let to = format!("127.0.0.1:{}", wssd.addr.port());
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            "wss://localhost:1/",
            "--ca",
            ca_file.to_str().unwrap(),
            "--connect-to",
            &to,
            "--origin",
            "https://app.example.test",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert_eq!(report["address"], to.as_str());
    assert_eq!(report["upgrade_status"], 101);
}

/// A one-shot plain TCP server: records what the client sent, answers `reply`.
fn plain_server(reply: &'static [u8]) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = vec![0u8; 4096];
        let n = s.read(&mut got).unwrap_or(0);
        got.truncate(n);
        let _ = s.write_all(reply);
        got
    });
    (port, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_sent_with_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = plain_server(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    let url = format!("ws://127.0.0.1:{port}/chat");
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &url,
            "-H",
            "Authorization: Bearer t0ken",
            "--header",
            "X-Trace: 7",
            "--origin",
            "https://a.example.test",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let request = String::from_utf8(server.join().unwrap())
        .unwrap()
        .to_ascii_lowercase();
    for line in [
        "authorization: bearer t0ken",
        "x-trace: 7",
        "origin: https://a.example.test",
        "upgrade: websocket",
    ] {
        assert!(request.contains(line), "{line:?} not in {request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_scheme_for_the_port_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    // ws:// at wssd's TLS port.
    let (wssd, _) = origin_checking_wssd(dir.path(), "https://app.example.test");
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &format!("ws://127.0.0.1:{}/", wssd.addr.port()),
            "--timeout",
            "5s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is a TLS port, use wss://"), "{text}");
    // wss:// at a plain HTTP port.
    let (port, _server) =
        plain_server(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let out = wssd_cmd(
        dir.path(),
        &[
            "probe",
            &format!("wss://127.0.0.1:{port}/"),
            "--insecure",
            "--timeout",
            "5s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("did not answer in TLS") && text.contains("use ws://"),
        "{text}"
    );
}

#[test]
fn bad_arguments_exit_2_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    // A listener that would see any connection attempt.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("wss://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let not_a_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "this is no certificate\n").unwrap();
    let not_a_ca = not_a_ca.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["probe", &url, "--ca", "missing-ca.pem"],
            "--ca missing-ca.pem",
        ),
        (
            &["probe", &url, "--ca", not_a_ca],
            "no PEM certificate in it",
        ),
        (&["probe", "localhost:8443"], "wss:// or ws://"),
        (&["probe", &url, "--header", "no colon here"], "NAME: VALUE"),
        (&["probe", &url, "--connect-to", "127.0.0.1"], "HOST:PORT"),
    ];
    for (args, says) in cases {
        let out = wssd_cmd(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(
        listener.accept().is_err(),
        "a probe with bad arguments connected"
    );
}
