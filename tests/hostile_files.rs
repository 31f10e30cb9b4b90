//! Certificate files that are not what they seem: a FIFO renamed over the key, a
//! certificate symlinked to /dev/zero, a 100 MB certificate file. Each is refused without
//! hanging the reload task or reading it whole: the old pair keeps serving, the refusal
//! is logged and counted, systemd hears READY=1 after the SIGHUP, and a good pair put back
//! afterwards is served (so the reload task is still alive).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn notifications(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (socket, path.to_str().unwrap().to_string())
}

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within 20 s (is the reload task stuck?)");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_devices_and_huge_files_are_refused_without_hanging_or_ballooning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(&["localhost"]);
    let tls = write_pair(dir.path(), &first);
    let (socket, socket_path) = notifications(dir.path());
    let config = files_config(dir.path(), "", "") + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let wssd = Wssd::start_with(dir.path(), &config, &[], &[("NOTIFY_SOCKET", &socket_path)]);
    assert_eq!(next(&socket), "READY=1");
    let admin = wssd.logged_addr("admin server listening");
    let client = client_config(&ca.cert_pem);
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);
    let baseline = rss_kib(wssd.pid());
    let errors =
        |metrics: &str| sample(metrics, "wssd_certificate_reloads_total{result=\"error\"}");

    // A FIFO renamed over the key: opening it for reading would wait for a writer forever.
    let fifo = tls.join("key.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::rename(&fifo, tls.join("key.pem")).unwrap();
    wssd.signal("HUP");
    assert!(next(&socket).starts_with("RELOADING=1"));
    assert_eq!(next(&socket), "READY=1", "SIGHUP must end in READY=1");
    wssd.wait_for_logs("not a regular file", 1, Duration::from_secs(10))
        .await;
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);
    // Counted (once by the watcher and once by SIGHUP, or once if SIGHUP came first).
    let (_, metrics) = http_get(admin, "/metrics").await;
    let after_fifo = errors(&metrics).unwrap();
    assert!(after_fifo >= 1.0, "{metrics}");

    // The certificate symlinked to /dev/zero: endless bytes.
    replace_file(&tls.join("key.pem"), &first.key_pem);
    std::os::unix::fs::symlink("/dev/zero", tls.join("zero")).unwrap();
    std::fs::rename(tls.join("zero"), tls.join("cert.pem")).unwrap();
    wssd.signal("HUP");
    assert!(next(&socket).starts_with("RELOADING=1"));
    assert_eq!(next(&socket), "READY=1");
    wssd.wait_for_logs("not a regular file", 2, Duration::from_secs(10))
        .await;
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);

    // A 100 MB certificate file: refused by its size, not read.
    let big = tls.join("big.pem");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(100 << 20).unwrap();
    drop(file);
    std::fs::rename(&big, tls.join("cert.pem")).unwrap();
    wssd.signal("HUP");
    assert!(next(&socket).starts_with("RELOADING=1"));
    assert_eq!(next(&socket), "READY=1");
    wssd.wait_for_logs("larger than", 1, Duration::from_secs(10))
        .await;
    assert_eq!(served_serial(wssd.addr, &client).await, first.serial);
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert!(errors(&metrics).unwrap() >= after_fifo + 2.0, "{metrics}");
    let grown = rss_kib(wssd.pid()).saturating_sub(baseline);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");

    // The reload path is still alive: a good new pair is served.
    let second = ca.leaf(&["localhost"]);
    replace_file(&tls.join("key.pem"), &second.key_pem);
    replace_file(&tls.join("cert.pem"), &second.cert_pem);
    wait_for_serial(wssd.addr, &client, &second.serial, Duration::from_secs(10)).await;
    let logs = wssd.logs();
    assert!(
        !logs.contains("BEGIN"),
        "no file contents in the logs:\n{logs}"
    );
}
