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
            // With the certificate's labels.
            let metric = |name: &str| {
                metrics
                    .lines()
                    .find(|l| l.starts_with(&format!("{name}{{certificate=\"0\",domains=")))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            if metric("wssd_cluster_publish_to_swap_seconds_count") == Some(1.0) {
                let sum = metric("wssd_cluster_publish_to_swap_seconds_sum").unwrap();
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

/// What the test tells the forwarder of validations.
#[derive(Default)]
struct Forwarding {
    /// While set, a validation waits (the order stays pending) before it is forwarded.
    hold: std::sync::atomic::AtomicBool,
    /// How many validations have waited so far.
    held: std::sync::atomic::AtomicUsize,
    /// Replicas (pids) not to forward to: killed or stopped.
    gone: std::sync::Mutex<Vec<u32>>,
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
    control: std::sync::Arc<Forwarding>,
) {
    use std::sync::atomic::Ordering;
    listen.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listen).unwrap();
    let etcd = std::sync::Arc::new(etcd);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let (etcd, replicas, seen, control) = (
            etcd.clone(),
            replicas.clone(),
            seen.clone(),
            control.clone(),
        );
        tokio::spawn(async move {
            if control.hold.load(Ordering::SeqCst) {
                control.held.fetch_add(1, Ordering::SeqCst);
                while control.hold.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let holder: u32 = match etcd.get(lock).await {
                Ok((Some(kv), _)) => String::from_utf8_lossy(&kv.value)
                    .rsplit('-')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            for _ in 0..200 {
                let gone = control.gone.lock().unwrap().clone();
                for (pid, port) in replicas
                    .iter()
                    .filter(|(pid, _)| *pid != holder && !gone.contains(pid))
                {
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
async fn an_acme_fleet_orders_once_per_renewal_and_every_http01_validation_is_answered_by_a_replica_that_did_not_order()
 {
    acme_fleet_orders_once("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_fleet_orders_once_per_renewal_and_every_tls_alpn01_validation_is_answered_by_a_replica_that_did_not_order()
 {
    acme_fleet_orders_once("tls-alpn-01").await;
}

/// Five replicas of one ACME certificate validated by `challenge`, through the first
/// order and ten renewals: one order per renewal, and every validation Pebble makes
/// reaches a replica that does not hold the lock.
async fn acme_fleet_orders_once(challenge: &str) {
    const RENEWALS: usize = 10;
    let alpn = challenge == "tls-alpn-01";
    let fleet = FleetSetup::new();
    // A 9 s lifetime: due after 6 s (its last third), so renewals come every 6 to 8 s.
    let pebble = common::pebble::Pebble::start(
        fleet.dir.path(),
        common::pebble::PebbleOptions {
            validity_secs: Some(9),
            ..Default::default()
        },
    );
    let names = ["a", "b", "c", "d", "e"];
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
        Default::default(),
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
    let logs = || {
        all.iter()
            .map(|r| r.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let issued = "certificate issued by the CA and stored";
    let deadline = Instant::now() + Duration::from_secs(240);
    while count(&all, issued) < 1 + RENEWALS {
        assert!(
            Instant::now() < deadline,
            "{} of {RENEWALS} renewals:\n{}",
            count(&all, issued).saturating_sub(1),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted together: an order for the next renewal may be under way.
    let (orders, issued_now, pebble_orders) = (
        count(&all, "ordered a certificate"),
        count(&all, issued),
        pebble.log().matches("Added order").count(),
    );
    eprintln!(
        "{issued_now} certificates, {orders} orders by the replicas, {pebble_orders} orders at Pebble"
    );
    assert!(
        orders == issued_now || orders == issued_now + 1,
        "one order per certificate: {orders} orders, {issued_now} certificates:\n{}",
        logs()
    );
    assert!(
        pebble_orders == orders || pebble_orders == orders + 1,
        "Pebble saw {pebble_orders} orders, the replicas logged {orders}"
    );
    assert_eq!(count(&all, "renewal failed"), 0, "{}", logs());
    // Every replica serves the fleet's latest pair (read again while a swap is under way).
    let etcd = client_for(&fleet.etcd);
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (record, _) = etcd
                .get(b"wssd/fleet/certs/fleet.example.test")
                .await
                .unwrap();
            let record: serde_json::Value = serde_json::from_slice(&record.unwrap().value).unwrap();
            let served = common::served_serial_for(r.addr, &client, "fleet.example.test").await;
            if served.as_deref().ok() == record["serial"].as_str() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{served:?} is not the fleet's {}",
                record["serial"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let issuers: std::collections::HashSet<String> = all
        .iter()
        .filter(|r| r.logs().contains(issued))
        .map(|r| r.pid().to_string())
        .collect();
    eprintln!("{} replicas took turns ordering", issuers.len());
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
    // Ten seconds without the engine (5 lease TTLs): every connection keeps working,
    // and new handshakes (every 50 ms) keep succeeding.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for (r, ws) in replicas.iter().zip(&mut live) {
            common::echo(ws, "during the outage").await.unwrap();
            common::served_serial(r.addr, &client).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A pair published the moment the engine answers again reaches both within a second:
    // their watches are set up again at once.
    let (store, cert) = fleet.publisher();
    let (pem, summary) =
        wssd::provision::selfsigned::issue(&cert, &fleet.dir.path().join("ca")).unwrap();
    fleet.etcd.resume();
    let back = Instant::now();
    use wssd::provision::store::Store;
    let claim = store.claim(&cert).await.unwrap().expect("the lock is free");
    store.save(&cert, &claim, &pem).await.unwrap();
    drop(claim);
    let waits = replicas.iter().map(|r| {
        let (addr, client, serial) = (r.addr, client.clone(), summary.serial.clone());
        async move {
            while common::served_serial(addr, &client).await != serial {
                if back.elapsed() > Duration::from_secs(20) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some(back.elapsed())
        }
    });
    let converged: Vec<Option<Duration>> = futures_util::future::join_all(waits).await;
    eprintln!(
        "after the engine answered again, each replica served the new pair after {converged:?}"
    );
    for (r, c) in replicas.iter().zip(&converged) {
        let c = c.unwrap_or_else(|| panic!("no swap after the outage:\n{}", r.logs()));
        assert!(
            c <= Duration::from_secs(1),
            "{c:?} after the engine answered again:\n{}",
            r.logs()
        );
        assert_eq!(
            r.count_logs("the fleet's engine answers again"),
            1,
            "{}",
            r.logs()
        );
    }
    for ws in &mut live {
        common::echo(ws, "after the outage").await.unwrap();
    }
}

/// The config of ACME replica `name` of `fleet` (data under `dir/name`) for the
/// certificates `domains` (one certificate each), with `acme` as its `[acme]` section.
fn acme_replica_config(fleet: &FleetSetup, name: &str, acme: &str, domains: &[&str]) -> String {
    let root = fleet.dir.path();
    let certs: String = domains
        .iter()
        .map(|d| format!("[[certificate]]\ndomains = [\"{d}\"]\nsource = \"acme\"\n"))
        .collect();
    format!(
        "data_dir = \"{data}\"\n[listener]\nbind = \"127.0.0.1:0\"\n{acme}\
         [cluster]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nname = \"fleet\"\nlease_ttl = \"2s\"\nencryption_key_file = \"{key}\"\n{certs}",
        data = root.join(name).join("data").display(),
        endpoint = fleet.etcd.endpoint(),
        key = root.join("fleet.key").display(),
    )
}

fn start_replica(fleet: &FleetSetup, name: &str, config: &str) -> common::Wssd {
    let home = fleet.dir.path().join(name);
    std::fs::create_dir_all(&home).unwrap();
    common::Wssd::start(&home, config)
}

/// The one ACME account file in replica `name`'s data directory.
fn account_file(fleet: &FleetSetup, name: &str) -> Vec<u8> {
    let dir = fleet.dir.path().join(name).join("data/acme");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(files.len(), 1, "one account file in {}", dir.display());
    std::fs::read(files[0].path()).unwrap()
}

async fn wait_for_certificate(
    replica: &common::Wssd,
    client: &std::sync::Arc<rustls::ClientConfig>,
    name: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = common::served_serial_for(replica.addr, client, name).await;
        if let Ok(serial) = served {
            return serial;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {name} ({served:?}):\n{}",
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_orders_with_the_fleets_one_acme_account() {
    let fleet = FleetSetup::new();
    let pebble = common::pebble::Pebble::start(fleet.dir.path(), Default::default());
    let acme = pebble.acme_section("http-01", "");
    let client = common::pebble::pebble_client(&pebble);
    let first = start_replica(
        &fleet,
        "a",
        &acme_replica_config(&fleet, "a", &acme, &["one.example.test"]),
    );
    wait_for_certificate(&first, &client, "one.example.test").await;
    assert!(
        first.logs().contains("created an ACME account"),
        "{}",
        first.logs()
    );
    drop(first);
    // Another replica, with nothing on its disk, orders a certificate of its own: with
    // the account the first one made, not a new one.
    let second = start_replica(
        &fleet,
        "b",
        &acme_replica_config(
            &fleet,
            "b",
            &acme,
            &["one.example.test", "two.example.test"],
        ),
    );
    wait_for_certificate(&second, &client, "two.example.test").await;
    let logs = second.logs();
    assert!(logs.contains("using the fleet's ACME account"), "{logs}");
    assert!(!logs.contains("created an ACME account"), "{logs}");
    assert_eq!(
        account_file(&fleet, "b"),
        account_file(&fleet, "a"),
        "the same account on both machines"
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = fleet.dir.path().join("b/data/acme");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("account-") {
            assert_eq!(
                entry.metadata().unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
    // The engine holds it sealed: no private key in the clear.
    let (accounts, _) = client_for(&fleet.etcd)
        .get_prefix(b"wssd/fleet/accounts/")
        .await
        .unwrap();
    assert_eq!(accounts.len(), 1);
    let value = String::from_utf8_lossy(&accounts[0].value).to_string();
    assert!(
        !value.contains("key_pkcs8") && !value.contains("PRIVATE"),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_backs_off_for_the_whole_fleet() {
    let fleet = FleetSetup::new();
    let pebble = common::pebble::Pebble::start(fleet.dir.path(), Default::default());
    // Nobody answers on Pebble's http-01 port: every order fails at validation.
    let replicas: Vec<common::Wssd> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let acme = pebble
                .acme_section("http-01", "retry_backoff = \"5s\"")
                .replace(
                    &format!("http01_bind = \"127.0.0.1:{}\"", pebble.http_port),
                    &format!(
                        "http01_bind = \"127.0.0.1:{}\"",
                        common::pebble::free_port()
                    ),
                );
            start_replica(
                &fleet,
                name,
                &acme_replica_config(&fleet, name, &acme, &["nobody.example.test"]),
            )
        })
        .collect();
    let all: Vec<&common::Wssd> = replicas.iter().collect();
    let logs = || {
        all.iter()
            .map(|r| r.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&all, "order failed") == 0 {
        assert!(Instant::now() < deadline, "no failure:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The backoff (5 s ±10%) holds for every replica, not just the one that failed: the
    // others take the lock meanwhile (every 2 s) and find the fleet's record.
    let started = Instant::now();
    // `wssd status` on any replica shows the fleet's failure and its next attempt.
    let view = status_json(&fleet, "c");
    let failing = &view[0]["fleet"]["failing"];
    assert_eq!(failing["failures"], 1, "{view}");
    assert!(failing["next_attempt"].is_string(), "{view}");
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{view}"
    );
    tokio::time::sleep(Duration::from_millis(4_000).saturating_sub(started.elapsed())).await;
    assert_eq!(
        count(&all, "ordered a certificate"),
        1,
        "another replica ordered during the backoff:\n{}",
        logs()
    );
    while count(&all, "order failed") < 2 {
        assert!(Instant::now() < deadline, "no second attempt:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&all, "ordered a certificate"), 2, "{}", logs());
    assert_eq!(
        count(&all, "failures=2"),
        1,
        "the second attempt counts the fleet's first failure:\n{}",
        logs()
    );
}

/// Five http-01 replicas of `fleet.example.test` behind the forwarder of validations,
/// which holds every validation while `control.hold` is set.
struct HeldFleet {
    fleet: FleetSetup,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u32)>>>,
    pebble: common::pebble::Pebble,
    replicas: Vec<common::Wssd>,
    control: std::sync::Arc<Forwarding>,
}

impl HeldFleet {
    async fn start() -> HeldFleet {
        HeldFleet::start_with("2s", false).await
    }

    /// With `lease_ttl`; `dev_cert`: each replica also serves `localhost` from the dev CA.
    async fn start_with(lease_ttl: &str, dev_cert: bool) -> HeldFleet {
        let fleet = FleetSetup::new();
        let pebble = common::pebble::Pebble::start(fleet.dir.path(), Default::default());
        let listen = std::net::TcpListener::bind(("127.0.0.1", pebble.http_port)).unwrap();
        let control = std::sync::Arc::new(Forwarding::default());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        control
            .hold
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut replicas = Vec::new();
        let mut targets = Vec::new();
        for name in ["a", "b", "c", "d", "e"] {
            let port = common::pebble::free_port();
            let acme = pebble
                .acme_section("http-01", "retry_backoff = \"1s\"")
                .replace(
                    &format!("http01_bind = \"127.0.0.1:{}\"", pebble.http_port),
                    &format!("http01_bind = \"127.0.0.1:{port}\""),
                );
            let mut config = acme_replica_config(&fleet, name, &acme, &["fleet.example.test"])
                .replace(
                    "lease_ttl = \"2s\"",
                    &format!("lease_ttl = \"{lease_ttl}\""),
                );
            if dev_cert {
                config = format!(
                    "ca_dir = \"{}\"\n{config}[[certificate]]\ndomains = [\"localhost\"]\nsource = \"selfsigned\"\n",
                    fleet.dir.path().join("ca").display()
                );
            }
            let replica = start_replica(&fleet, name, &config);
            targets.push((replica.pid(), port));
            replicas.push(replica);
        }
        tokio::spawn(forward_to_non_holders(
            listen,
            client(&fleet.etcd),
            b"wssd/fleet/locks/fleet.example.test",
            targets,
            seen.clone(),
            control.clone(),
        ));
        HeldFleet {
            fleet,
            seen,
            pebble,
            replicas,
            control,
        }
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    fn count(&self, needle: &str) -> usize {
        count(&self.replicas.iter().collect::<Vec<_>>(), needle)
    }

    /// Waits until an order is pending on a held validation; the replica that placed it.
    async fn holder_mid_order(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.control.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no validation:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (kv, _) = client(&self.fleet.etcd)
            .get(b"wssd/fleet/locks/fleet.example.test")
            .await
            .unwrap();
        let holder = String::from_utf8(kv.expect("the lock is held").value).unwrap();
        self.replicas
            .iter()
            .position(|r| holder.ends_with(&format!("-{}", r.pid())))
            .expect("the holder is a replica")
    }

    fn gone(&self, index: usize) {
        let pid = self.replicas[index].pid();
        self.control.gone.lock().unwrap().push(pid);
    }

    fn release(&self) {
        self.control
            .hold
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The serial replica `r` serves to a handshake that verifies against Pebble's root,
/// if it answers within a second.
async fn pebble_serial(
    r: &common::Wssd,
    client: &std::sync::Arc<rustls::ClientConfig>,
) -> Option<String> {
    tokio::time::timeout(
        Duration::from_secs(1),
        common::served_serial_for(r.addr, client, "fleet.example.test"),
    )
    .await
    .ok()
    .and_then(Result::ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_killed_mid_order_is_replaced_within_a_lease_and_the_survivors_converge() {
    let held = HeldFleet::start().await;
    let holder = held.holder_mid_order().await;
    held.replicas[holder].signal("KILL");
    let killed = Instant::now();
    held.gone(holder);
    held.release();
    let client = common::pebble::pebble_client(&held.pebble);
    let survivors: Vec<&common::Wssd> = held
        .replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != holder)
        .map(|(_, r)| r)
        .collect();
    // Lease TTL (2 s) + 5 s.
    let bound = Duration::from_secs(7);
    let mut serials = Vec::new();
    for r in &survivors {
        loop {
            if let Some(serial) = pebble_serial(r, &client).await {
                serials.push(serial);
                break;
            }
            assert!(
                killed.elapsed() < bound,
                "the survivors did not converge within {bound:?}:\n{}",
                held.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let converged = killed.elapsed();
    eprintln!("survivors converged {converged:?} after the holder was killed");
    assert!(
        serials.iter().all(|s| *s == serials[0]),
        "every survivor serves the same certificate: {serials:?}"
    );
    assert!(
        held.count("ordered a certificate") <= 2,
        "at most two orders:\n{}",
        held.logs()
    );
    assert_eq!(held.count("certificate issued by the CA and stored"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_publishes_nothing_and_nobody_goes_back() {
    let held = HeldFleet::start().await;
    let holder = held.holder_mid_order().await;
    held.replicas[holder].signal("STOP");
    held.gone(holder);
    let client = common::pebble::pebble_client(&held.pebble);
    // Every replica's serials as handshakes see them, every 50 ms, from now on.
    let seen: Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>> =
        held.replicas.iter().map(|_| Default::default()).collect();
    let watching = tokio_util::sync::CancellationToken::new();
    let mut monitors = Vec::new();
    for (r, log) in held.replicas.iter().zip(&seen) {
        let (addr, log, client, stop) = (r.addr, log.clone(), client.clone(), watching.clone());
        monitors.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let answer = tokio::time::timeout(
                    Duration::from_millis(500),
                    common::served_serial_for(addr, &client, "fleet.example.test"),
                )
                .await;
                if let Ok(Ok(serial)) = answer {
                    let mut log = log.lock().unwrap();
                    if log.last() != Some(&serial) {
                        log.push(serial);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    // Its held validation goes through now (to a live replica, which has the answer from
    // the engine): its order could complete the moment it runs again.
    held.release();
    // Paused for 2 × the lease TTL: another replica takes the lock and obtains it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    held.replicas[holder].signal("CONT");
    held.control.gone.lock().unwrap().clear();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all_have = seen.iter().all(|s| !s.lock().unwrap().is_empty());
        if all_have {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence:\n{}",
            held.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a late publish from the paused holder to show, if it could.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watching.cancel();
    for m in monitors {
        m.await.unwrap();
    }
    let paused_logs = held.replicas[holder].logs();
    assert!(
        !paused_logs.contains("certificate issued by the CA and stored"),
        "the paused holder published:\n{paused_logs}"
    );
    assert!(
        paused_logs.contains("giving the lock up")
            || paused_logs.contains("lock lapsed")
            || paused_logs.contains("lock was lost"),
        "the paused holder did not notice it lost the lock:\n{paused_logs}"
    );
    assert_eq!(
        held.count("certificate issued by the CA and stored"),
        1,
        "{}",
        held.logs()
    );
    let (record, _) = client_for(&held.fleet.etcd)
        .get(b"wssd/fleet/certs/fleet.example.test")
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record.unwrap().value).unwrap();
    let published = record["serial"].as_str().unwrap().to_string();
    for (i, log) in seen.iter().enumerate() {
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![published.clone()],
            "replica {i} served only the fleet's one certificate, never another"
        );
    }
    assert!(
        !record["publisher"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-{}", held.replicas[holder].pid())),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_mid_order_drops_nothing_starts_no_order_and_the_pair_lands_when_it_returns()
 {
    // A lease (30 s) longer than the outage (10 s): the holder keeps its lock through it.
    let mut held = HeldFleet::start_with("30s", true).await;
    held.holder_mid_order().await;
    let dev = held.fleet.client();
    let mut live = Vec::new();
    for r in &held.replicas {
        live.push(common::ws_connect(r.addr, &dev, "/").await.0);
    }
    // The validation goes through; once a replica has answered it, the engine goes away
    // while the holder finishes the order.
    held.release();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no validation:\n{}", held.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.fleet.etcd.stop();
    let orders = held.count("ordered a certificate");
    let (mut handshakes, mut failed) = (0, 0);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for (r, ws) in held.replicas.iter().zip(&mut live) {
            common::echo(ws, "while the engine is away")
                .await
                .unwrap_or_else(|e| panic!("a WebSocket dropped: {e}"));
            handshakes += 1;
            if common::tls_connect(r.addr, &dev).await.is_err() {
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed, 0, "of {handshakes} handshakes during the outage");
    assert_eq!(
        held.count("ordered a certificate"),
        orders,
        "an order started while the engine was away:\n{}",
        held.logs()
    );
    let client = common::pebble::pebble_client(&held.pebble);
    for r in &held.replicas {
        assert_eq!(
            pebble_serial(r, &client).await,
            None,
            "the pair was installed without the engine:\n{}",
            held.logs()
        );
    }
    held.fleet.etcd.resume();
    let back = Instant::now();
    let mut serials = Vec::new();
    for r in &held.replicas {
        loop {
            if let Some(serial) = pebble_serial(r, &client).await {
                serials.push(serial);
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "the pair did not land:\n{}",
                held.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let converged = back.elapsed();
    eprintln!(
        "every replica serves the new certificate {converged:?} after the engine answers again"
    );
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    assert_eq!(
        held.count("the new pair is published once it does"),
        1,
        "the publish met the outage:\n{}",
        held.logs()
    );
    assert_eq!(
        held.count("ordered a certificate"),
        1,
        "the order made before the outage was published; no other:\n{}",
        held.logs()
    );
    for ws in &mut live {
        common::echo(ws, "after the outage").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_publishes_reach_five_replicas_within_a_second_with_every_websocket_and_handshake_kept()
 {
    let fleet = FleetSetup::new();
    let replicas: Vec<common::Wssd> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| fleet.start(n))
        .collect();
    let client = fleet.client();
    // 5 × 100 live WebSockets through all of it.
    let mut live = Vec::new();
    for r in &replicas {
        for _ in 0..100 {
            live.push(common::ws_connect(r.addr, &client, "/").await.0);
        }
    }
    // New handshakes to every replica every 50 ms.
    let stop = tokio_util::sync::CancellationToken::new();
    let handshakes = {
        let (addrs, client, stop) = (
            replicas.iter().map(|r| r.addr).collect::<Vec<_>>(),
            client.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut made, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                for addr in &addrs {
                    made += 1;
                    let answer = tokio::time::timeout(
                        Duration::from_secs(5),
                        common::tls_connect(*addr, &client),
                    )
                    .await;
                    match answer {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => failed.push(e.to_string()),
                        Err(_) => failed.push("no handshake within 5 s".into()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (made, failed)
        })
    };
    let (store, cert) = fleet.publisher();
    use wssd::provision::store::Store;
    let mut latencies = Vec::new();
    for round in 0..50 {
        let claim = store.claim(&cert).await.unwrap().expect("the lock is free");
        let (pem, summary) =
            wssd::provision::selfsigned::issue(&cert, &fleet.dir.path().join("ca")).unwrap();
        let published = Instant::now();
        store.save(&cert, &claim, &pem).await.unwrap();
        drop(claim);
        // Every replica polled at once: the first handshake that sees the new serial.
        let waits = replicas.iter().map(|r| {
            let (addr, client, serial) = (r.addr, client.clone(), summary.serial.clone());
            async move {
                loop {
                    if common::served_serial(addr, &client).await == serial {
                        return Some(published.elapsed());
                    }
                    if published.elapsed() > Duration::from_secs(20) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        for (r, seen) in replicas
            .iter()
            .zip(futures_util::future::join_all(waits).await)
        {
            let seen =
                seen.unwrap_or_else(|| panic!("round {round}: no swap in 20 s:\n{}", r.logs()));
            latencies.push(seen);
        }
    }
    stop.cancel();
    let (made, failed) = handshakes.await.unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "publish to swap over 50 publishes x 5 replicas: p50 {:?}, p99 {:?}, max {:?}; {made} handshakes",
        at(0.5),
        at(0.99),
        latencies.last().unwrap()
    );
    assert!(
        failed.is_empty(),
        "{} of {made} handshakes failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let mut dropped = 0;
    for ws in &mut live {
        if common::echo(ws, "after 50 swaps").await.is_err() {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 0, "of {} WebSockets", live.len());
    assert!(
        at(0.99) <= Duration::from_secs(1),
        "p99 publish to swap {:?} (of {latencies:?})",
        at(0.99)
    );
}
