//! Fleet mode with real replicas: `wssd run` processes sharing certificates through a
//! real etcd (Debian `etcd-server` 3.4) on loopback ports, with the dev CA and with
//! Pebble: one issuer per certificate, every replica swapping the published pair in,
//! fenced publishes, engine outages. The engine client alone: tests/cluster_engine.rs.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd as EtcdServer;
use wssd::cluster::etcd::{Etcd, EtcdTls};

fn client(server: &EtcdServer) -> Etcd {
    wssd::tls::install_default_provider();
    Etcd::new(&[server.endpoint()], &EtcdTls::default()).unwrap()
}

// Replicas: `wssd run` processes with the same `[cluster]`, each with a data directory
// of its own, the same dev CA and the same fleet key.

struct FleetSetup {
    dir: tempfile::TempDir,
    etcd: EtcdServer,
    ca_pem: String,
}

impl FleetSetup {
    fn new() -> FleetSetup {
        let dir = tempfile::tempdir().unwrap();
        let etcd = EtcdServer::start(dir.path());
        let out = common::wssd_cmd(
            dir.path(),
            &[
                "selfsigned",
                "--out-dir",
                dir.path().join("scratch").to_str().unwrap(),
                "--ca-dir",
                dir.path().join("ca").to_str().unwrap(),
            ],
        );
        assert!(out.status.success());
        wssd::cert::store::write_atomic(
            &dir.path().join("fleet.key"),
            b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n",
            0o600,
        )
        .unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca/ca.pem")).unwrap();
        FleetSetup { dir, etcd, ca_pem }
    }

    /// The config of replica `name` (its data under `dir/name`); replica `c` does not
    /// watch its files, so only the fleet's own path can swap its certificate.
    fn config(&self, name: &str) -> String {
        let root = self.dir.path();
        let watch = if name == "c" { "watch = false\n" } else { "" };
        format!(
            "{watch}data_dir = \"{data}\"\nca_dir = \"{ca}\"\n[listener]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
             [cluster]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nname = \"fleet\"\nlease_ttl = \"2s\"\nencryption_key_file = \"{key}\"\n\
             [[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
            data = root.join(name).join("data").display(),
            ca = root.join("ca").display(),
            endpoint = self.etcd.endpoint(),
            key = root.join("fleet.key").display(),
        )
    }

    fn start(&self, name: &str) -> common::Wssd {
        let home = self.dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        common::Wssd::start(&home, &self.config(name))
    }

    fn client(&self) -> std::sync::Arc<rustls::ClientConfig> {
        common::client_config(&self.ca_pem)
    }

    /// The store a replica's provisioning uses, for the test to publish through.
    fn publisher(
        &self,
    ) -> (
        wssd::cluster::store::FleetStore,
        wssd::config::CertificateConfig,
    ) {
        let home = self.dir.path().join("publisher");
        std::fs::create_dir_all(&home).unwrap();
        let config =
            wssd::config::Config::from_toml(&self.config("publisher"), &home.join("wssd.toml"))
                .unwrap();
        let cluster = config.cluster.clone().unwrap();
        let metrics = std::sync::Arc::new(wssd::metrics::Metrics::default());
        let fleet = wssd::cluster::join(&cluster, metrics).unwrap();
        let store = wssd::cluster::store::FleetStore {
            fleet,
            certificates: config.certificates.clone(),
        };
        (store, config.certificates[0].clone())
    }
}

