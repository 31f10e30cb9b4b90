//! A real ACME CA for the tests: Pebble (Let's Encrypt's test CA, Debian package
//! `pebble`) and its mock DNS server `pebble-challtestsrv`, on free loopback ports, killed
//! on drop. Every name Pebble validates resolves to 127.0.0.1 through challtestsrv, so
//! any test domain points at wssd.

use std::collections::BTreeSet;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;

use super::TestCa;

/// The EAB key Pebble's own example config uses for `kid-1`.
pub const EAB_KID: &str = "kid-1";
pub const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

#[derive(Default)]
pub struct PebbleOptions {
    pub eab_required: bool,
    /// PEBBLE_WFE_NONCEREJECT: the percentage of good nonces Pebble rejects (Pebble's
    /// default, 5, when unset).
    pub nonce_reject: Option<u8>,
    pub blocked_domains: Vec<String>,
    /// Certificate lifetime in seconds (Pebble's default is five years).
    pub validity_secs: Option<u64>,
}

pub struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA for Pebble's own HTTPS (for `[acme] ca_file`).
    pub tls_ca: PathBuf,
    /// Where Pebble expects the http-01 responder, and the tls-alpn-01 listener.
    pub http_port: u16,
    pub tls_port: u16,
    pub mgmt_port: u16,
    /// challtestsrv's management API (set-txt, clear-txt).
    pub dns_mgmt_port: u16,
    /// Where Pebble's logs go.
    dir: PathBuf,
}

/// A free loopback port, never the same one twice in this test binary: once the probe
/// listener is closed the kernel may hand its port out again at once, and the benchmark
/// once got one port for two of Pebble's servers that way.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

impl Pebble {
    pub fn start(dir: &Path, options: PebbleOptions) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // Pebble's HTTPS API needs a certificate; the Debian package ships none.
        let ca = TestCa::new();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("tls-ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("tls-cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls-key.pem"), &leaf.key_pem).unwrap();

        let (listen, mgmt, http_port, tls_port, dns_port, dns_mgmt_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("tls-cert.pem"),
                "privateKey": dir.join("tls-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": options.eab_required,
                "externalAccountMACKeys": { EAB_KID: EAB_HMAC },
                "domainBlocklist": options.blocked_domains,
            }
        });
        if let Some(secs) = options.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble; ./scripts/test installs it)");
        let mut pebble = Command::new("pebble");
        if let Some(percent) = options.nonce_reject {
            pebble.env("PEBBLE_WFE_NONCEREJECT", percent.to_string());
        }
        let pebble = pebble
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .stdin(Stdio::null())
            .spawn()
            .expect("pebble (apt-get install pebble; ./scripts/test installs it)");
        let pebble = Pebble {
            pebble,
            challtestsrv,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            tls_ca: dir.join("tls-ca.pem"),
            http_port,
            tls_port,
            mgmt_port: mgmt,
            dns_mgmt_port,
            dir: dir.clone(),
        };
        for port in [listen, mgmt, dns_mgmt_port] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "Pebble did not start; see {}",
                    dir.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        pebble
    }

    /// The certificate and key of Pebble's own HTTPS (signed by `tls_ca`).
    pub fn tls_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("tls-cert.pem"), self.dir.join("tls-key.pem"))
    }

    /// Pebble's log so far (one line per request it handled, among others).
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.dir.join("pebble.err")).unwrap_or_default());
        text
    }

    /// The root that signs Pebble's certificates, from its management API.
    pub fn root_pem(&self) -> String {
        let out = Command::new("curl")
            .args(["-sSf", "--cacert"])
            .arg(&self.tls_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// An `[acme]` section for this Pebble.
    pub fn acme_section(&self, challenge: &str, extra: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nca_file = \"{}\"\ncontact = [\"mailto:ops@example.test\"]\nchallenge = \"{challenge}\"\nhttp01_bind = \"127.0.0.1:{}\"\n{extra}\n",
            self.directory,
            self.tls_ca.display(),
            self.http_port
        )
    }

    /// A dns-01 hook script that sets and clears TXT records in challtestsrv and logs
    /// each call to `log`.
    pub fn dns_hook(&self, dir: &Path, log: &Path) -> PathBuf {
        let path = dir.join("dns-hook.sh");
        let script = format!(
            "#!/bin/sh\nset -e\necho \"$1 $2 $3\" >> {log}\ncase \"$1\" in\n  set) curl -sSf -d \"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{port}/set-txt ;;\n  clear) curl -sSf -d \"{{\\\"host\\\":\\\"$2.\\\"}}\" http://127.0.0.1:{port}/clear-txt ;;\n  *) echo \"unknown action $1\" >&2; exit 2 ;;\nesac\n",
            log = log.display(),
            port = self.dns_mgmt_port
        );
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

// ACME test helpers.

/// Verifies the chain in `cert_file` against Pebble's root, for every name.
pub fn assert_chain_verifies(pebble: &Pebble, cert_file: &Path, names: &[&str]) -> String {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(chain.len() >= 2, "the full chain is stored, leaf first");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pebble.root_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), wssd::tls::provider())
        .build()
        .unwrap();
    for name in names {
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(*name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    wssd::cert::inspect::CertSummary::from_der(&chain[0])
        .unwrap()
        .serial
}

/// The top of a config with one `source = "acme"` certificate for `domains` (a TOML list
/// body, e.g. `"a.test", "127.0.0.1"`).
pub fn acme_cert(domains: &str, dir: &Path) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [{domains}]\nsource = \"acme\"\n",
        dir.join("data").display()
    )
}

/// A client config trusting Pebble's root (for certificates Pebble issued).
pub fn pebble_client(pebble: &Pebble) -> std::sync::Arc<rustls::ClientConfig> {
    super::client_config(&pebble.root_pem())
}
