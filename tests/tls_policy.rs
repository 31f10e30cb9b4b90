//! The TLS policy at the edge and the private files behind it: client-certificate
//! authentication (required and optional, with the verified identity passed upstream and
//! a forged copy stripped), the `intermediate` and `modern` profiles with session
//! resumption, and a private key readable by others stopping start-up.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::edge::*;
use common::*;
use tokio::io::AsyncReadExt;

/// wssd proxying to `up` with `client_auth` (required or optional) against the CA `clients`.
fn mtls_wssd(
    dir: &std::path::Path,
    ca: &TestCa,
    clients: &TestCa,
    mode: &str,
    up: &Upstream,
) -> Wssd {
    write_pair(dir, &ca.leaf(&["localhost"]));
    std::fs::write(dir.join("clients.pem"), &clients.cert_pem).unwrap();
    let tls = format!(
        "[tls]\nclient_ca_file = \"{}\"\nclient_auth = \"{mode}\"\n",
        dir.join("clients.pem").display()
    );
    let config = format!(
        "{}{tls}",
        files_config(dir, &format!("upstream = \"ws://{}\"", up.addr), "")
    );
    Wssd::start(dir, &config)
}

/// Sends an upgrade (with a forged identity header) over TLS with `client`; the status
/// line wssd answers, or `None` when the TLS connection fails before or after the
/// handshake (in TLS 1.3 the server judges the client's certificate after the client
/// finished its handshake, so the refusal shows up as the read failing).
async fn upgrade_status(
    addr: std::net::SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> Option<String> {
    let (mut tls, _) = tls_connect(addr, client).await.ok()?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}X-Forwarded-Client-Cert: Hash=forged;Subject=\"CN=admin\"\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
}

const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_anonymous_and_foreign_clients_and_passes_the_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let wssd = mtls_wssd(dir.path(), &ca, &clients, "required", &up);

    let anonymous = client_config(&ca.cert_pem);
    assert_eq!(
        upgrade_status(wssd.addr, &anonymous).await,
        None,
        "no certificate got an answer"
    );
    let stranger = client_config_with_cert(&ca.cert_pem, &TestCa::new().client("mallory"));
    assert_eq!(
        upgrade_status(wssd.addr, &stranger).await,
        None,
        "another CA's client got an answer"
    );
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        0,
        "the upstream was reached"
    );

    // A certificate from the configured CA: 101, and the upstream learns who it is; the
    // client's own copy of the header is dropped.
    let alice = client_config_with_cert(
        &ca.cert_pem,
        &clients.client_with_names("alice", &["alice.clients.example"]),
    );
    assert_eq!(
        upgrade_status(wssd.addr, &alice).await.as_deref(),
        Some(SWITCHING)
    );
    let identity = wait_for_identity(&up).await;
    assert_eq!(
        identity.len(),
        1,
        "exactly one identity header: {identity:?}"
    );
    assert!(
        identity[0].starts_with("Hash=")
            && identity[0].contains(";Subject=\"CN=alice\"")
            && identity[0].ends_with(";DNS=alice.clients.example"),
        "{identity:?}"
    );
    assert!(!identity[0].contains("forged") && !identity[0].contains("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_admits_the_anonymous_without_an_identity_and_refuses_foreign_clients() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let wssd = mtls_wssd(dir.path(), &ca, &clients, "optional", &up);

    // A certificate from another CA is refused, optional or not.
    let stranger = client_config_with_cert(&ca.cert_pem, &TestCa::new().client("mallory"));
    assert_eq!(upgrade_status(wssd.addr, &stranger).await, None);
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);

    // No certificate: admitted, and no identity reaches the upstream (not the forged one).
    let anonymous = client_config(&ca.cert_pem);
    assert_eq!(
        upgrade_status(wssd.addr, &anonymous).await.as_deref(),
        Some(SWITCHING)
    );
    wait_for_connections(&up, 1).await;
    assert!(
        up.header("x-forwarded-client-cert").is_empty(),
        "an identity reached the upstream for an anonymous client: {:?}",
        up.header("x-forwarded-client-cert")
    );

    // The right CA: admitted with its identity, DNS names included.
    let bob = client_config_with_cert(
        &ca.cert_pem,
        &clients.client_with_names("bob", &["bob.clients.example", "b.example"]),
    );
    assert_eq!(
        upgrade_status(wssd.addr, &bob).await.as_deref(),
        Some(SWITCHING)
    );
    wait_for_connections(&up, 2).await;
    let identity = wait_for_identity(&up).await;
    assert!(
        identity[0].contains(";Subject=\"CN=bob\"")
            && identity[0].contains(";DNS=bob.clients.example;DNS=b.example"),
        "{identity:?}"
    );
}

