//! ACME when things go wrong, against a real CA (Pebble): a failing dns-01 hook, a domain
//! the CA refuses, a CA that cannot be reached (for `wssd issue`, and for `wssd run`,
//! which keeps serving and backs off), and no secret in the logs of a full run.

mod common;

use std::time::Duration;

use common::pebble::*;
use common::*;

#[test]
fn a_failing_dns_hook_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let hook = dir.path().join("broken-hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'zone example.test is read-only' >&2\nexit 7\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!("dns01_hook = \"{}\"", hook.display());
    let config = format!(
        "{}{}",
        acme_cert("\"ro.example.test\"", dir.path()),
        pebble.acme_section("dns-01", &extra)
    );
    let (_, err) = issue(dir.path(), &config, 1);
    assert!(
        err.contains("zone example.test is read-only") && err.contains("exit status: 7"),
        "{err}"
    );
}

#[test]
fn a_refused_domain_names_the_domain_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            blocked_domains: vec!["blocked.example.test".into()],
            ..Default::default()
        },
    );
    let config = format!(
        "{}{}",
        acme_cert("\"blocked.example.test\"", dir.path()),
        pebble.acme_section("http-01", "")
    );
    let (_, err) = issue(dir.path(), &config, 1);
    assert!(
        err.contains("blocked.example.test") && err.contains("rejectedIdentifier"),
        "{err}"
    );
}

