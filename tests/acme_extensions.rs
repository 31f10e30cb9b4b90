//! The ACME behaviour Debian's Pebble 2.4 cannot show by itself: ACME Renewal Information
//! (RFC 9773: the window, asking again, `replaces`, the `alreadyReplaced` fallback), rate
//! limits (429 with `Retry-After`, in `wssd run` and across `wssd issue` passes) and
//! profiles. Pebble 2.4 serves none of them, so a small front (tests/common/acme_front.rs)
//! adds them to its directory and answers them, and sends everything else to the real
//! Pebble, which still validates and issues.

mod common;

use std::time::{Duration, SystemTime};

use common::acme_front::{Front, FrontState, ari_id, wait_for};
use common::pebble::*;
use common::*;

const DAY: Duration = Duration::from_secs(86_400);

fn config(
    dir: &std::path::Path,
    pebble: &Pebble,
    front: &Front,
    name: &str,
    extra: &str,
) -> String {
    format!(
        "data_dir = \"{}\"\n[listener]\nbind = \"127.0.0.1:{}\"\n[[certificate]]\ndomains = [\"{name}\"]\nsource = \"acme\"\n{}",
        dir.join("data").display(),
        pebble.tls_port,
        front.acme_section(pebble, "tls-alpn-01", extra)
    )
}

/// Pebble that rejects no nonces: these tests count the orders the front sees, and a
/// request retried after a rejected nonce would count twice. (Nonce handling has its own
/// test in tests/acme.rs, with half the nonces rejected.)
fn exact_pebble() -> PebbleOptions {
    PebbleOptions {
        nonce_reject: Some(0),
        ..PebbleOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_information_sets_the_window_is_asked_again_and_replaces_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), exact_pebble());
    let now = SystemTime::now();
    let front = Front::start(
        &pebble,
        FrontState {
            ari_window: Some((now + 30 * DAY, now + 31 * DAY)),
            ari_retry_after: 1,
            ..Default::default()
        },
    )
    .await;
    let text = config(
        dir.path(),
        &pebble,
        &front,
        "ari.example.test",
        "retry_backoff = \"1s\"",
    );
    issue(dir.path(), &text, 0);
    // Orders from here on are the daemon's (a busy machine can make `issue` order twice).
    let base = front.state.lock().unwrap().orders.len();
    let cert_file = dir.path().join("data/certs/ari.example.test/cert.pem");
    let old_id = ari_id(&cert_file);
    let old_serial = assert_chain_verifies(&pebble, &cert_file, &["ari.example.test"]);

    // The daemon plans inside the CA's window (not at two thirds of the 5-year lifetime).
    let wssd = Wssd::start(dir.path(), &text);
    wssd.wait_for_logs("next ACME renewal", 1, Duration::from_secs(30))
        .await;
    let line = wssd
        .logs()
        .lines()
        .find(|l| l.contains("next ACME renewal"))
        .unwrap()
        .to_string();
    let next = humantime::parse_rfc3339(
        line.split("next=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        next >= now + 30 * DAY - Duration::from_secs(1) && next <= now + 31 * DAY,
        "{line}"
    );
    assert!(line.contains("renewal window"), "{line}");
    assert!(front.state.lock().unwrap().ari_requests.contains(&old_id));

    // The CA moves the window to now and refuses `replaces`: wssd asks again (on the CA's
    // Retry-After, here the 10 s floor), orders with `replaces`, then without it.
    {
        let mut s = front.state.lock().unwrap();
        s.ari_window = Some((
            SystemTime::now() - Duration::from_secs(60),
            SystemTime::now() - Duration::from_secs(1),
        ));
        s.already_replaced = true;
    }
    wait_for(
        &front.state,
        "two more orders",
        Duration::from_secs(60),
        |s| s.orders.len() >= base + 2,
    )
    .await;
    let orders: Vec<_> = front.state.lock().unwrap().orders[base..].to_vec();
    assert_eq!(orders[0].0["replaces"], old_id.as_str(), "{orders:?}");
    assert_eq!(orders[0].2, Some(409));
    assert!(orders[1].0.get("replaces").is_none(), "{orders:?}");
    assert_eq!(orders[1].2, None);
    let client = pebble_client(&pebble);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while served_serial_for(wssd.addr, &client, "ari.example.test")
        .await
        .unwrap()
        == old_serial
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not renewed:\n{}",
            wssd.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        wssd.count_logs("the CA refused `replaces`") >= 1,
        "{}",
        wssd.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_waited_out_as_the_ca_says_in_run() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), exact_pebble());
    let front = Front::start(
        &pebble,
        FrontState {
            rate_limit_orders: 1,
            rate_limit_retry_after: 6,
            ..Default::default()
        },
    )
    .await;
    // A 1 s backoff: only Retry-After can explain a longer wait.
    let text = config(
        dir.path(),
        &pebble,
        &front,
        "limited.example.test",
        "retry_backoff = \"1s\"",
    );
    let wssd = Wssd::start(dir.path(), &text);
    wait_for(
        &front.state,
        "a second order",
        Duration::from_secs(60),
        |s| s.orders.len() >= 2,
    )
    .await;
    let orders: Vec<_> = front.state.lock().unwrap().orders.clone();
    assert_eq!(orders[0].2, Some(429));
    let gap = orders[1].1.duration_since(orders[0].1).unwrap();
    assert!(
        gap >= Duration::from_millis(5_500),
        "ordered again after {gap:?}, before the CA's Retry-After of 6 s"
    );
    wssd.wait_for_logs(
        "certificate issued by the CA and stored",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert!(wssd.logs().contains("rateLimited"), "{}", wssd.logs());
}

