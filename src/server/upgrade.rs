//! Deciding whether an HTTP request is a WebSocket upgrade wssd will serve (RFC 6455
//! §4.2.1), before any upstream is contacted. A refusal is a status code, the headers
//! that tell the client what to do instead, and a one-line reason.

use super::http::Request;
use super::origin;
use crate::config::OriginPattern;

/// A request that may be upgraded.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub message: String,
}

impl Rejection {
    pub fn new(status: u16, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            headers: Vec::new(),
            message: message.into(),
        }
    }

    fn with(mut self, name: &'static str, value: &'static str) -> Rejection {
        self.headers.push((name, value));
        self
    }
}

/// Checks `req` as an upgrade, with `allowed_origins` (empty: any).
pub fn check(req: &Request, allowed_origins: &[OriginPattern]) -> Result<Upgrade, Rejection> {
    check_target_and_host(req)?;
    check_upgrade(req, allowed_origins)
}

/// What every request must get right before its meaning (its route, its upgrade) is
/// looked at: an origin-form target and one valid Host.
pub fn check_target_and_host(req: &Request) -> Result<(), Rejection> {
    if !req.has_origin_form_target() {
        return Err(Rejection::new(
            400,
            "The request target must be a path, like /chat?room=1.\n",
        ));
    }
    match req.host() {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Rejection::new(400, "Host is missing.\n")),
        Err(why) => return Err(Rejection::new(400, why)),
    }
    Ok(())
}

/// Checks a request whose target and Host are good ([`check_target_and_host`]) as an
/// upgrade, with `allowed_origins` (empty: any).
pub fn check_upgrade(
    req: &Request,
    allowed_origins: &[OriginPattern],
) -> Result<Upgrade, Rejection> {
    let wants_websocket = req
        .tokens("upgrade")
        .any(|t| t.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return Err(Rejection::new(
            426,
            "This is a WebSocket endpoint: connect with a WebSocket client (wss://).\n",
        )
        .with("Upgrade", "websocket")
        .with("Connection", "Upgrade"));
    }
    if req.method != "GET" {
        return Err(Rejection::new(405, "WebSocket upgrades use GET.\n").with("Allow", "GET"));
    }
    if !req
        .tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(Rejection::new(400, "Connection: Upgrade is missing.\n"));
    }
    // One key, one version, one Origin: a request that repeats them is ambiguous, and a
    // proxy must not guess which copy the upstream would read (the allow-list would check
    // one, the upstream might read the other).
    for name in ["sec-websocket-key", "sec-websocket-version", "origin"] {
        if req.count(name) > 1 {
            return Err(Rejection::new(
                400,
                format!("{name} appears more than once.\n"),
            ));
        }
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(
            Rejection::new(426, "Only WebSocket version 13 is supported.\n")
                .with("Sec-WebSocket-Version", "13"),
        );
    }
    let key = req.header("sec-websocket-key").unwrap_or_default();
    if !is_valid_key(key) {
        return Err(Rejection::new(
            400,
            "Sec-WebSocket-Key is missing or malformed.\n",
        ));
    }
    if !origin::is_allowed(allowed_origins, req.header("origin")) {
        return Err(Rejection::new(403, "This Origin is not allowed.\n"));
    }
    Ok(Upgrade {
        key: key.to_string(),
    })
}

/// Checks an extended CONNECT with `:protocol = websocket` (RFC 8441 §4) whose target
/// and Host (`:authority`) are good: version 13, one Origin, an allowed Origin. There is
/// no key (the h2 stream is the handshake), so wssd makes one for the upstream's
/// HTTP/1.1 upgrade.
pub fn check_h2_upgrade(
    req: &Request,
    allowed_origins: &[OriginPattern],
) -> Result<Upgrade, Rejection> {
    for name in ["sec-websocket-version", "origin"] {
        if req.count(name) > 1 {
            return Err(Rejection::new(
                400,
                format!("{name} appears more than once.\n"),
            ));
        }
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(
            Rejection::new(400, "Only WebSocket version 13 is supported.\n")
                .with("Sec-WebSocket-Version", "13"),
        );
    }
    if !origin::is_allowed(allowed_origins, req.header("origin")) {
        return Err(Rejection::new(403, "This Origin is not allowed.\n"));
    }
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Rejection::new(500, "No random numbers.\n"))?;
    use base64::Engine;
    Ok(Upgrade {
        key: base64::engine::general_purpose::STANDARD.encode(nonce),
    })
}

