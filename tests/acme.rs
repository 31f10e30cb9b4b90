//! ACME against a real CA (Pebble): every challenge type, multi-SAN orders with an IP
//! address, the account kept and reused, EAB, nonce trouble, refusals and faults.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

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
