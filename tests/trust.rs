//! `wssd trust` / `wssd untrust` against a throwaway HOME (its NSS database and two
//! Firefox profiles) and a throwaway system store root (Debian's update-ca-certificates
//! run on it). What they change is checked the way users meet it: curl without
//! `--cacert` (in a private mount namespace whose /etc/ssl/certs is the throwaway
//! root's) and headless Chromium (whose trust is $HOME/.pki/nssdb) accept the dev
//! certificate after `trust`, and refuse it again after `untrust`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::browser::chromium;
use common::*;

/// `wssd ARGS` with `HOME=home`, the dev CA under `home/xdg` (where `Wssd::spawn(home)`
/// puts it).
fn wssd_in(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(WSSD)
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("xdg"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run wssd");
    (out.status.code(), text(&out))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl without --cacert, its system store being `root`'s /etc/ssl/certs, bind-mounted
/// over the real one in a mount namespace of its own: curl's exit code and the status.
fn system_curl(root: &Path, url: &str) -> (Option<i32>, String) {
    let out = Command::new("unshare")
        .args([
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/ssl/certs && exec curl -sS --max-time 10 -o /dev/null -w '%{http_code}' \"$1\"",
        ])
        .arg(root.join("etc/ssl/certs"))
        .arg(url)
        .output()
        .expect("unshare");
    (out.status.code(), text(&out))
}

/// Whether the NSS database in `dir` holds wssd's CA.
fn nss_lists(dir: &Path) -> bool {
    Command::new("certutil")
        .args([
            "-L",
            "-d",
            &format!("sql:{}", dir.display()),
            "-n",
            "wssd dev CA",
        ])
        .output()
        .expect("certutil")
        .status
        .success()
}

/// A system root with Debian's CA list and bundle (as /etc has them) and no wssd CA.
fn system_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    std::fs::create_dir_all(root.join("usr/share")).unwrap();
    std::fs::copy(
        "/etc/ca-certificates.conf",
        root.join("etc/ca-certificates.conf"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/usr/share/ca-certificates",
        root.join("usr/share/ca-certificates"),
    )
    .unwrap();
    // Its bundle, as the real system's was built.
    let mut update = Command::new("update-ca-certificates");
    for (flag, path) in [
        ("--certsconf", "etc/ca-certificates.conf"),
        ("--certsdir", "usr/share/ca-certificates"),
        ("--localcertsdir", "usr/local/share/ca-certificates"),
        ("--etccertsdir", "etc/ssl/certs"),
        ("--hooksdir", "etc/ca-certificates/update.d"),
    ] {
        update.arg(flag).arg(root.join(path));
    }
    let out = update.output().expect("update-ca-certificates");
    assert!(out.status.success(), "{}", text(&out));
    root
}

#[test]
fn trust_then_untrust_changes_what_curl_and_chromium_accept() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let root = system_root(home);
    let root_arg = root.to_str().unwrap();
    // Two Firefox profiles, one relative to profiles.ini and one elsewhere; neither has
    // a certificate database yet.
    let firefox = home.join(".mozilla/firefox");
    std::fs::create_dir_all(firefox.join("abcd.default-release")).unwrap();
    let elsewhere = home.join("work-profile");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        firefox.join("profiles.ini"),
        format!(
            "[Profile1]\nName=default-release\nIsRelative=1\nPath=abcd.default-release\nDefault=1\n\n\
             [Profile0]\nName=work\nIsRelative=0\nPath={}\n\n[General]\nStartWithLastProfile=1\nVersion=2\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    let profiles = [firefox.join("abcd.default-release"), elsewhere.clone()];
    let nssdb = home.join(".pki/nssdb");

    // The dev mode, with the CA that trust is about to install.
    let wssd = Wssd::spawn(home, &["run", "--listen", "127.0.0.1:0"]);
    let url = format!("https://localhost:{}/", wssd.addr.port());
    let (code, said) = system_curl(&root, &url);
    assert_eq!(code, Some(60), "curl accepted an untrusted CA: {said}");

    // A dry run says what it would do and changes nothing.
    let (code, said) = wssd_in(home, &["trust", "--dry-run", "--system-root", root_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("would ").count(), 4, "{said}");
    assert!(
        !nssdb.exists() && !root.join("usr/local").exists(),
        "{said}"
    );

    let (code, said) = wssd_in(home, &["trust", "--system-root", root_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("  changed  ").count(), 4, "{said}");
    assert!(
        said.contains("created the database, added the CA"),
        "{said}"
    );
    assert!(nss_lists(&nssdb), "{said}");
    for profile in &profiles {
        assert!(nss_lists(profile), "{}: {said}", profile.display());
    }
    let (code, said) = system_curl(&root, &url);
    assert_eq!((code, said.as_str()), (Some(0), "426"), "curl after trust");
    let seen = chromium(home, &["load", &url]);
    assert_eq!(seen["ok"], true, "Chromium after trust: {seen}");
    assert_eq!(seen["status"], 200, "the test page: {seen}");

    // Again: nothing to do, and it says so.
    let (code, said) = wssd_in(home, &["trust", "--system-root", root_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("  no change  ").count(), 4, "{said}");

    let (code, said) = wssd_in(home, &["untrust", "--system-root", root_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("  changed  ").count(), 4, "{said}");
    assert!(!nss_lists(&nssdb));
    for profile in &profiles {
        assert!(!nss_lists(profile), "{}: {said}", profile.display());
    }
    let (code, said) = system_curl(&root, &url);
    assert_eq!(code, Some(60), "curl after untrust: {said}");
    // The system's own CAs are still in the bundle.
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 50);
    let seen = chromium(home, &["load", &url]);
    assert_eq!(seen["ok"], false, "Chromium after untrust: {seen}");
    assert!(
        seen["error"]
            .as_str()
            .unwrap()
            .contains("ERR_CERT_AUTHORITY_INVALID"),
        "{seen}"
    );

    let (code, said) = wssd_in(home, &["untrust", "--system-root", root_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(said.matches("  no change  ").count(), 4, "{said}");
}

#[test]
fn a_store_that_cannot_be_changed_is_named_and_exits_1_while_the_others_change() {
    let dir = tempfile::tempdir().unwrap();
    // As nobody: its own HOME and CA, and a system root that belongs to root.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = system_root(dir.path());
    for path in [dir.path(), home.as_path()] {
        let out = Command::new("chown")
            .args(["65534:65534"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(WSSD)
        .args(["trust", "--system-root"])
        .arg(&root)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("xdg"))
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let failed = said
        .lines()
        .find(|l| l.contains("FAILED"))
        .unwrap_or_else(|| panic!("no FAILED line: {said}"));
    assert!(
        failed.contains("system store") && failed.contains("Permission denied"),
        "{said}"
    );
    assert!(
        said.contains("  changed    NSS for Chrome/Chromium"),
        "the NSS database still changed: {said}"
    );
    assert!(said.contains("could not be changed"), "{said}");
}
