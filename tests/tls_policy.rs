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
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_anonymous_clients_and_passes_the_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let clients = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("clients.pem"), &clients.cert_pem).unwrap();
    let tls = format!(
        "[tls]\nclient_ca_file = \"{}\"\nclient_auth = \"required\"\n",
        dir.path().join("clients.pem").display()
    );
    let config = format!(
        "{}{tls}",
        files_config(dir.path(), &format!("upstream = \"ws://{}\"", up.addr), "")
    );
    let wssd = Wssd::start(dir.path(), &config);

    // No certificate: the handshake fails (or the connection dies right after it).
    let anonymous = client_config(&ca.cert_pem);
    let refused = async {
        let (tls, _) = tls_connect(wssd.addr, &anonymous).await?;
        let url = format!("wss://localhost:{}/", wssd.addr.port());
        tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(())
    };
    assert!(refused.await.is_err(), "an anonymous client got through");
    // A certificate from another CA is refused too.
    let stranger = client_config_with_cert(&ca.cert_pem, &TestCa::new().client("mallory"));
    assert!(
        tls_connect(wssd.addr, &stranger).await.is_err()
            || up.connections.load(Ordering::SeqCst) == 0
    );

    // A valid certificate: the upstream learns who it is, and a forged header is dropped.
    let alice = client_config_with_cert(&ca.cert_pem, &clients.client("alice"));
    let (tls, _) = tls_connect(wssd.addr, &alice).await.unwrap();
    let mut request = format!("wss://localhost:{}/", wssd.addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "x-forwarded-client-cert",
        "Hash=forged;Subject=\"CN=admin\"".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    echo(&mut ws, "hello as alice").await.unwrap();
    let identity = up.header("x-forwarded-client-cert");
    assert_eq!(
        identity.len(),
        1,
        "exactly one identity header: {identity:?}"
    );
    assert!(
        identity[0].contains("Subject=\"CN=alice\"") && identity[0].starts_with("Hash="),
        "{identity:?}"
    );
    assert!(!identity[0].contains("forged") && !identity[0].contains("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_lets_anonymous_clients_in_without_an_identity() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_pair(dir.path(), &ca.leaf(&["localhost"]));
    std::fs::write(dir.path().join("clients.pem"), TestCa::new().cert_pem).unwrap();
    let tls = format!(
        "[tls]\nclient_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
        dir.path().join("clients.pem").display()
    );
    let config = format!(
        "{}{tls}",
        files_config(dir.path(), &format!("upstream = \"ws://{}\"", up.addr), "")
    );
    let wssd = Wssd::start(dir.path(), &config);
    let (tls, _) = tls_connect(wssd.addr, &client_config(&ca.cert_pem))
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}/", wssd.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    echo(&mut ws, "anonymous").await.unwrap();
    assert!(
        up.header("x-forwarded-client-cert").is_empty(),
        "a forged identity reached the upstream"
    );
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
    assert!(!openssl(&["-tls1_1"]).status.success(), "TLS 1.1 accepted");
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