async fn wait_for_connections(up: &Upstream, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while up.connections.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream saw no connection {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The upstream records the headers once it has read the request.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn wait_for_identity(up: &Upstream) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let identity = up.header("x-forwarded-client-cert");
        if !identity.is_empty() {
            return identity;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no identity header at the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_profiles_set_the_versions_and_sessions_resume() {
    let versions = |v: &[&'static rustls::SupportedProtocolVersion], ca: &str| {
        let mut roots = rustls::RootCertStore::empty();
        for c in pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(wssd::tls::provider())
                .with_protocol_versions(v)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    let intermediate = Setup::start("", "");
    let tls12 = versions(&[&rustls::version::TLS12], &intermediate.ca.cert_pem);
    assert!(
        tls_connect(intermediate.wssd.addr, &tls12).await.is_ok(),
        "intermediate offers TLS 1.2"
    );

    let modern = Setup::start("", "[tls]\nprofile = \"modern\"\n");
    let tls12 = versions(&[&rustls::version::TLS12], &modern.ca.cert_pem);
    assert!(
        tls_connect(modern.wssd.addr, &tls12).await.is_err(),
        "modern must refuse TLS 1.2"
    );
    let tls13 = versions(&[&rustls::version::TLS13], &modern.ca.cert_pem);
    assert!(tls_connect(modern.wssd.addr, &tls13).await.is_ok());

    // A second connection with the same client config resumes (stateless tickets).
    let client = intermediate.client();
    let (mut first, _) = tls_connect(intermediate.wssd.addr, &client).await.unwrap();
    // TLS 1.3 tickets arrive after the handshake: read until they are processed.
    let _ = tokio::time::timeout(Duration::from_millis(300), first.read(&mut [0u8; 1])).await;
    let (second, _) = tls_connect(intermediate.wssd.addr, &client).await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // openssl agrees: nothing below TLS 1.2, no CBC suites.
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &intermediate.wssd.addr.to_string(),
                "-servername",
                "localhost",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // TLS 1.0 and 1.1, from a client that can speak them (Python's ssl at security level
    // 0: Debian's `openssl s_client -tls1_1` cannot, whatever the server allows), which
    // does connect to a control server that allows them.
    for version in ["TLSv1", "TLSv1_1"] {
        let control = ControlServer::start(version);
        assert_eq!(
            old_tls_client(control.port, version),
            Ok(version.replace('_', ".")),
            "the client cannot speak {version} even to a server that allows it"
        );
        let refused = old_tls_client(intermediate.wssd.addr.port(), version);
        assert!(refused.is_err(), "wssd accepted {version}: {refused:?}");
    }
    assert!(
        !openssl(&[
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256"
        ])
        .status
        .success(),
        "a CBC or non-ECDHE suite accepted"
    );
    assert!(
        openssl(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
            .status
            .success()
    );
}

#[test]
fn an_open_private_key_stops_startup_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\nca_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
        dir.path().join("data").display(),
        dir.path().join("ca").display()
    );
    let path = dir.path().join("wssd.toml");
    std::fs::write(&path, config).unwrap();
    // A first pass makes the key, private.
    assert!(
        wssd_cmd(dir.path(), &["issue", "--config", path.to_str().unwrap()])
            .status
            .success()
    );
    let key = dir.path().join("data/certs/localhost/key.pem");
    use std::os::unix::fs::PermissionsExt;
    let real = std::fs::canonicalize(&key).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = wssd_cmd(dir.path(), &["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())) && err.contains("mode 644"),
        "{err}"
    );
}

/// A TLS client limited to one old version (`TLSv1`, `TLSv1_1`): the version it agreed on,
/// or why not.
fn old_tls_client(port: u16, version: &str) -> Result<String, String> {
    let script = format!(
        r#"
import socket, ssl, sys, warnings
warnings.simplefilter("ignore")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = ssl.TLSVersion.{version}
ctx.maximum_version = ssl.TLSVersion.{version}
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            print(t.version())
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `openssl s_server` allowing exactly one old TLS version; killed on drop.
struct ControlServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ControlServer {
    fn start(version: &str) -> ControlServer {
        let dir = tempfile::tempdir().unwrap();
        let pair = TestCa::new().leaf(&["localhost"]);
        std::fs::write(dir.path().join("cert.pem"), &pair.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &pair.key_pem).unwrap();
        let port = common::pebble::free_port();
        let flag = if version == "TLSv1" {
            "-tls1"
        } else {
            "-tls1_1"
        };
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string(), flag])
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-www"])
            .arg("-cert")
            .arg(dir.path().join("cert.pem"))
            .arg("-key")
            .arg(dir.path().join("key.pem"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl s_server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ControlServer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
