//! The fleet's engine client against a real etcd (Debian `etcd-server` 3.4) on loopback
//! ports: reads, writes, compare-and-swap transactions (what the per-certificate lock
//! and the fenced publish are made of), leases, watches that resume from a revision, and
//! what an engine outage looks like to the client. tests/cluster.rs runs replicas.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd as EtcdServer;
use wssd::cluster::etcd::{Compare, Etcd, EtcdError, EtcdTls, Event, Op, WatchMessage};

fn client(server: &EtcdServer) -> Etcd {
    wssd::tls::install_default_provider();
    Etcd::new(&[server.endpoint()], &EtcdTls::default()).unwrap()
}

#[tokio::test]
async fn keys_are_read_written_and_listed_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(dir.path());
    let etcd = client(&server);
    let (none, _) = etcd.get(b"fleet/certs/a").await.unwrap();
    assert_eq!(none, None);
    let rev = etcd.put(b"fleet/certs/a", b"one", 0).await.unwrap();
    etcd.put(b"fleet/certs/b", &[0, 255, 10], 0).await.unwrap();
    etcd.put(b"fleet/other", b"x", 0).await.unwrap();
    let (a, at) = etcd.get(b"fleet/certs/a").await.unwrap();
    let a = a.unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"one"[..], rev));
    assert!(at >= rev);
    let (listed, _) = etcd.get_prefix(b"fleet/certs/").await.unwrap();
    let keys: Vec<&[u8]> = listed.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"fleet/certs/a"[..], b"fleet/certs/b"]);
    assert_eq!(listed[1].value, [0, 255, 10], "values are bytes");
    etcd.delete(b"fleet/certs/a").await.unwrap();
    assert_eq!(etcd.get(b"fleet/certs/a").await.unwrap().0, None);
}

#[tokio::test]
async fn a_key_created_only_if_absent_is_a_lock_and_its_revision_fences_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(dir.path());
    let etcd = client(&server);
    let lock = b"fleet/locks/a".to_vec();
    let take = |owner: &'static [u8]| {
        let lock = lock.clone();
        let etcd = &etcd;
        async move {
            etcd.txn(
                &[Compare::Created(lock.clone(), 0)],
                &[Op::Put {
                    key: lock.clone(),
                    value: owner.to_vec(),
                    lease: 0,
                }],
                &[Op::Get(lock)],
            )
            .await
            .unwrap()
        }
    };
    let first = take(b"replica-1").await;
    assert!(first.succeeded);
    let second = take(b"replica-2").await;
    assert!(!second.succeeded, "the lock is held");
    assert_eq!(
        second.read[0].value, b"replica-1",
        "the loser reads the holder"
    );
    let fence = second.read[0].create_revision;
    assert_eq!(fence, first.revision);

    // A publish succeeds only while the lock is the one taken (same create revision).
    let publish = |fence: i64, value: &'static [u8]| {
        let etcd = &etcd;
        let lock = lock.clone();
        async move {
            etcd.txn(
                &[Compare::Created(lock, fence)],
                &[Op::Put {
                    key: b"fleet/certs/a".to_vec(),
                    value: value.to_vec(),
                    lease: 0,
                }],
                &[],
            )
            .await
            .unwrap()
            .succeeded
        }
    };
    assert!(publish(fence, b"new pair").await);
    // The lock lapses and someone else takes it: the old holder's publish is refused.
    etcd.delete(&lock).await.unwrap();
    assert!(take(b"replica-2").await.succeeded);
    assert!(
        !publish(fence, b"stale pair").await,
        "a fenced-off holder published"
    );
    let (stored, _) = etcd.get(b"fleet/certs/a").await.unwrap();
    assert_eq!(stored.unwrap().value, b"new pair");

    // Compare on the modification revision: a write that raced another is refused.
    let (kv, _) = etcd.get(b"fleet/certs/a").await.unwrap();
    let seen = kv.unwrap().mod_revision;
    let cas = |value: &'static [u8]| {
        let etcd = &etcd;
        async move {
            etcd.txn(
                &[Compare::Modified(b"fleet/certs/a".to_vec(), seen)],
                &[Op::Put {
                    key: b"fleet/certs/a".to_vec(),
                    value: value.to_vec(),
                    lease: 0,
                }],
                &[],
            )
            .await
            .unwrap()
            .succeeded
        }
    };
    assert!(cas(b"first").await);
    assert!(!cas(b"second").await);
}

