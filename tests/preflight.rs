//! `wssd check` runs every start-up precondition `wssd run` runs, and says so on its first
//! line: a `data_dir` open to others, two servers on one address, a port below 1024
//! without the capability. And error texts say each cause once and name the key whose
//! address failed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::pebble::free_port;
use common::*;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wssd check` and `wssd run` on `config` (in `dir`): both must refuse, with `needle` in
/// check's first line and in both error messages.
fn both_refuse(dir: &Path, config: &str, needle: &str) {
    let path = write_config(dir, config);
    let out = wssd_cmd(dir, &["check", "--config", &path]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap_or("");
    assert!(first.contains("INVALID"), "first line: {first}\n{stdout}");
    assert!(!stdout.contains("configuration is valid"), "{stdout}");
    assert!(stderr.contains(needle), "check: {stderr}");
    assert!(stdout.contains(needle), "check: {stdout}");
    let out = wssd_cmd(dir, &["run", "--config", &path]);
    let (_, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.lines().last().unwrap_or("").contains(needle),
        "run: {stderr}"
    );
}

fn selfsigned(dir: &Path, listener: &str, tail: &str) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\n{listener}\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n{tail}",
        dir.join("data").display()
    )
}

#[test]
fn a_data_dir_open_to_others_fails_check_as_it_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    both_refuse(
        dir.path(),
        &selfsigned(dir.path(), "bind = \"127.0.0.1:0\"", ""),
        &format!("chmod 700 {}", data.display()),
    );
}

#[test]
fn two_servers_on_one_address_fail_check_as_they_fail_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    both_refuse(
        dir.path(),
        &selfsigned(
            dir.path(),
            &format!("bind = \"127.0.0.1:{port}\""),
            &format!("[admin]\nbind = \"127.0.0.1:{port}\"\n"),
        ),
        &format!("[listener] bind and [admin] bind are both 127.0.0.1:{port}"),
    );
    // The http-01 responder's port against the admin server on every address.
    let other = free_port();
    let config = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"0.0.0.0:{other}\"\n[[certificate]]\ndomains = [\"a.example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nchallenge = \"http-01\"\nhttp01_bind = \"127.0.0.1:{other}\"\n",
        dir.path().join("data2").display()
    );
    both_refuse(
        dir.path(),
        &config,
        &format!("[admin] bind and [acme] http01_bind are both 0.0.0.0:{other}"),
    );
}

#[test]
fn a_low_port_without_the_capability_fails_check_as_it_fails_run() {
    if Command::new("setpriv").arg("--version").output().is_err() {
        panic!("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &selfsigned(dir.path(), "bind = \"127.0.0.1:443\"", ""),
    );
    // Without CAP_NET_BIND_SERVICE (root keeps its other capabilities).
    let run = |command: &str| {
        Command::new("setpriv")
            .args([
                "--bounding-set",
                "-net_bind_service",
                "--inh-caps",
                "-net_bind_service",
                WSSD,
                command,
                "--config",
                &path,
            ])
            .current_dir(dir.path())
            .env("XDG_DATA_HOME", dir.path().join("xdg"))
            .output()
            .unwrap()
    };
    let out = run("check");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.lines().next().unwrap().contains("INVALID"),
        "{stdout}"
    );
    assert!(
        stderr.contains("[listener] bind = 127.0.0.1:443")
            && stderr.contains("CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
    let out = run("run");
    let (_, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("CAP_NET_BIND_SERVICE"), "{stderr}");
    // The same port from `run --listen`: the error names the flag, not the key.
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-net_bind_service",
            "--inh-caps",
            "-net_bind_service",
        ])
        .args([WSSD, "run", "--config", &path, "--listen", "127.0.0.1:444"])
        .current_dir(dir.path())
        .env("XDG_DATA_HOME", dir.path().join("xdg"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("--listen 127.0.0.1:444: ports below")
            && !stderr.contains("[listener] bind ="),
        "{stderr}"
    );
    // With the capability (root here), the same config is valid.
    let out = wssd_cmd(dir.path(), &["check", "--config", &path]);
    let (stdout, stderr) = text(&out);
    if nix_is_root() {
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stdout
                .lines()
                .next()
                .unwrap()
                .ends_with("configuration is valid")
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn an_invalid_files_pair_makes_the_first_line_say_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    std::fs::write(tls.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(tls.join("key.pem"), "not a key").unwrap();
    let path = write_config(dir.path(), &files_config(dir.path(), "", ""));
    let out = wssd_cmd(dir.path(), &["check", "--config", &path]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout.lines().next().unwrap().contains("INVALID"),
        "{stdout}"
    );
}

#[test]
fn errors_say_each_cause_once_and_name_the_key_whose_bind_failed() {
    let dir = tempfile::tempdir().unwrap();
    let out = wssd_cmd(dir.path(), &["run", "--config", "missing.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    let out = wssd_cmd(dir.path(), &["selfsigned", "--out-dir", "/proc/no/such"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");

    // An address another process holds: the key is named, the cause said once.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let path = write_config(
        dir.path(),
        &selfsigned(
            dir.path(),
            "bind = \"127.0.0.1:0\"",
            &format!("[admin]\nbind = \"127.0.0.1:{port}\"\n"),
        ),
    );
    let out = wssd_cmd(dir.path(), &["run", "--config", &path]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains(&format!("[admin] bind = 127.0.0.1:{port}: cannot listen")),
        "{last}"
    );
    assert_eq!(last.matches("Address already in use").count(), 1, "{last}");
}

#[test]
fn an_account_file_or_a_dev_ca_key_open_to_others_fails_check_and_run() {
    use std::os::unix::fs::PermissionsExt;
    // The dev CA's key.
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let text = selfsigned(dir.path(), "bind = \"127.0.0.1:0\"", "").replace(
        "[listener]",
        &format!("ca_dir = \"{}\"\n[listener]", ca_dir.display()),
    );
    let path = write_config(dir.path(), &text);
    assert!(
        wssd_cmd(dir.path(), &["issue", "--config", &path])
            .status
            .success()
    );
    let key = ca_dir.join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    both_refuse(dir.path(), &text, &format!("chmod 600 {}", key.display()));

    // An ACME account file (the CA is never contacted: the check comes first).
    let dir = tempfile::tempdir().unwrap();
    let acme = dir.path().join("data/acme");
    std::fs::create_dir_all(&acme).unwrap();
    std::fs::set_permissions(
        dir.path().join("data"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let account = acme.join("account-0011223344556677.json");
    std::fs::write(&account, "{}").unwrap();
    std::fs::set_permissions(&account, std::fs::Permissions::from_mode(0o604)).unwrap();
    let text = format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"a.example.test\"]\nsource = \"acme\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nchallenge = \"tls-alpn-01\"\n",
        dir.path().join("data").display()
    );
    both_refuse(
        dir.path(),
        &text,
        &format!("chmod 600 {}", account.display()),
    );
}
