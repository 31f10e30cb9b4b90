//! ACME against a real CA (Pebble): every challenge type, multi-SAN orders with an IP
//! address, the account kept and reused, EAB, nonce trouble, refusals and faults.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pebble::{EAB_HMAC, EAB_KID, Pebble, PebbleOptions};
use common::*;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;

/// Verifies the chain in `cert_file` against Pebble's root, for every name.
fn assert_chain_verifies(pebble: &Pebble, cert_file: &Path, names: &[&str]) -> String {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(chain.len() >= 2, "the full chain is stored, leaf first");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pebble.root_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), wssd::tls::provider())
        .build()
        .unwrap();
    for name in names {
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(*name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    wssd::cert::inspect::CertSummary::from_der(&chain[0])
        .unwrap()
        .serial
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("wssd.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn acme_cert(domains: &str, dir: &Path) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [{domains}]\nsource = \"acme\"\n",
        dir.join("data").display()
    )
}

#[test]
fn http01_issues_a_multi_san_certificate_and_a_second_pass_orders_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let config = format!(
        "{}{}",
        acme_cert("\"web.example.test\", \"127.0.0.1\"", dir.path()),
        pebble.acme_section("http-01", "")
    );
    let path = write_config(dir.path(), &config);

    let first = wssd_cmd(dir.path(), &["issue", "--config", &path]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("issued serial"), "{stdout}");
    let cert_file = dir.path().join("data/certs/web.example.test/cert.pem");
    let serial = assert_chain_verifies(&pebble, &cert_file, &["web.example.test", "127.0.0.1"]);

    // The account is stored privately and reused.
    let accounts: Vec<_> = std::fs::read_dir(dir.path().join("data/acme"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        accounts[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = dir.path().join("data/certs/web.example.test/key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // With nothing due, a pass needs no responder: it works while the port is taken
    // (as it is when `wssd run` holds it).
    let _busy = std::net::TcpListener::bind(("127.0.0.1", pebble.http_port)).unwrap();
    let second = wssd_cmd(dir.path(), &["issue", "--config", &path]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("not due"), "{stdout}");
    let again = assert_chain_verifies(&pebble, &cert_file, &["web.example.test"]);
    assert_eq!(
        again, serial,
        "a fresh certificate must not be ordered again"
    );

    let status = wssd_cmd(dir.path(), &["status", "--config", &path, "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(entries[0]["serial"], serial.as_str());
    assert!(
        entries[0]["renewal_reason"]
            .as_str()
            .unwrap()
            .contains("last third"),
        "{entries}"
    );
}

/// A client config trusting Pebble's root (for certificates Pebble issued).
fn pebble_client(pebble: &Pebble) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(&pebble.root_pem())
}

#[test]
fn dns01_issues_a_wildcard_through_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let log = dir.path().join("hook.log");
    let hook = pebble.dns_hook(dir.path(), &log);
    let extra = format!("dns01_hook = \"{}\"", hook.display());
    let config = format!(
        "{}{}",
        acme_cert("\"dns.example.test\", \"*.dns.example.test\"", dir.path()),
        pebble.acme_section("dns-01", &extra)
    );
    let path = write_config(dir.path(), &config);
    let out = wssd_cmd(dir.path(), &["issue", "--config", &path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/dns.example.test/cert.pem"),
        &["dns.example.test", "anything.dns.example.test"],
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let sets = calls
        .lines()
        .filter(|l| l.starts_with("set _acme-challenge.dns.example.test "))
        .count();
    let clears = calls
        .lines()
        .filter(|l| l.starts_with("clear _acme-challenge.dns.example.test "))
        .count();
    assert_eq!(
        (sets, clears),
        (2, 2),
        "one TXT record per authorization, each cleared:\n{calls}"
    );
}

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
    let out = wssd_cmd(
        dir.path(),
        &["issue", "--config", &write_config(dir.path(), &config)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zone example.test is read-only") && err.contains("exit status: 7"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_through_the_live_listener_leaves_20_clients_undisturbed() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    // certificate[0]: the one the 20 clients use; certificate[1]: ordered over tls-alpn-01
    // on the same listener (Pebble validates on its tlsPort, so wssd listens there).
    let config = format!(
        "data_dir = \"{data}\"\n[listener]\nbind = \"127.0.0.1:{port}\"\n\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"files\"\ncert_file = \"{tls}/cert.pem\"\nkey_file = \"{tls}/key.pem\"\n\n[[certificate]]\ndomains = [\"alpn.example.test\"]\nsource = \"acme\"\n\n{acme}",
        data = dir.path().join("data").display(),
        port = pebble.tls_port,
        tls = dir.path().join("tls").display(),
        acme = pebble.acme_section("tls-alpn-01", ""),
    );
    let wssd = Wssd::start(dir.path(), &config);
    let load = Load::start(wssd.addr, &client_config(&ca.cert_pem), 20).await;
    load.progress(100).await;
    wssd.wait_for_logs(
        "certificate issued by the CA and stored",
        1,
        Duration::from_secs(60),
    )
    .await;
    let pebble_client = pebble_client(&pebble);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match served_serial_for(wssd.addr, &pebble_client, "alpn.example.test").await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the ACME certificate is not served: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.progress(100).await;
    load.finish().await;
    assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/alpn.example.test/cert.pem"),
        &["alpn.example.test"],
    );
    wssd.wait_for_logs(
        "answered a tls-alpn-01 validation",
        1,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_in_run_swaps_to_a_new_serial_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let week = 7 * 86_400;
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            validity_secs: Some(week),
            ..Default::default()
        },
    );
    let base = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[[certificate]]\ndomains = [\"renew.example.test\"]\nsource = \"acme\"\n",
        dir.path().join("data").display(),
        pebble.tls_port
    );
    // A first certificate, from a one-shot pass.
    let path = write_config(
        dir.path(),
        &format!("{base}{}", pebble.acme_section("tls-alpn-01", "")),
    );
    let out = wssd_cmd(dir.path(), &["issue", "--config", &path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/renew.example.test/cert.pem"),
        &["renew.example.test"],
    );

    // The daemon, with a renewal window that is already open (8 days of a 7-day lifetime).
    let config = format!(
        "{base}{}",
        pebble.acme_section("tls-alpn-01", "renew_before = \"8d\"")
    );
    let wssd = Wssd::start(dir.path(), &config);
    let client = pebble_client(&pebble);
    let mut live = Vec::new();
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(wssd.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client.clone())
            .connect(ServerName::try_from("renew.example.test").unwrap(), tcp)
            .await
            .unwrap();
        let url = format!("wss://renew.example.test:{}/", wssd.addr.port());
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let (ws, _) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls)
            .await
            .unwrap();
        live.push(ws);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let serial = served_serial_for(wssd.addr, &client, "renew.example.test")
            .await
            .unwrap();
        if serial != first {
            break serial;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (i, ws) in live.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}")).await.unwrap();
    }
    assert_eq!(
        assert_chain_verifies(
            &pebble,
            &dir.path().join("data/certs/renew.example.test/cert.pem"),
            &["renew.example.test"]
        ),
        renewed
    );
    // It does not keep ordering: the next attempt waits a third of the lifetime.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        wssd.count_logs("certificate issued by the CA and stored"),
        1,
        "{}",
        wssd.logs()
    );
}

#[test]
fn external_account_binding_with_the_right_key_and_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            eab_required: true,
            ..Default::default()
        },
    );
    let run = |name: &str, extra: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let config = format!(
            "{}{}",
            acme_cert("\"eab.example.test\"", &sub),
            pebble.acme_section("http-01", extra)
        );
        wssd_cmd(&sub, &["issue", "--config", &write_config(&sub, &config)])
    };
    let good = run(
        "good",
        &format!("eab_kid = \"{EAB_KID}\"\neab_hmac_key = \"{EAB_HMAC}\""),
    );
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let wrong_key = EAB_HMAC.replace('z', "y");
    let bad = run(
        "bad",
        &format!("eab_kid = \"{EAB_KID}\"\neab_hmac_key = \"{wrong_key}\""),
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("check eab_kid and eab_hmac_key"), "{err}");
    assert!(
        !err.contains(&wrong_key),
        "the HMAC key must not be printed: {err}"
    );
    let none = run("none", "");
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr)
            .to_lowercase()
            .contains("external"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

#[test]
fn issuance_survives_half_the_nonces_being_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            nonce_reject: Some(50),
            ..Default::default()
        },
    );
    let config = format!(
        "{}{}",
        acme_cert(
            "\"nonce.example.test\", \"www.nonce.example.test\"",
            dir.path()
        ),
        pebble.acme_section("http-01", "")
    );
    let out = wssd_cmd(
        dir.path(),
        &["issue", "--config", &write_config(dir.path(), &config)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/nonce.example.test/cert.pem"),
        &["www.nonce.example.test"],
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
    let out = wssd_cmd(
        dir.path(),
        &["issue", "--config", &write_config(dir.path(), &config)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
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
    let out = wssd_cmd(
        dir.path(),
        &["issue", "--config", &write_config(dir.path(), &config)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
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

#[test]
fn one_pass_orders_several_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let mut config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n",
        dir.path().join("data").display()
    );
    for name in ["one", "two", "three"] {
        config.push_str(&format!(
            "[[certificate]]\ndomains = [\"{name}.example.test\"]\nsource = \"acme\"\n"
        ));
    }
    config.push_str(&pebble.acme_section("http-01", ""));
    let out = wssd_cmd(
        dir.path(),
        &["issue", "--config", &write_config(dir.path(), &config)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        assert!(
            lines[i].starts_with(&format!(
                "certificate[{i}] {name}.example.test: issued serial"
            )),
            "{stdout}"
        );
        assert_chain_verifies(
            &pebble,
            &dir.path()
                .join(format!("data/certs/{name}.example.test/cert.pem")),
            &[&format!("{name}.example.test")],
        );
    }
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
    assert!(
        !logs.contains(&account_key[..40]),
        "the account key was logged"
    );
    for line in key_body {
        assert!(
            !logs.contains(line),
            "a line of the certificate key was logged"
        );
    }
}