#[tokio::test]
async fn a_lease_kept_alive_holds_its_keys_and_one_left_alone_takes_them_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(dir.path());
    let etcd = client(&server);
    let kept = etcd.grant(Duration::from_secs(2)).await.unwrap();
    let left = etcd.grant(Duration::from_secs(2)).await.unwrap();
    assert_ne!(kept, left);
    etcd.put(b"members/kept", b"1", kept).await.unwrap();
    etcd.put(b"members/left", b"1", left).await.unwrap();
    let (kv, _) = etcd.get(b"members/kept").await.unwrap();
    assert_eq!(kv.unwrap().lease, kept);
    // Kept alive for 5 s (2.5 TTLs); the other lease expires meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kept_for = Duration::ZERO;
    while etcd.get(b"members/left").await.unwrap().0.is_some() || kept_for < Duration::from_secs(5)
    {
        let ttl = etcd.keep_alive(kept).await.unwrap();
        assert!(ttl.is_some(), "a lease kept alive expired");
        assert!(
            Instant::now() < deadline,
            "the lease left alone never expired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        kept_for += Duration::from_millis(500);
    }
    assert!(etcd.get(b"members/kept").await.unwrap().0.is_some());
    assert_eq!(
        etcd.keep_alive(left).await.unwrap(),
        None,
        "an expired lease"
    );
    etcd.revoke(kept).await.unwrap();
    assert_eq!(etcd.get(b"members/kept").await.unwrap().0, None);
}

#[tokio::test]
async fn a_watch_sees_changes_in_order_resumes_from_a_revision_and_reports_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(dir.path());
    let etcd = client(&server);
    let first = etcd.put(b"w/certs/a", b"v1", 0).await.unwrap();
    etcd.put(b"w/unrelated", b"x", 0).await.unwrap();
    let second = etcd.put(b"w/certs/b", b"v1", 0).await.unwrap();
    // From the first revision: both changes under the prefix, nothing else.
    let mut watch = etcd.watch(b"w/certs/", first).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch events")
            .unwrap()
            .expect("stream open");
        let WatchMessage::Events(events) = message else {
            panic!("{message:?}")
        };
        seen.extend(events);
    }
    let revs: Vec<i64> = seen
        .iter()
        .map(|e| match e {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        })
        .collect();
    assert_eq!(revs, [first, second]);
    // Live changes arrive on the open watch, a delete included.
    etcd.delete(b"w/certs/a").await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&message, WatchMessage::Events(e) if matches!(&e[..], [Event::Delete { key, .. }] if key == b"w/certs/a")),
        "{message:?}"
    );
    // Revisions compacted away: the watch says so, with where to start again.
    let latest = etcd.put(b"w/certs/c", b"v1", 0).await.unwrap();
    let answer = server.call(
        "/v3/kv/compaction",
        &format!("{{\"revision\":\"{latest}\"}}"),
    );
    assert!(answer.contains("header"), "{answer}");
    let mut old = etcd.watch(b"w/certs/", first).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), old.next())
        .await
        .expect("a compaction notice")
        .unwrap();
    assert_eq!(message, Some(WatchMessage::Compacted(latest)));
}

#[tokio::test]
async fn an_engine_that_is_down_is_an_error_and_the_client_works_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = EtcdServer::start(dir.path());
    let etcd = client(&server);
    etcd.put(b"k", b"before", 0).await.unwrap();
    server.stop();
    let err = etcd.get(b"k").await.unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&server.endpoint()), "{err}");
    server.resume();
    let (kv, _) = etcd.get(b"k").await.unwrap();
    assert_eq!(
        kv.unwrap().value,
        b"before",
        "the data survived the restart"
    );
}

#[tokio::test]
async fn a_second_endpoint_is_tried_when_the_first_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = EtcdServer::start(dir.path());
    wssd::tls::install_default_provider();
    let dead = format!("http://127.0.0.1:{}", common::pebble::free_port());
    let etcd = Etcd::new(&[dead, server.endpoint()], &EtcdTls::default()).unwrap();
    etcd.put(b"k", b"v", 0).await.unwrap();
    assert_eq!(etcd.get(b"k").await.unwrap().0.unwrap().value, b"v");
}
