//! A real WebSocket framework behind wssd, as its users run it: a Socket.IO 4 app (Node)
//! as the upstream, and the Socket.IO client with its default settings, which starts with
//! HTTP long-polling (GET and POST requests) and then upgrades to a WebSocket. Both must
//! pass through wssd: the polling requests as plain HTTP, the upgrade as a WebSocket.
//! `scripts/socketio-setup` installs the two packages from npm.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn socket_io_with_its_default_client_connects_by_polling_and_upgrades() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("scripts/socketio-setup"))
        .output()
        .expect("run scripts/socketio-setup");
    assert!(
        setup.status.success(),
        "scripts/socketio-setup failed:\n{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let node_modules = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();

    let mut server = Node(
        Command::new("node")
            .arg(root.join("tests/socketio/server.js"))
            .env("NODE_PATH", &node_modules)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node"),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("port=").map(str::to_string))
        .expect("the app's port")
        .parse()
        .unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            seen.lock().unwrap().push(line);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let wssd = Wssd::start(
        dir.path(),
        &files_config(
            dir.path(),
            &format!("upstream = \"http://127.0.0.1:{port}\""),
            "",
        ),
    );
    let url = format!("https://localhost:{}", wssd.addr.port());

    // The app's own page, through wssd.
    let page = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("the app's page"),
        "{page:?}"
    );

    let client = Command::new("node")
        .arg(root.join("tests/socketio/client.js"))
        .arg(&url)
        .env("NODE_PATH", &node_modules)
        .env("NODE_EXTRA_CA_CERTS", dir.path().join("ca.pem"))
        .output()
        .expect("node");
    let out = String::from_utf8_lossy(&client.stdout);
    let result: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {out}\n{}", String::from_utf8_lossy(&client.stderr)));
    assert_eq!(
        result["error"],
        serde_json::Value::Null,
        "{result}\nwssd:\n{}",
        wssd.logs()
    );
    assert_eq!(result["first"], "polling", "{result}");
    assert_eq!(result["upgraded"], "websocket", "{result}");
    assert_eq!(result["echoed"], "echo: hello over the upgrade", "{result}");

    // The app saw the session start over polling and move to the WebSocket.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = events.lock().unwrap().clone();
        if events.iter().any(|e| e == "upgrade transport=websocket") {
            assert!(
                events.contains(&"connection transport=polling".to_string()),
                "{events:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
