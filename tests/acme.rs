//! ACME against a real CA (Pebble): every challenge type, multi-SAN orders with an IP
//! address, the account kept and reused, EAB, nonce trouble, refusals and faults.

mod common;

use std::time::Duration;

use common::pebble::*;
use common::*;
use pki_types::ServerName;

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
    // A new order (the certificate removed) reuses the stored account: the same file,
    // the same account URL, and Pebble saw one newAccount request in all.
    let account_file = accounts[0].path();
    let stored_before = std::fs::read_to_string(&account_file).unwrap();
    drop(_busy);
    std::fs::remove_dir_all(dir.path().join("data/certs/web.example.test")).unwrap();
    let third = wssd_cmd(dir.path(), &["issue", "--config", &path]);
    let stdout = String::from_utf8_lossy(&third.stdout);
    assert_eq!(
        third.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert!(stdout.contains("issued serial"), "{stdout}");
    assert_ne!(
        assert_chain_verifies(&pebble, &cert_file, &["web.example.test"]),
        serial
    );
    let stored_after = std::fs::read_to_string(&account_file).unwrap();
    assert_eq!(
        stored_after, stored_before,
        "the account file was rewritten"
    );
    let url = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()["credentials"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        url(&stored_after).starts_with("https://127.0.0.1:"),
        "{stored_after}"
    );
    // Pebble logs each account it creates. (Counting `POST /sign-me-up` would count the
    // retry of a request whose nonce Pebble rejected, as it does with 5% of them here.)
    let log = pebble.log();
    assert_eq!(
        log.matches("accounts in memory").count(),
        1,
        "a second account was made:\n{log}"
    );
    assert!(log.contains("There are now 1 accounts in memory"), "{log}");
    assert_eq!(log.matches("Issued certificate serial").count(), 2, "{log}");
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
    issue(dir.path(), &config, 0);
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
    let hook_log = dir.path().join("hook.log");
    let base = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[[certificate]]\ndomains = [\"renew.example.test\"]\nsource = \"acme\"\ndeploy_hook = \"echo $WSSD_DOMAINS >> {}\"\n",
        dir.path().join("data").display(),
        pebble.tls_port,
        hook_log.display()
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
    // The deploy hook ran after the first certificate (wssd issue) and after the renewal.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&hook_log)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook did not run after the renewal:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        "renew.example.test\nrenew.example.test\n"
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
    issue(dir.path(), &config, 0);
    assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/nonce.example.test/cert.pem"),
        &["www.nonce.example.test"],
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
    let (stdout, _) = issue(dir.path(), &config, 0);
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

#[test]
fn a_certificate_shorter_than_the_clock_skew_allowance_is_accepted() {
    // step-ca issues 5-minute certificates; wssd tolerates a CA that does not backdate
    // not_before by checking it 5 minutes ahead, and that shift must not reach not_after.
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            validity_secs: Some(240),
            ..Default::default()
        },
    );
    let config = format!(
        "{}{}",
        acme_cert("\"short.example.test\"", dir.path()),
        pebble.acme_section("http-01", "")
    );
    let (stdout, _) = issue(dir.path(), &config, 0);
    assert!(stdout.contains("issued serial"), "{stdout}");
    assert_chain_verifies(
        &pebble,
        &dir.path().join("data/certs/short.example.test/cert.pem"),
        &["short.example.test"],
    );
}

/// The renewal moment as `wssd issue` prints it ("renews from <time>: ...").
fn renews_from(stdout: &str) -> String {
    stdout
        .split("renews from ")
        .nth(1)
        .and_then(|rest| rest.split(':').take(3).collect::<Vec<_>>().join(":").into())
        .map(|t: String| t.trim().to_string())
        .unwrap_or_else(|| panic!("no renewal time in {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_schedule_per_certificate_whichever_command_asks() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), PebbleOptions::default());
    let base = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"plan.example.test\"]\nsource = \"acme\"\n{}",
        dir.path().join("data").display(),
        pebble.tls_port,
        pebble.acme_section("tls-alpn-01", "")
    );
    let path = write_config(dir.path(), &base);
    let wssd = Wssd::start(dir.path(), &base);
    wssd.wait_for_logs("next ACME renewal", 1, Duration::from_secs(60))
        .await;
    let daemon_next = wssd
        .logs()
        .lines()
        .find(|l| l.contains("next ACME renewal"))
        .and_then(|l| l.split("next=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let admin = wssd.logged_addr("admin server listening");
    let (_, metrics) = http_get(admin, "/metrics").await;
    let metric_next = metrics
        .lines()
        .find(|l| l.starts_with("wssd_certificate_next_renewal_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{metrics}"));

    // Three one-shot passes beside the daemon: each finds the certificate fresh and
    // prints the same moment, and none moves the daemon's schedule.
    let mut printed = Vec::new();
    for _ in 0..3 {
        let out = wssd_cmd(dir.path(), &["issue", "--config", &path]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("not due"), "{stdout}");
        printed.push(renews_from(&stdout));
    }
    assert!(
        printed.iter().all(|p| *p == daemon_next),
        "issue printed {printed:?}, the daemon plans {daemon_next}"
    );
    let status = wssd_cmd(dir.path(), &["status", "--config", &path, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json[0]["next_renewal"], daemon_next.as_str(), "{json}");
    let at = humantime::parse_rfc3339(&daemon_next)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(metric_next, at as f64, "the metric says the same");
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains(&format!(" {at}\n")) || metrics.ends_with(&format!(" {at}")),
        "still the same after the passes: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_never_closes_orders_no_sooner_than_a_third_of_the_lifetime() {
    // A 24 s certificate with renew_before = 8d: the renewal window is open from the
    // moment of issuance, and only the floor (a third of the lifetime, 8 s) spaces orders.
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        PebbleOptions {
            validity_secs: Some(24),
            ..Default::default()
        },
    );
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[[certificate]]\ndomains = [\"floor.example.test\"]\nsource = \"acme\"\n{}",
        dir.path().join("data").display(),
        pebble.tls_port,
        pebble.acme_section("tls-alpn-01", "renew_before = \"8d\"")
    );
    let wssd = Wssd::start(dir.path(), &config);
    let issued = "certificate issued by the CA and stored";
    wssd.wait_for_logs(issued, 3, Duration::from_secs(60)).await;
    let at: Vec<std::time::SystemTime> = wssd
        .logs()
        .lines()
        .filter(|l| l.contains(issued))
        .map(|l| humantime::parse_rfc3339(l.split_whitespace().next().unwrap()).unwrap())
        .collect();
    for pair in at.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap >= Duration::from_millis(7_500),
            "ordered again after {gap:?}, under a third of the 24 s lifetime:\n{}",
            wssd.logs()
        );
    }
    assert!(
        wssd.count_logs("waiting a third of the lifetime") >= 2,
        "the documented warning is missing:\n{}",
        wssd.logs()
    );
}
