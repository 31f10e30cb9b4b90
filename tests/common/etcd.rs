//! A real etcd for the fleet tests (Debian `etcd-server`), on free loopback ports with a
//! data directory of its own, never the system service; killed on drop. It can be
//! stopped and started again on the same data, as an engine outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pebble::free_port;

pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    pub client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: dir.join("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.resume();
        etcd
    }

    /// The client URL, for `endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again, on the same data), and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        std::fs::create_dir_all(&self.dir).unwrap();
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server; scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-m", "1", &format!("{client}/health")])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (SIGKILL): the engine is gone until [`Etcd::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A JSON call to its API, as another client would make it (compaction, say).
    pub fn call(&self, path: &str, body: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-X", "POST", "-d", body])
            .arg(format!("{}{path}", self.endpoint()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
