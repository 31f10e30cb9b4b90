//! `wssd selfsigned`: a leaf from the persistent dev CA that verifies, with the asked-for
//! names, a private key file only its owner can read, and the same CA on every run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

fn chain(path: &std::path::Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn leaf_verifies_against_the_ca_with_the_requested_names() {
    let home = tempfile::tempdir().unwrap();
    let out_dir = home.path().join("certs");
    let ca_dir = home.path().join("ca");
    let out = wssd_cmd(
        home.path(),
        &[
            "selfsigned",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--domain",
            "app.test",
            "--domain",
            "10.1.2.3",
            "--domain",
            "::1",
            "--days",
            "30",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "SHA-256 fingerprint",
        "update-ca-certificates",
        "certutil",
        "security add-trusted-cert",
        "created now",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }

    // rustls/webpki: the chain verifies for each name.
    let certs = chain(&out_dir.join("cert.pem"));
    assert_eq!(certs.len(), 2, "cert.pem is the leaf, then the CA");
    let mut roots = rustls::RootCertStore::empty();
    for ca in chain(&out_dir.join("ca.pem")) {
        roots.add(ca).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), wssd::tls::provider())
        .build()
        .unwrap();
    for name in ["app.test", "10.1.2.3", "::1"] {
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(
        verifier
            .verify_server_cert(
                &certs[0],
                &[],
                &ServerName::try_from("other.test").unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err()
    );

    // openssl agrees.
    let openssl = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out_dir.join("ca.pem"))
        .arg(out_dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stdout)
    );
    assert!(String::from_utf8_lossy(&openssl.stdout).contains(": OK"));

    // Names, EKU, validity; the CA is CA:TRUE with pathlen 0.
    let (_, leaf) = X509Certificate::from_der(&certs[0]).unwrap();
    let summary = wssd::cert::inspect::CertSummary::from_der(&certs[0]).unwrap();
    assert_eq!(summary.dns_names, ["app.test"]);
    assert_eq!(
        summary.ip_addresses,
        [
            "10.1.2.3".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert!(
        leaf.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    let lifetime = summary.lifetime();
    assert!(
        lifetime > Duration::from_secs(30 * 86_400) && lifetime < Duration::from_secs(31 * 86_400)
    );
    let (_, ca) = X509Certificate::from_der(&certs[1]).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert_eq!(
        ca.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "ECDSA"
    );

    // Key and CA key are private; the key is PKCS#8.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out_dir.join("key.pem")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&ca_dir) & 0o077, 0, "CA directory open to others");
    assert!(
        std::fs::read_to_string(out_dir.join("key.pem"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
}

#[test]
fn second_run_reuses_the_ca() {
    let home = tempfile::tempdir().unwrap();
    let run = |out: &str| {
        let out_dir = home.path().join(out);
        let output = wssd_cmd(
            home.path(),
            &["selfsigned", "--out-dir", out_dir.to_str().unwrap()],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            std::fs::read(out_dir.join("ca.pem")).unwrap(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            out_dir,
        )
    };
    let (ca1, out1, dir1) = run("one");
    let (ca2, out2, dir2) = run("two");
    assert_eq!(ca1, ca2, "the CA must be reused");
    assert!(
        out1.contains("created now") && out2.contains("reused"),
        "{out1}\n{out2}"
    );
    let fingerprint = |s: &str| {
        s.lines()
            .find(|l| l.contains("SHA-256"))
            .unwrap()
            .to_string()
    };
    assert_eq!(fingerprint(&out1), fingerprint(&out2));
    // The default CA lives in the platform data dir, and default names are the loopback ones.
    assert!(home.path().join("xdg/wssd/ca/ca.pem").exists());
    let leaf = &chain(&dir2.join("cert.pem"))[0];
    let summary = wssd::cert::inspect::CertSummary::from_der(leaf).unwrap();
    assert_eq!(summary.dns_names, ["localhost"]);
    assert_eq!(summary.ip_addresses.len(), 2);
    assert_ne!(
        std::fs::read(dir1.join("key.pem")).unwrap(),
        std::fs::read(dir2.join("key.pem")).unwrap()
    );
}

#[test]
fn processes_making_the_ca_at_once_end_up_with_one_ca_that_signed_every_leaf() {
    // `wssd run` and `wssd trust` started together on a fresh machine: one CA, made once,
    // and every leaf signed by the CA that is on disk. (Without the lock, a process read
    // a CA half made, or signed with a key another process then replaced.)
    let home = tempfile::tempdir().unwrap();
    let spawned: Vec<_> = (0..8)
        .map(|i| {
            Command::new(WSSD)
                .args(["selfsigned", "--out-dir"])
                .arg(home.path().join(format!("together{i}")))
                .env("XDG_DATA_HOME", home.path().join("fresh"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = spawned
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ca = std::fs::read(home.path().join("fresh/wssd/ca/ca.pem")).unwrap();
    let created = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("created now"))
        .count();
    assert_eq!(created, 1, "one process makes the CA");
    let ca_der = chain(&home.path().join("fresh/wssd/ca/ca.pem")).remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let verifier = WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "process {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = home.path().join(format!("together{i}"));
        assert_eq!(
            std::fs::read(dir.join("ca.pem")).unwrap(),
            ca,
            "process {i}"
        );
        let leaf = chain(&dir.join("cert.pem")).remove(0);
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("process {i}'s leaf: {e}"));
    }
}

#[test]
fn bad_domain_is_refused_with_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let out_dir = home.path().join("out");
    let out = wssd_cmd(
        home.path(),
        &[
            "selfsigned",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--domain",
            "bad name!",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad name!") && err.contains("not a valid DNS name"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written on bad input");
}

#[test]
fn unwritable_out_dir_is_refused_with_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out_dir = file.join("certs");
    let out = wssd_cmd(
        home.path(),
        &["selfsigned", "--out-dir", out_dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--out-dir") && err.contains("a-file/certs"),
        "{err}"
    );
}

#[test]
fn days_out_of_range_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = wssd_cmd(
        home.path(),
        &["selfsigned", "--out-dir", "x", "--days", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--days <N>'") && err.contains("0 is not in 1..=825"),
        "{err}"
    );
    // Refused before anything was made: no output directory, no CA.
    assert!(!home.path().join("x").exists(), "--out-dir was created");
    assert!(!home.path().join("xdg").exists(), "a CA was created");
    let out = wssd_cmd(
        home.path(),
        &["selfsigned", "--out-dir", "x", "--days", "826"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!home.path().join("x").exists());
}

/// A dev CA directory the user cannot write, when it is the default they never chose:
/// the error says it is the default and how to pick another. Needs root to drop to
/// `nobody` (root writes anywhere); skipped otherwise.
#[test]
fn an_unwritable_default_ca_dir_says_it_is_the_default_and_how_to_choose() {
    // The effective uid, from /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !root
        || std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv(1) to run as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_wssd"))
        .args(["selfsigned", "--out-dir"])
        .arg(dir.path().join("out"))
        .env("XDG_DATA_HOME", &xdg)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Permission denied")
            && err.contains("is the default dev CA directory")
            && err.contains("--ca-dir DIR"),
        "{err}"
    );
}

/// The printed Chrome/Chromium (NSS) command works as printed on a fresh HOME, where
/// ~/.pki/nssdb does not exist yet (it used to fail with SEC_ERROR_BAD_DATABASE), and
/// again on the second run. Skipped without certutil (libnss3-tools).
#[test]
fn the_printed_nss_trust_command_works_on_a_fresh_home() {
    if std::process::Command::new("certutil")
        .arg("-H")
        .output()
        .is_err()
    {
        eprintln!("skipped: no certutil (libnss3-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = common::wssd_cmd(
        dir.path(),
        &[
            "selfsigned",
            "--out-dir",
            dir.path().join("out").to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Chrome/Chromium"))
        .expect("an NSS line");
    let command = line.split_once("):").map(|(_, c)| c.trim()).unwrap();
    for run in 1..=2 {
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {run}: {command}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = std::process::Command::new("certutil")
        .args(["-L", "-d"])
        .arg(format!("sql:{}/.pki/nssdb", dir.path().display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("wssd dev CA"));
}
