//! `wssd run --listen --upstream [--domain]... [--cert-file --key-file]`: a whole sidecar
//! in one command, no config file, in front of a real upstream (Python's http.server),
//! reached by curl over both loopbacks; and the dev mode on 127.0.0.1 and ::1.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Python's http.server on a free loopback port, serving `dir`; killed on drop.
struct Upstream {
    child: Child,
    port: u16,
}

impl Upstream {
    fn start(dir: &Path) -> Upstream {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Upstream { child, port }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl GET `url` trusting `ca`, with extra arguments; returns (exit code, body).
fn curl(ca: &Path, url: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn one_command_sidecar_with_a_dev_ca_certificate_proxies_over_both_loopbacks() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello from the app\n").unwrap();
    let upstream = Upstream::start(&site);
    let up = format!("http://127.0.0.1:{}", upstream.port);
    let wssd = Wssd::spawn(
        dir.path(),
        &[
            "run",
            "--listen",
            "localhost:0",
            "--upstream",
            &up,
            "--domain",
            "app.test",
        ],
    );
    let port = wssd.addr.port();
    let ca = dir.path().join("xdg/wssd/ca/ca.pem");
    let url = format!("https://app.test:{port}/hello.txt");
    let (code, body) = curl(
        &ca,
        &url,
        &["--resolve", &format!("app.test:{port}:127.0.0.1")],
    );
    assert_eq!(code, Some(0), "{body}");
    assert_eq!(body, "hello from the app\n");
    if ipv6_loopback() {
        let (code, body) = curl(&ca, &url, &["--resolve", &format!("app.test:{port}:[::1]")]);
        assert_eq!(code, Some(0), "over ::1: {body}\n{}", wssd.logs());
        assert_eq!(body, "hello from the app\n");
    } else {
        assert!(wssd.logs().contains("skipped"), "{}", wssd.logs());
    }
    // What it printed works as printed: the URL names the domain, the probe line connects.
    let stdout = wssd.stdout();
    assert!(stdout.contains(&format!("proxied to {up}")), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("wssd probe"))
        .expect("probe line");
    let mut args = vec!["probe"];
    args.extend(line.split("wssd probe").nth(1).unwrap().split_whitespace());
    let out = wssd_cmd(dir.path(), &args);
    let text = String::from_utf8_lossy(&out.stdout);
    // http.server does not speak WebSocket: the probe reaches it through wssd (TLS ok,
    // upgrade refused by the upstream), which is what the line promises.
    assert!(
        text.contains("app.test") && text.contains("  tls        TLS"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_command_sidecar_with_cert_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>app</h1>\n").unwrap();
    let upstream = Upstream::start(&site);
    let test_ca = TestCa::new();
    // A name with no DNS first, as a real certificate's would be.
    let tls = write_pair(dir.path(), &test_ca.leaf(&["app.test", "localhost"]));
    let ca = dir.path().join("test-ca.pem");
    std::fs::write(&ca, &test_ca.cert_pem).unwrap();
    let up = format!("http://127.0.0.1:{}", upstream.port);
    let cert = tls.join("cert.pem");
    let key = tls.join("key.pem");
    let wssd = Wssd::spawn(
        dir.path(),
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    let (code, body) = curl(
        &ca,
        &format!("https://localhost:{}/", wssd.addr.port()),
        &[],
    );
    assert_eq!(code, Some(0), "{body}");
    assert_eq!(body, "<h1>app</h1>\n");
    // Without --domain, the printed probe line names the certificate's first name and
    // reaches it through the address wssd listens on, so it verifies as printed (plus the
    // test CA, which a real certificate's chain would not need).
    let port = wssd.addr.port();
    let line = wssd
        .stdout()
        .lines()
        .find(|l| l.contains("try it:"))
        .map(str::to_string)
        .unwrap_or_default();
    let probe = format!("wssd probe --connect-to 127.0.0.1:{port} wss://app.test:{port}/");
    assert!(line.ends_with(&probe), "{line}\n{}", wssd.stdout());
    let ca_arg = ca.to_str().unwrap();
    let connect = format!("127.0.0.1:{port}");
    let url = format!("wss://app.test:{port}/");
    let out = wssd_cmd(
        dir.path(),
        &["probe", "--ca", ca_arg, "--connect-to", &connect, &url],
    );
    // The certificate verified for app.test; the upgrade then reached the upstream, a
    // static site, which answers it as one does (wssd: 502).
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("names   app.test,localhost") && report.contains("upgrade    502"),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No dev CA was made: the pair came from the files.
    assert!(!dir.path().join("xdg/wssd/ca/ca.pem").exists());
}

#[test]
fn bad_sidecar_flags_are_usage_errors_and_a_busy_port_names_listen() {
    let dir = tempfile::tempdir().unwrap();
    let out = wssd_cmd(
        dir.path(),
        &[
            "run",
            "--cert-file",
            "/nonexistent/cert.pem",
            "--key-file",
            "/nonexistent/key.pem",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--cert-file /nonexistent/cert.pem"), "{err}");

    let out = wssd_cmd(dir.path(), &["run", "--cert-file", "/x.pem"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-file"));

    let out = wssd_cmd(dir.path(), &["run", "--listen", "8443"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("localhost:PORT"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = wssd_cmd(dir.path(), &["run", "--listen", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&addr) && err.contains("--listen ADDR"),
        "{err}"
    );
    // The address came from the flag, not from a key of a config file there is none of.
    assert!(
        err.contains(&format!("--listen {addr}: cannot listen")),
        "{err}"
    );
    assert!(!err.contains("[listener] bind ="), "{err}");

    // localhost:PORT with ::1's port taken: the error names the flag too.
    if ipv6_loopback() {
        let busy6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = busy6.local_addr().unwrap().port();
        let out = wssd_cmd(
            dir.path(),
            &["run", "--listen", &format!("localhost:{port}")],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains(&format!(
                "--listen localhost:{port} ([::1]:{port}): cannot listen"
            )),
            "{err}"
        );
    }
}

#[test]
fn dev_mode_answers_on_the_ipv6_loopback_its_certificate_names() {
    if !ipv6_loopback() {
        eprintln!("skipped: no ::1 on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wssd = Wssd::spawn(dir.path(), &["run", "--listen", "localhost:0"]);
    let ca = dir.path().join("xdg/wssd/ca/ca.pem");
    let url = format!("wss://[::1]:{}/", wssd.addr.port());
    let out = wssd_cmd(
        dir.path(),
        &["probe", "--ca", ca.to_str().unwrap(), "--send", "hi", &url],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("echo       ok"), "{text}");
}
