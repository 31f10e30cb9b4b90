//! The command line's habits, as a user meets them: the default config file for every
//! command that reads one, NO_COLOR, and JSON fatal errors under `--log-format json`.

mod common;

use std::process::Command;

use common::{WSSD, wssd_cmd};

const CONFIG: &str = "[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n";

#[test]
fn check_status_and_issue_read_the_wssd_toml_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wssd.toml"), CONFIG).unwrap();
    for args in [&["check"][..], &["issue"], &["status", "--json"]] {
        let out = wssd_cmd(dir.path(), args);
        assert!(
            out.status.success(),
            "wssd {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `issue` made the certificate the config names, and `status` shows it.
    let out = wssd_cmd(dir.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["domains"][0], "localhost", "{status}");
    assert!(status[0]["serial"].is_string(), "{status}");
}

#[test]
fn without_a_config_the_error_says_where_it_looked_and_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["check", "issue", "status"] {
        let out = wssd_cmd(dir.path(), &[command]);
        assert_eq!(out.status.code(), Some(2), "wssd {command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no --config given and no ./wssd.toml in")
                && err.contains("pass --config FILE"),
            "wssd {command}: {err}"
        );
    }
}

#[test]
fn a_fatal_error_is_one_json_object_under_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = wssd_cmd(
        dir.path(),
        &["--log-format", "json", "check", "--config", "missing.toml"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["exit_code"], 2);
    assert!(
        line["message"].as_str().unwrap().contains("missing.toml"),
        "{line}"
    );
    assert!(line["timestamp"].is_string());
    // Text, by default.
    let out = wssd_cmd(dir.path(), &["check", "--config", "missing.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("wssd: error: "));
}

/// `wssd run` for two seconds on a terminal (script(1) gives it one); what it printed.
fn run_on_a_terminal(dir: &std::path::Path, no_color: Option<&str>) -> String {
    std::fs::write(dir.join("wssd.toml"), CONFIG).unwrap();
    let mut command = Command::new("script");
    command
        .args([
            "-q",
            "-e",
            "-c",
            &format!("timeout -s INT 2 {WSSD} run"),
            "/dev/null",
        ])
        .current_dir(dir)
        .env("XDG_DATA_HOME", dir.join("xdg"))
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let out = command.output().expect("script(1), from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_turns_the_colours_of_the_log_off_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let coloured = run_on_a_terminal(dir.path(), None);
    assert!(coloured.contains("listening"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colours: {coloured:?}"
    );
    let plain = run_on_a_terminal(dir.path(), Some("1"));
    assert!(plain.contains("listening"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR=1: {plain:?}");
    // An empty NO_COLOR does not count (no-color.org).
    let empty = run_on_a_terminal(dir.path(), Some(""));
    assert!(empty.contains("\x1b["), "{empty:?}");
}

#[test]
fn the_man_page_covers_every_command_and_points_at_no_missing_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = wssd_cmd(dir.path(), &["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    for command in [
        "RUN",
        "SELFSIGNED",
        "ISSUE",
        "PROBE",
        "CHECK",
        "COMPLETIONS",
        "MAN",
        "STATUS",
        "TRUST",
        "UNTRUST",
    ] {
        assert!(
            page.contains(&format!(".SH \"WSSD {command}\"")),
            "no section for {command}"
        );
    }
    // A flag of each command that has flags.
    for flag in [
        "\\-\\-out\\-dir",
        "\\-\\-expect\\-days",
        "\\-\\-connect\\-to",
        "\\-\\-json",
        "\\-\\-config",
        "\\-\\-log\\-format",
    ] {
        assert!(page.contains(flag), "{flag} is not in the page");
    }
    assert!(
        !page.contains("wssd\\-run(1)"),
        "names a page that does not exist"
    );
    // man(1) renders it without warnings.
    let path = dir.path().join("wssd.1");
    std::fs::write(&path, page.as_bytes()).unwrap();
    if let Ok(out) = std::process::Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
    {
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{warnings}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("WSSD PROBE"));
    }
}