#[test]
fn an_unreachable_ca_is_named_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::pebble::free_port();
    let config = format!(
        "{}[acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nchallenge = \"http-01\"\nhttp01_bind = \"127.0.0.1:0\"\n",
        acme_cert("\"down.example.test\"", dir.path())
    );
    let (_, err) = issue(dir.path(), &config, 1);
    assert!(
        err.contains(&format!(
            "cannot reach the ACME server https://127.0.0.1:{port}/dir"
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_serving_and_backs_off_while_the_ca_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::pebble::free_port();
    // A valid certificate already on disk, due for renewal, and a CA that is not there.
    let ca = TestCa::new();
    let pair = ca.leaf(&["down.example.test"]);
    let cert_dir = dir.path().join("data/certs/down.example.test");
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cert_dir)
        .unwrap();
    wssd::cert::store::write_pair(
        &cert_dir.join("cert.pem"),
        &cert_dir.join("key.pem"),
        pair.cert_pem.as_bytes(),
        pair.key_pem.as_bytes(),
    )
    .unwrap();
    let config = format!(
        "{}[acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nchallenge = \"tls-alpn-01\"\nrenew_before = \"1000d\"\nretry_backoff = \"1s\"\n",
        acme_cert("\"down.example.test\"", dir.path())
    );
    let wssd = Wssd::start(dir.path(), &config);
    wssd.wait_for_logs("ACME renewal failed", 3, Duration::from_secs(30))
        .await;
    let client = client_config(&ca.cert_pem);
    assert_eq!(
        served_serial_for(wssd.addr, &client, "down.example.test")
            .await
            .unwrap(),
        pair.serial
    );
    // The delays grow: 1 s, 2 s, 4 s (each ±10%).
    let failures: Vec<String> = wssd
        .logs()
        .lines()
        .filter(|l| l.contains("ACME renewal failed"))
        .map(str::to_string)
        .collect();
    assert!(
        failures[0].contains(&format!(
            "cannot reach the ACME server https://127.0.0.1:{port}/dir"
        )),
        "{}",
        failures[0]
    );
    assert!(failures[2].contains("failures=3"), "{}", failures[2]);
    // The delays grow: the gaps between attempts roughly double (1 s, 2 s, 4 s, each
    // ±10%, plus the attempt itself).
    wssd.wait_for_logs("ACME renewal failed", 4, Duration::from_secs(30))
        .await;
    let at: Vec<std::time::SystemTime> = wssd
        .logs()
        .lines()
        .filter(|l| l.contains("ACME renewal failed"))
        .map(|l| humantime::parse_rfc3339(l.split_whitespace().next().unwrap()).unwrap())
        .collect();
    let gaps: Vec<f64> = at
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap().as_secs_f64())
        .collect();
    assert!((0.8..1.6).contains(&gaps[0]), "first gap {gaps:?}");
    for pair in gaps.windows(2).take(2) {
        let ratio = pair[1] / pair[0];
        assert!(
            (1.4..2.8).contains(&ratio),
            "the gaps do not double: {gaps:?}"
        );
    }
    let waits: Vec<String> = wssd
        .logs()
        .lines()
        .filter(|l| l.contains("backoff after"))
        .map(str::to_string)
        .collect();
    assert!(waits.len() >= 2, "{}", wssd.logs());
    let status = wssd_cmd(
        dir.path(),
        &[
            "status",
            "--config",
            dir.path().join("wssd.toml").to_str().unwrap(),
            "--json",
        ],
    );
    let entries: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(entries[0]["failures"].as_u64().unwrap() >= 2, "{entries}");
    assert!(
        entries[0]["renewal_reason"]
            .as_str()
            .unwrap()
            .contains("backoff after"),
        "{entries}"
    );
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{entries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_a_full_acme_run() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            eab_required: true,
            ..Default::default()
        },
    );
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[[certificate]]\ndomains = [\"secret.example.test\"]\nsource = \"acme\"\n{}",
        dir.path().join("data").display(),
        pebble.tls_port,
        pebble.acme_section(
            "tls-alpn-01",
            &format!("eab_kid = \"{EAB_KID}\"\neab_hmac_key = \"{EAB_HMAC}\"")
        )
    );
    let wssd = Wssd::start(dir.path(), &config); // logs at debug level
    wssd.wait_for_logs(
        "certificate issued by the CA and stored",
        1,
        Duration::from_secs(60),
    )
    .await;
    let status = wssd_cmd(
        dir.path(),
        &[
            "status",
            "--config",
            dir.path().join("wssd.toml").to_str().unwrap(),
            "--json",
        ],
    );
    let logs = format!(
        "{}\n{}\n{}",
        wssd.logs(),
        wssd.stdout(),
        String::from_utf8_lossy(&status.stdout)
    );

    let account_file = std::fs::read_dir(dir.path().join("data/acme"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .unwrap()
        .path();
    let account: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&account_file).unwrap()).unwrap();
    let account_key = account["credentials"]["key_pkcs8"]
        .as_str()
        .expect("the stored account key")
        .to_string();
    let cert_key =
        std::fs::read_to_string(dir.path().join("data/certs/secret.example.test/key.pem")).unwrap();
    let key_body: Vec<&str> = cert_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!logs.contains("PRIVATE KEY"));
    assert!(!logs.contains(EAB_HMAC), "the EAB HMAC key was logged");
    let eab_bytes = base64_decode(EAB_HMAC);
    assert!(
        !logs.contains(&hex(&eab_bytes)),
        "the EAB HMAC key was logged in hex"
    );
    // The account key: its private scalar in every encoding a leak would use (the JWK
    // `d`, hex, base64), and the stored PKCS#8 text past its fixed header.
    let account_der = base64_decode(&account_key);
    let cert_der = base64_decode(&key_body.concat());
    for (what, der) in [("account", &account_der), ("certificate", &cert_der)] {
        let d = p256_scalar(der).unwrap_or_else(|| panic!("no P-256 scalar in the {what} key"));
        for encoded in secret_encodings(&d) {
            assert!(
                !logs.contains(&encoded),
                "the {what} key's private scalar was logged as {encoded}"
            );
        }
    }
    assert!(
        !logs.contains(&account_key[account_key.len() - 40..]),
        "the stored account key was logged"
    );
    for line in key_body {
        assert!(
            !logs.contains(line),
            "a line of the certificate key was logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_order_says_no_certificate_exists_and_counts_no_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::pebble::free_port();
    let config = format!(
        "{}[admin]\nbind = \"127.0.0.1:0\"\n[acme]\ndirectory = \"https://127.0.0.1:{port}/dir\"\nchallenge = \"tls-alpn-01\"\nretry_backoff = \"30s\"\n",
        acme_cert("\"first.example.test\"", dir.path())
    );
    let wssd = Wssd::start(dir.path(), &config);
    wssd.wait_for_logs("ACME order failed", 1, Duration::from_secs(30))
        .await;
    // The start-up reload's retries of the missing pair take ~2 s: wait them out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = wssd.logs();
    let failed = logs
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    assert!(failed.contains("no certificate exists yet"), "{failed}");
    assert!(!logs.contains("keeps serving"), "{logs}");
    assert!(!logs.contains("certificate_refused"), "{logs}");
    let admin = wssd.logged_addr("admin server listening");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wssd_certificate_reloads_total{result=\"error\"}"),
        Some(0.0),
        "{metrics}"
    );
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("not loaded yet"), "{body}");
}

/// Standard or URL-safe base64, with or without padding.
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let standard = clean.replace('-', "+").replace('_', "/");
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(standard.trim_end_matches('='))
        .expect("base64")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32-byte private scalar of a P-256 key in PKCS#8 (RFC 5915's ECPrivateKey inside:
/// version 1, then the scalar as a 32-byte OCTET STRING).
fn p256_scalar(pkcs8: &[u8]) -> Option<Vec<u8>> {
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])?;
    pkcs8.get(at + 5..at + 37).map(<[u8]>::to_vec)
}

/// How a 32-byte secret would look in a log: base64url (JWK `d`), base64, hex.
fn secret_encodings(secret: &[u8]) -> Vec<String> {
    use base64::Engine;
    let e = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Leaks are often partial: any 16-character run of the encodings gives it away.
    let whole = [
        url.encode(secret),
        e.encode(secret),
        hex(secret),
        hex(secret).to_uppercase(),
    ];
    whole
        .iter()
        .flat_map(|w| {
            [
                w[..16].to_string(),
                w[w.len() / 2..w.len() / 2 + 16].to_string(),
            ]
        })
        .collect()
}