fn count(replicas: &[&common::Wssd], needle: &str) -> usize {
    replicas
        .iter()
        .map(|r| r.logs().matches(needle).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_issue_one_certificate_and_all_serve_it() {
    let fleet = FleetSetup::new();
    let replicas: Vec<common::Wssd> = std::thread::scope(|s| {
        let handles: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let fleet = &fleet;
                s.spawn(move || fleet.start(name))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<&common::Wssd> = replicas.iter().collect();
    assert_eq!(
        count(&all, "issued a certificate from the dev CA"),
        1,
        "one issuance for the fleet:\n{}",
        all.iter()
            .map(|r| r.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    let client = fleet.client();
    let mut serials = Vec::new();
    for r in &replicas {
        serials.push(common::served_serial(r.addr, &client).await);
    }
    assert!(
        serials.iter().all(|s| *s == serials[0]),
        "every replica serves the fleet's certificate: {serials:?}"
    );
    assert_eq!(count(&all, "the fleet's new certificate is stored here"), 2);
    // The one replica that held the lock says so in its metrics, and that it holds it no
    // longer; the others never held it.
    let mut held = Vec::new();
    for r in &replicas {
        let admin = r.logged_addr("admin server listening");
        let (_, metrics) = common::http_get(admin, "/metrics").await;
        held.extend(
            metrics
                .lines()
                .filter(|l| l.starts_with("wssd_cluster_lock_held{"))
                .map(str::to_string),
        );
    }
    assert_eq!(
        held,
        ["wssd_cluster_lock_held{certificate=\"0\",domains=\"localhost\"} 0"],
        "{held:?}"
    );
    // `wssd status` shows the fleet: every replica serving the engine's pair, the lock
    // free again (members bring their entry up to date within moments).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fleet_view = status_json(&fleet, "a")[0]["fleet"].clone();
        let replicas = fleet_view["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let serving: Vec<&str> = replicas
            .iter()
            .filter_map(|r| r["serial"].as_str())
            .collect();
        if fleet_view["engine"] == "up"
            && fleet_view["published_serial"] == serials[0].as_str()
            && fleet_view["holder"].is_null()
            && serving.len() == 3
            && serving.iter().all(|s| *s == serials[0])
        {
            let pids: Vec<String> = replicas
                .iter()
                .map(|r| {
                    r["replica"]
                        .as_str()
                        .unwrap()
                        .rsplit('-')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            for r in &replicas_pids(&all) {
                assert!(pids.contains(r), "{pids:?} lacks {r}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "status: {fleet_view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = common::wssd_cmd(
        &fleet.dir.path().join("a"),
        &["status", "--config", "wssd.toml"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.matches("(the fleet's)").count(), 3, "{text}");
    assert!(text.contains("lock free"), "{text}");
}

fn replicas_pids(replicas: &[&common::Wssd]) -> Vec<String> {
    replicas.iter().map(|r| r.pid().to_string()).collect()
}

/// `wssd status --json` with replica `name`'s config.
fn status_json(fleet: &FleetSetup, name: &str) -> serde_json::Value {
    let out = common::wssd_cmd(
        &fleet.dir.path().join(name),
        &["status", "--config", "wssd.toml", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_one_replica_publishes_reaches_every_other_without_a_dropped_connection() {
    let fleet = FleetSetup::new();
    let replicas: Vec<common::Wssd> = ["a", "b", "c"].iter().map(|n| fleet.start(n)).collect();
    let client = fleet.client();
    let old = common::served_serial(replicas[0].addr, &client).await;
    let mut live = Vec::new();
    for r in &replicas {
        let (ws, serial) = common::ws_connect(r.addr, &client, "/").await;
        assert_eq!(serial, old);
        live.push(ws);
    }
    // Another replica renews: it takes the lock, issues and publishes.
    let (store, cert) = fleet.publisher();
    use wssd::provision::store::Store;
    let claim = store.claim(&cert).await.unwrap().expect("the lock is free");
    let (pem, summary) =
        wssd::provision::selfsigned::issue(&cert, &fleet.dir.path().join("ca")).unwrap();
    let published = Instant::now();
    store.save(&cert, &claim, &pem).await.unwrap();
    drop(claim);
    let deadline = published + Duration::from_secs(20);
    let mut swapped_after = Vec::new();
    for r in &replicas {
        loop {
            if common::served_serial(r.addr, &client).await == summary.serial {
                swapped_after.push(published.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "no swap:\n{}", r.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("publish to swap (upper bounds, polled in turn): {swapped_after:?}");
    for ws in &mut live {
        common::echo(ws, "after the fleet's swap").await.unwrap();
    }
    let all: Vec<&common::Wssd> = replicas.iter().collect();
    assert_eq!(count(&all, "issued a certificate from the dev CA"), 1);
    // Each replica timed the swap from the publish: one observation, under the 20 s the
    // test allowed.
    for r in &replicas {
        let admin = r.logged_addr("admin server listening");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, metrics) = common::http_get(admin, "/metrics").await;
            let metric = |name: &str| {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            if metric("wssd_cluster_publish_to_swap_seconds_count ") == Some(1.0) {
                let sum = metric("wssd_cluster_publish_to_swap_seconds_sum ").unwrap();
                assert!(sum > 0.0 && sum < 20.0, "{metrics}");
                break;
            }
            assert!(Instant::now() < deadline, "{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lock_lapsed_cannot_publish_and_no_replica_goes_back_to_an_older_pair() {
    let fleet = FleetSetup::new();
    let replica = fleet.start("a");
    let client = fleet.client();
    let served = common::served_serial(replica.addr, &client).await;
    let (store, cert) = fleet.publisher();
    use wssd::provision::store::{Store, StoreError};
    // A holder pauses past its lease; etcd lets the lock go and another replica takes it.
    let stale = store.claim(&cert).await.unwrap().unwrap();
    let etcd = client_for(&fleet.etcd);
    etcd.delete(b"wssd/fleet/locks/localhost").await.unwrap();
    let current = store
        .claim(&cert)
        .await
        .unwrap()
        .expect("the lapsed lock is free");
    assert!(store.claim(&cert).await.unwrap().is_none(), "held now");
    let (pem, _) = wssd::provision::selfsigned::issue(&cert, &fleet.dir.path().join("ca")).unwrap();
    let refused = store.save(&cert, &stale, &pem).await.unwrap_err();
    assert!(matches!(refused, StoreError::LockLost), "{refused}");
    drop(current);
    drop(stale);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(common::served_serial(replica.addr, &client).await, served);

    // A record older than what a replica serves (an expiry before it) is not installed.
    let (kv, _) = etcd.get(b"wssd/fleet/certs/localhost").await.unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&kv.unwrap().value).unwrap();
    let ca = wssd::cert::devca::DevCa::load_or_create(&fleet.dir.path().join("ca"))
        .unwrap()
        .0;
    let older = ca
        .issue(
            &cert.domains,
            Duration::from_secs(86_400),
            wssd::config::KeyType::EcdsaP256,
        )
        .unwrap();
    let sealed = store
        .fleet
        .key
        .seal("wssd/fleet/certs/localhost", older.key_pem.as_bytes())
        .unwrap();
    record["chain_pem"] = older.cert_pem.into();
    record["key_sealed"] = sealed.into();
    record["serial"] = "older".into();
    etcd.put(
        b"wssd/fleet/certs/localhost",
        &serde_json::to_vec(&record).unwrap(),
        0,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        common::served_serial(replica.addr, &client).await,
        served,
        "went back to a certificate that expires sooner"
    );
}

fn client_for(server: &EtcdServer) -> Etcd {
    client(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_from_its_disk_while_the_engine_is_down() {
    let mut fleet = FleetSetup::new();
    let first = fleet.start("a");
    let client = fleet.client();
    let serial = common::served_serial(first.addr, &client).await;
    drop(first);
    fleet.etcd.stop();
    let again = fleet.start("a");
    assert_eq!(common::served_serial(again.addr, &client).await, serial);
    let view = status_json(&fleet, "a");
    assert!(
        view[0]["fleet"]["engine"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable")),
        "{view}"
    );
    assert_eq!(
        view[0]["serial"],
        serial.as_str(),
        "the local pair is still shown"
    );
    assert!(
        again
            .logs()
            .contains("the fleet's engine cannot be reached at start-up"),
        "{}",
        again.logs()
    );
    // The engine comes back: the replica follows it again.
    fleet.etcd.resume();
    again
        .wait_for_logs(
            "the fleet's engine answers again",
            1,
            Duration::from_secs(30),
        )
        .await;
}

/// Forwards each connection on `listen` (the port Pebble validates on) to the port of a
/// replica that does not hold the certificate's lock right now; records (the replica's
/// pid, the holder's pid) for each.
async fn forward_to_non_holders(
    listen: std::net::TcpListener,
    etcd: Etcd,
    lock: &'static [u8],
    replicas: Vec<(u32, u16)>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
) {
    listen.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listen).unwrap();
    let etcd = std::sync::Arc::new(etcd);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let (etcd, replicas, seen) = (etcd.clone(), replicas.clone(), seen.clone());
        tokio::spawn(async move {
            let holder: u32 = match etcd.get(lock).await {
                Ok((Some(kv), _)) => String::from_utf8_lossy(&kv.value)
                    .rsplit('-')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            for _ in 0..200 {
                for (pid, port) in replicas.iter().filter(|(pid, _)| *pid != holder) {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await
                    {
                        seen.lock().unwrap().push((*pid, holder));
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_fleet_orders_once_and_every_http01_validation_is_answered_by_a_replica_that_did_not_order()
 {
    acme_fleet_orders_once("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_fleet_orders_once_and_every_tls_alpn01_validation_is_answered_by_a_replica_that_did_not_order()
 {
    acme_fleet_orders_once("tls-alpn-01").await;
}

/// Three replicas of one ACME certificate validated by `challenge`: one order, and
/// every validation Pebble makes reaches a replica that does not hold the lock.
async fn acme_fleet_orders_once(challenge: &str) {
    let alpn = challenge == "tls-alpn-01";
    let fleet = FleetSetup::new();
    let pebble = common::pebble::Pebble::start(fleet.dir.path(), Default::default());
    let names = ["a", "b", "c"];
    let ports: Vec<u16> = names.iter().map(|_| common::pebble::free_port()).collect();
    let config = |name: &str, port: u16| {
        let root = fleet.dir.path();
        format!(
            "data_dir = \"{data}\"\n[listener]\nbind = \"127.0.0.1:{listen}\"\n{acme}\
             [cluster]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nname = \"fleet\"\nlease_ttl = \"2s\"\nencryption_key_file = \"{key}\"\n\
             [[certificate]]\ndomains = [\"fleet.example.test\"]\nsource = \"acme\"\n",
            data = root.join(name).join("data").display(),
            // The port Pebble's validations go to is the forwarder's: each replica
            // answers on a port of its own.
            listen = if alpn { port } else { 0 },
            acme = if alpn {
                pebble.acme_section(challenge, "")
            } else {
                pebble.acme_section(challenge, "").replace(
                    &format!("http01_bind = \"127.0.0.1:{}\"", pebble.http_port),
                    &format!("http01_bind = \"127.0.0.1:{port}\""),
                )
            },
            endpoint = fleet.etcd.endpoint(),
            key = root.join("fleet.key").display(),
        )
    };
    // Pebble's validations go to the forwarder; it sends them past the holder.
    let validation_port = if alpn {
        pebble.tls_port
    } else {
        pebble.http_port
    };
    let listen = std::net::TcpListener::bind(("127.0.0.1", validation_port)).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let replicas: Vec<common::Wssd> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let text = config(name, *port);
                let home = fleet.dir.path().join(name);
                s.spawn(move || {
                    std::fs::create_dir_all(&home).unwrap();
                    common::Wssd::start(&home, &text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let targets: Vec<(u32, u16)> = replicas
        .iter()
        .map(|r| r.pid())
        .zip(ports.clone())
        .collect();
    tokio::spawn(forward_to_non_holders(
        listen,
        client(&fleet.etcd),
        b"wssd/fleet/locks/fleet.example.test",
        targets,
        seen.clone(),
    ));
    let all: Vec<&common::Wssd> = replicas.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = common::pebble::pebble_client(&pebble);
    let mut serials = Vec::new();
    for r in &replicas {
        loop {
            // A handshake that verifies against Pebble's root: the certificate is here.
            let served = common::served_serial_for(r.addr, &client, "fleet.example.test").await;
            if let Ok(serial) = &served {
                serials.push(serial.clone());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no certificate ({served:?}):\n{}",
                all.iter()
                    .map(|r| r.logs())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    assert_eq!(
        count(&all, "certificate issued by the CA and stored"),
        1,
        "one order for the fleet:\n{}",
        all.iter()
            .map(|r| r.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "Pebble validated nothing through the forwarder"
    );
    for (answered_by, holder) in &seen {
        assert_ne!(answered_by, holder, "the holder answered a validation");
        assert_ne!(*holder, 0, "a validation while no replica held the lock");
    }
    eprintln!("validations (answered by, holder): {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_an_engine_outage_and_follow_it_again_when_it_returns() {
    let mut fleet = FleetSetup::new();
    let replicas: Vec<common::Wssd> = ["a", "b"].iter().map(|n| fleet.start(n)).collect();
    let client = fleet.client();
    let mut live = Vec::new();
    for r in &replicas {
        live.push(common::ws_connect(r.addr, &client, "/").await.0);
    }
    fleet.etcd.stop();
    // Five seconds without the engine (2.5 lease TTLs): every connection keeps working,
    // and new handshakes keep succeeding.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for (r, ws) in replicas.iter().zip(&mut live) {
            common::echo(ws, "during the outage").await.unwrap();
            common::served_serial(r.addr, &client).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fleet.etcd.resume();
    for r in &replicas {
        r.wait_for_logs(
            "the fleet's engine answers again",
            1,
            Duration::from_secs(30),
        )
        .await;
    }
    // A pair published now reaches both: their watches were set up again.
    let (store, cert) = fleet.publisher();
    use wssd::provision::store::Store;
    let claim = store.claim(&cert).await.unwrap().expect("the lock is free");
    let (pem, summary) =
        wssd::provision::selfsigned::issue(&cert, &fleet.dir.path().join("ca")).unwrap();
    store.save(&cert, &claim, &pem).await.unwrap();
    drop(claim);
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in &replicas {
        while common::served_serial(r.addr, &client).await != summary.serial {
            assert!(
                Instant::now() < deadline,
                "no swap after the outage:\n{}",
                r.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for ws in &mut live {
        common::echo(ws, "after the outage").await.unwrap();
    }
}