/// A key is 16 random bytes, base64: 24 characters ending in `==`.
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> Request {
        Request::parse(format!("GET /chat?x=1 HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
            .unwrap()
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn a_browser_upgrade_passes() {
        let up = check(&req(GOOD), &[]).unwrap();
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn plain_get_gets_426() {
        let r = check(&req(""), &[]).unwrap_err();
        assert_eq!(r.status, 426);
        assert!(r.headers.contains(&("Upgrade", "websocket")));
    }

    #[test]
    fn non_get_upgrade_gets_405() {
        let mut r = req(GOOD);
        r.method = http::Method::POST;
        assert_eq!(check(&r, &[]).unwrap_err().status, 405);
    }

    #[test]
    fn wrong_version_and_bad_key() {
        let old = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(check(&req(&old), &[]).unwrap_err().status, 426);
        let bad = GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(check(&req(&bad), &[]).unwrap_err().status, 400);
    }

    #[test]
    fn keys_are_16_bytes_of_base64() {
        for good in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "+/+/+/+/+/+/+/+/+/+/+A==",
            "zZ09zZ09zZ09zZ09zZ09zw==",
        ] {
            assert!(is_valid_key(good), "{good} refused");
        }
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAAAAAAA==",
            "AAAAAAAAAAAAAAAAAAAA==",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAA-==",
            "AAAAAAAAAAAAAAAAAAAAA_==",
            "AAAAAAAAAAAAAAAAAAAAA ==",
            "AAAAAAAAAAAAAAAAAAAAA===",
        ] {
            assert!(!is_valid_key(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn repeated_keys_are_a_bad_request() {
        let twice = format!("{GOOD}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n");
        assert_eq!(check(&req(&twice), &[]).unwrap_err().status, 400);
    }

    #[test]
    fn missing_host_is_a_bad_request() {
        let r = Request::parse(format!("GET / HTTP/1.1\r\n{GOOD}\r\n").as_bytes()).unwrap();
        assert_eq!(check(&r, &[]).unwrap_err().status, 400);
    }

    #[test]
    fn bad_targets_and_hosts_are_bad_requests() {
        for target in ["http://a/x", "*", "@evil.com", "x", "/a#b"] {
            let r = Request::parse(
                format!("GET {target} HTTP/1.1\r\nHost: a\r\n{GOOD}\r\n").as_bytes(),
            )
            .unwrap();
            assert_eq!(check(&r, &[]).unwrap_err().status, 400, "{target}");
        }
        for host in [
            "a, b", "a\"b", "a;b", "", "a:", "a:1:2", "[::1", "a b", "a/b",
        ] {
            let r =
                Request::parse(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{GOOD}\r\n").as_bytes())
                    .unwrap();
            assert_eq!(check(&r, &[]).unwrap_err().status, 400, "{host:?}");
        }
        let twice = format!("{GOOD}Host: a\r\n");
        assert_eq!(check(&req(&twice), &[]).unwrap_err().status, 400);
        for host in ["a", "a.example:8443", "127.0.0.1", "[::1]:1", "a_b.example"] {
            let r =
                Request::parse(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{GOOD}\r\n").as_bytes())
                    .unwrap();
            assert!(check(&r, &[]).is_ok(), "{host}");
        }
    }

    #[test]
    fn a_repeated_origin_is_a_bad_request() {
        let twice = format!("{GOOD}Origin: https://a.example\r\nOrigin: https://b.example\r\n");
        assert_eq!(check(&req(&twice), &[]).unwrap_err().status, 400);
    }

    /// An extended CONNECT (RFC 8441) as [`Request::from_head`] sees it: no Upgrade,
    /// Connection or key, `:authority` as the Host.
    fn h2(extra: &str) -> Request {
        req(&format!("Sec-WebSocket-Version: 13\r\n{extra}"))
    }

    #[test]
    fn an_extended_connect_is_checked_and_given_a_fresh_key() {
        let list = vec![OriginPattern::parse("https://app.example.com").unwrap()];
        let a = check_h2_upgrade(&h2("Origin: https://app.example.com\r\n"), &list).unwrap();
        let b = check_h2_upgrade(&h2(""), &[]).unwrap();
        assert!(is_valid_key(&a.key), "{}", a.key);
        assert_ne!(a.key, b.key, "each stream gets a key of its own");
        let refused = |r: Request, list: &[OriginPattern]| check_h2_upgrade(&r, list).unwrap_err();
        let twice = refused(h2("Sec-WebSocket-Version: 13\r\n"), &[]);
        assert_eq!(
            (twice.status, twice.message.as_str()),
            (400, "sec-websocket-version appears more than once.\n")
        );
        let origins = refused(
            h2("Origin: https://a.example\r\nOrigin: https://b.example\r\n"),
            &[],
        );
        assert_eq!(
            (origins.status, origins.message.as_str()),
            (400, "origin appears more than once.\n")
        );
        for version in ["Sec-WebSocket-Version: 8\r\n", ""] {
            let r = req(version);
            let old = refused(r, &[]);
            assert_eq!(old.status, 400, "{version:?}");
            assert!(old.headers.contains(&("Sec-WebSocket-Version", "13")));
        }
        assert_eq!(refused(h2(""), &list).status, 403, "no Origin, with a list");
        assert_eq!(
            refused(h2("Origin: https://evil.example\r\n"), &list).status,
            403
        );
    }

    #[test]
    fn origin_is_checked() {
        let list = vec![OriginPattern::parse("https://app.example.com").unwrap()];
        assert_eq!(check(&req(GOOD), &list).unwrap_err().status, 403);
        let with = format!("{GOOD}Origin: https://app.example.com\r\n");
        assert!(check(&req(&with), &list).is_ok());
        let evil = format!("{GOOD}Origin: https://evil.example\r\n");
        assert_eq!(check(&req(&evil), &list).unwrap_err().status, 403);
    }
}