#[test]
fn a_rate_limit_holds_across_issue_passes() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), exact_pebble());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let front = rt.block_on(Front::start(
        &pebble,
        FrontState {
            rate_limit_orders: 1,
            rate_limit_retry_after: 3600,
            ..Default::default()
        },
    ));
    let text = config(dir.path(), &pebble, &front, "pass.example.test", "");
    let (_, err) = issue(dir.path(), &text, 1);
    assert!(err.contains("rateLimited"), "{err}");
    assert_eq!(front.state.lock().unwrap().orders.len(), 1);
    // The next pass does not ask the CA before the time it gave.
    let (_, err) = issue(dir.path(), &text, 1);
    assert!(err.contains("asked to wait until"), "{err}");
    assert_eq!(
        front.state.lock().unwrap().orders.len(),
        1,
        "the CA was asked again"
    );
    let status = wssd_cmd(
        dir.path(),
        &[
            "status",
            "--config",
            dir.path().join("wssd.toml").to_str().unwrap(),
            "--json",
        ],
    );
    let entries: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("rateLimited"),
        "{entries}"
    );
}

#[test]
fn a_profile_the_ca_lists_goes_into_the_order_and_an_unknown_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(dir.path(), exact_pebble());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let front = rt.block_on(Front::start(
        &pebble,
        FrontState {
            profiles: vec![
                ("classic".into(), "90 days".into()),
                ("shortlived".into(), "6 days".into()),
            ],
            ..Default::default()
        },
    ));
    let text = config(
        dir.path(),
        &pebble,
        &front,
        "profile.example.test",
        "profile = \"shortlived\"",
    );
    issue(dir.path(), &text, 0);
    let orders: Vec<_> = front.state.lock().unwrap().orders.clone();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].0["profile"], "shortlived", "{:?}", orders[0].0);

    // A profile the CA does not list: a clear error, and no order.
    let dir2 = tempfile::tempdir().unwrap();
    let text = config(
        dir2.path(),
        &pebble,
        &front,
        "profile.example.test",
        "profile = \"nope\"",
    );
    let (_, err) = issue(dir2.path(), &text, 1);
    assert!(
        err.contains("no profile named \"nope\"")
            && err.contains("classic")
            && err.contains("shortlived"),
        "{err}"
    );
    assert_eq!(
        front.state.lock().unwrap().orders.len(),
        1,
        "an order was placed anyway"
    );
}
