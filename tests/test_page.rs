//! The test page of an echo listener (the dev mode): a browser's plain GET gets a small
//! HTML page instead of the 426, and the page's WebSocket to itself gets the echo. Used
//! in headless Chromium as a person would (connect, send, see the echo and its round
//! trip, close with a code and reason), under the page's own strict CSP.

mod common;

use std::path::Path;
use std::process::Command;

use common::browser::chromium;
use common::*;

/// A fresh NSS database in `home` that trusts `ca`, as `wssd trust` would leave it.
fn trusting_home(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "wssd dev CA",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("certutil")
            .args(&args)
            .output()
            .expect("certutil");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_test_page_in_chromium_connects_sends_echoes_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let wssd = Wssd::spawn(dir.path(), &["run", "--listen", "127.0.0.1:0"]);
    let home = dir.path().join("home");
    trusting_home(&home, &dir.path().join("xdg/wssd/ca/ca.pem"));
    let port = wssd.addr.port();

    let url = format!("https://localhost:{port}/");
    let r = chromium(&home, &["testpage", &url]);
    assert_eq!(r["ok"], true, "{r}\n{}", wssd.logs());
    assert_eq!(r["status"], 200, "{r}");
    let csp = r["csp"].as_str().unwrap();
    assert!(
        csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r["url"], format!("wss://localhost:{port}/"));
    assert_eq!(r["protocol"], "(none)", "{r}");
    let sent = r["sent"].as_str().unwrap();
    let echo = r["echo"].as_str().unwrap();
    assert!(echo.starts_with(&format!("← {sent}")), "{r}");
    let rtt = r["rtt"].as_str().unwrap();
    let ms = rtt.strip_suffix(" ms").and_then(|n| n.parse::<f64>().ok());
    assert!(
        ms.is_some_and(|ms| ms >= 0.0),
        "round trip shown as {rtt:?}"
    );
    assert_eq!(
        r["closed"], "code 4001, reason \"bye from the test\"",
        "{r}"
    );
    // The script ran under the page's CSP without a single violation or error.
    assert_eq!(r["violations"], serde_json::json!([]), "{r}");
    assert_eq!(r["consoleErrors"], serde_json::json!([]), "{r}");

    // Another path, offering a subprotocol: the echo agrees to it, and the page shows it.
    let r = chromium(&home, &["testpage", &format!("{url}room/7?x=1"), "chat"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["url"], format!("wss://localhost:{port}/room/7?x=1"));
    assert_eq!(r["protocol"], "chat", "{r}");
    assert_eq!(
        r["closed"], "code 4001, reason \"bye from the test\"",
        "{r}"
    );
}

/// curl GET (or HEAD) with `accept`: status, content type and body.
fn get(ca: &Path, url: &str, accept: &str, head: bool) -> (String, String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Accept: {accept}")])
        .args(["-w", "\n%{http_code} %{content_type}"]);
    if head {
        command.arg("-I");
    }
    let out = command.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (status, content_type) = last.split_once(' ').unwrap();
    (status.into(), content_type.into(), body.into())
}

#[test]
fn only_a_request_for_html_gets_the_page_and_others_keep_the_426() {
    let dir = tempfile::tempdir().unwrap();
    let wssd = Wssd::spawn(dir.path(), &["run", "--listen", "127.0.0.1:0"]);
    let ca = dir.path().join("xdg/wssd/ca/ca.pem");
    let url = format!("https://localhost:{}/", wssd.addr.port());
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    let (status, content_type, body) = get(&ca, &url, browser, false);
    assert_eq!(status, "200", "{body}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        body.contains("<title>wssd: WebSocket test</title>"),
        "{body}"
    );
    // curl speaks HTTP/2 here (ALPN): a HEAD answered with a body over h2 ended the
    // stream with PROTOCOL_ERROR (curl exit 92, status 000).
    let (status, _, head) = get(&ca, &url, browser, true);
    assert_eq!(status, "200");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'sha256-")
            && head.contains("strict-transport-security: max-age="),
        "{head}"
    );
    assert!(!head.contains("<html"), "a HEAD got a body: {head}");

    let (status, _, head) = get(&ca, &url, "*/*", true);
    assert_eq!(status, "426", "{head}");
    assert!(head.contains("content-length: "), "{head}");

    // A WebSocket client's plain GET, an API client, curl's default: still the 426.
    for accept in ["*/*", "application/json"] {
        let (status, _, body) = get(&ca, &url, accept, false);
        assert_eq!(status, "426", "Accept: {accept}: {body}");
        assert!(body.contains("WebSocket endpoint"), "{body}");
    }
}
