//! `wssd issue` and `wssd status` with dev-CA certificates: one pass issues what is
//! missing, runs the deploy hook with its environment, and a second pass changes nothing.

mod common;

use common::*;
use pki_types::pem::PemObject;

#[test]
fn issue_writes_missing_certificates_runs_the_hook_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let hook_out = dir.path().join("hook.out");
    let config = format!(
        r#"data_dir = "{data}"
ca_dir = "{ca}"

[[certificate]]
domains = ["localhost", "127.0.0.1"]
source = "selfsigned"
deploy_hook = "echo \"$WSSD_DOMAINS|$WSSD_CERT_FILE|$WSSD_KEY_FILE\" >> {out}"
"#,
        data = dir.path().join("data").display(),
        ca = dir.path().join("ca").display(),
        out = hook_out.display(),
    );
    let path = dir.path().join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();

    let first = wssd_cmd(dir.path(), &["issue", "--config", path]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("issued serial"));
    let cert = dir.path().join("data/certs/localhost/cert.pem");
    let key = dir.path().join("data/certs/localhost/key.pem");
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap(),
        format!("localhost,127.0.0.1|{}|{}\n", cert.display(), key.display())
    );
    let issued = std::fs::read(&cert).unwrap();

    let second = wssd_cmd(dir.path(), &["issue", "--config", path]);
    assert_eq!(second.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&second.stdout).contains("not due"));
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        issued,
        "a fresh certificate is not issued again"
    );
    assert_eq!(
        std::fs::read_to_string(&hook_out).unwrap().lines().count(),
        1,
        "the hook runs only for new certificates"
    );

    let status = wssd_cmd(dir.path(), &["status", "--config", path, "--json"]);
    assert_eq!(status.status.code(), Some(0));
    let entries: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let entry = &entries[0];
    assert_eq!(entry["source"], "selfsigned");
    assert_eq!(entry["days_left"], 89);
    assert_eq!(entry["renewal_reason"], "last third of the lifetime");
    let summary = wssd::cert::inspect::CertSummary::from_der(
        &pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .next()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["serial"], summary.serial.as_str());
}

#[test]
fn a_failing_hook_is_reported_but_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\nca_dir = \"{}\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\ndeploy_hook = \"echo reload refused >&2; exit 3\"\n",
        dir.path().join("data").display(),
        dir.path().join("ca").display()
    );
    let path = dir.path().join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    let out = wssd_cmd(dir.path(), &["issue", "--config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the certificate is valid; the hook failure is logged"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit status: 3") && err.contains("reload refused"),
        "{err}"
    );
}

#[test]
fn a_hook_that_leaves_a_background_process_does_not_hold_wssd() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\nca_dir = \"{}\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\ndeploy_hook = \"sleep 30 &\"\n",
        dir.path().join("data").display(),
        dir.path().join("ca").display()
    );
    let path = dir.path().join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    let started = std::time::Instant::now();
    let out = wssd_cmd(dir.path(), &["issue", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "wssd waited for the hook's background child"
    );
}
