//! `[[route]]` (SPEC "Routes and HTTP"): the longest matching path prefix picks the
//! upstream, its origins and its message limit; paths are normalized before matching, so
//! an escaped or dotted path cannot reach a route's upstream past its origin check; no
//! match and no listener upstream is a 404; `wssd check` prints the table. Each case
//! looks at which upstream received the request head, and what it received.

mod common;

use std::time::Duration;

use common::edge::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

async fn status_of(s: &Setup, target: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{origin}{UPGRADE}\r\n");
    let response = raw_exchange(s.wssd.addr, &s.client(), request.as_bytes(), WAIT).await;
    response.lines().next().unwrap_or("").to_string()
}

fn targets(up: &RawUpstream) -> Vec<String> {
    up.heads()
        .iter()
        .map(|h| h.split(' ').nth(1).unwrap_or("").to_string())
        .collect()
}

const OK: &str = "HTTP/1.1 101 Switching Protocols";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_prefix_picks_the_upstream_and_its_origins() {
    let (main, chat, admin) = (
        RawUpstream::start().await,
        RawUpstream::start().await,
        RawUpstream::start().await,
    );
    // `http://` and `ws://` name the same kind of upstream; the short route comes first
    // in the file, so file order cannot be what picks the longer one.
    let s = Setup::start(
        &format!("upstream = \"http://{}\"", main.addr),
        &format!(
            "[[route]]\npath = \"/chat\"\nupstream = \"ws://{}\"\nallowed_origins = [\"https://app.example\"]\n\n[[route]]\npath = \"/chat/admin\"\nupstream = \"http://{}\"\nallowed_origins = [\"https://admin.example\"]\n",
            chat.addr, admin.addr
        ),
    );
    let app = Some("https://app.example");
    let adm = Some("https://admin.example");
    assert_eq!(status_of(&s, "/chat?room=1", app).await, OK);
    assert_eq!(status_of(&s, "/chat/", app).await, OK);
    assert_eq!(status_of(&s, "/chat/room/7", app).await, OK);
    assert_eq!(status_of(&s, "/chat/admin", adm).await, OK);
    assert_eq!(status_of(&s, "/chat/admin/x?y", adm).await, OK);
    assert_eq!(status_of(&s, "/chat/administrator", app).await, OK);
    assert_eq!(
        status_of(&s, "/chatroom", Some("https://anything.example")).await,
        OK
    );
    assert_eq!(status_of(&s, "/", None).await, OK);
    assert_eq!(
        targets(&chat),
        [
            "/chat?room=1",
            "/chat/",
            "/chat/room/7",
            "/chat/administrator"
        ],
        "the path and query reach the upstream unchanged"
    );
    assert_eq!(targets(&admin), ["/chat/admin", "/chat/admin/x?y"]);
    assert_eq!(targets(&main), ["/chatroom", "/"]);

    // Each route's own origins; the listener's (any) elsewhere.
    let forbidden = "HTTP/1.1 403 Forbidden";
    assert_eq!(
        status_of(&s, "/chat", Some("https://evil.example")).await,
        forbidden
    );
    assert_eq!(status_of(&s, "/chat/admin", app).await, forbidden);
    // Escaped, doubled and dotted paths are matched as the upstream would read them.
    for sneaky in [
        "/%63hat",
        "//chat",
        "/x/../chat",
        "/x/..%2Fchat",
        "/chat/%61dmin",
        "/chat//admin",
    ] {
        assert_eq!(
            status_of(&s, sneaky, Some("https://evil.example")).await,
            forbidden,
            "{sneaky}"
        );
    }
    for bad in ["/../chat", "/chat%zz", "/%00"] {
        assert_eq!(
            status_of(&s, bad, None).await,
            "HTTP/1.1 400 Bad Request",
            "{bad}"
        );
    }
    assert_eq!(
        targets(&chat).len(),
        4,
        "nothing more reached /chat's upstream"
    );
    assert_eq!(
        targets(&admin).len(),
        2,
        "nothing more reached /chat/admin's upstream"
    );
    assert_eq!(
        targets(&main).len(),
        2,
        "nothing more reached the listener's upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_listener_upstream_other_paths_get_404() {
    let chat = RawUpstream::start().await;
    let s = Setup::start(
        "",
        &format!(
            "[[route]]\npath = \"/ws/\"\nupstream = \"ws://{}\"\n",
            chat.addr
        ),
    );
    assert_eq!(status_of(&s, "/ws/room", None).await, OK);
    assert_eq!(status_of(&s, "/ws/", None).await, OK);
    let request = format!("GET /ws HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n");
    let response = raw_exchange(s.wssd.addr, &s.client(), request.as_bytes(), WAIT).await;
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
    // wssd's own answer, with its security headers.
    for header in [
        "strict-transport-security:",
        "content-security-policy:",
        "x-frame-options: deny",
    ] {
        assert!(
            response.to_ascii_lowercase().contains(header),
            "{header}: {response}"
        );
    }
    assert_eq!(status_of(&s, "/", None).await, "HTTP/1.1 404 Not Found");
    assert_eq!(
        status_of(&s, "/other", None).await,
        "HTTP/1.1 404 Not Found"
    );
    // The target and Host are judged before the route: 400, not 404.
    for request in [
        format!("GET /other HTTP/1.1\r\nHost: a, b\r\n{UPGRADE}\r\n"),
        format!("GET /other HTTP/1.1\r\n{UPGRADE}\r\n"),
        format!("GET http://localhost/ws/room HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n"),
    ] {
        let response = raw_exchange(s.wssd.addr, &s.client(), request.as_bytes(), WAIT).await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {response}"
        );
    }
    assert_eq!(targets(&chat), ["/ws/room", "/ws/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_has_its_own_message_limit() {
    let (big, small) = (Upstream::start().await, Upstream::start().await);
    let s = Setup::start(
        &format!(
            "upstream = \"ws://{}\"\nmax_message_size = \"64KiB\"",
            big.addr
        ),
        &format!(
            "[[route]]\npath = \"/small\"\nupstream = \"ws://{}\"\nmax_message_size = \"1KiB\"\n",
            small.addr
        ),
    );
    let client = s.client();
    let (mut ws, _) = ws_connect(s.wssd.addr, &client, "/big").await;
    let payload = "x".repeat(4096);
    ws.send(Message::text(payload.clone())).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        back,
        Message::text(payload.clone()),
        "4 KiB is within the listener's 64 KiB"
    );

    let (mut ws, _) = ws_connect(s.wssd.addr, &client, "/small").await;
    ws.send(Message::text("x".repeat(1000))).await.unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        back,
        Message::text("x".repeat(1000)),
        "1000 bytes are within 1 KiB"
    );
    ws.send(Message::text(payload)).await.unwrap();
    let closed = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(closed, Some(1009), "4 KiB is over the route's 1 KiB");
    assert_eq!(
        small.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn check_prints_the_route_table_longest_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[route]]\npath = \"/ws\"\nupstream = \"ws://127.0.0.1:9001\"\n\n[[route]]\npath = \"/ws/admin\"\nupstream = \"http://127.0.0.1:9002\"\nallowed_origins = [\"https://admin.example\"]\nmax_message_size = \"1KiB\"\n",
        files_config(dir.path(), "", "")
    );
    write_pair(dir.path(), &TestCa::new().leaf(&["localhost"]));
    let path = write_config(dir.path(), &config);
    let out = wssd_cmd(dir.path(), &["check", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("routes"))
        .unwrap_or_else(|| panic!("no route table: {stdout}"));
    assert!(lines[0].ends_with("configuration is valid"), "{stdout}");
    assert!(lines[at - 1].contains("routes only"), "{stdout}");
    let row = |n: usize| {
        lines[at + n]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row(0).starts_with("routes /ws/admin → http://127.0.0.1:9002 (origins: https://admin.example; max_message_size 1024 bytes)"),
        "{stdout}"
    );
    assert!(
        row(1).starts_with(
            "/ws → ws://127.0.0.1:9001 (origins: any origin; max_message_size 16777216 bytes)"
        ),
        "{stdout}"
    );
    assert_eq!(row(2), "(other) → 404", "{stdout}");
}
