//! `[[route]]`: which upstream, origins and limits a request gets, by its path.
//!
//! The longest route path that is a prefix of the request's path wins, at a segment
//! boundary: `/ws` matches `/ws`, `/ws/` and `/ws/x`, not `/wsx`. A request that matches
//! no route goes to the listener's `upstream`; with routes and no listener upstream it is
//! answered 404; with neither, the listener is the built-in echo.
//!
//! The path is normalized before matching, as nginx does for `location`: percent-escapes
//! decoded, repeated slashes merged, `.` and `..` segments resolved (above the root: 400).
//! Otherwise `/%77s` or `/x/../ws` would reach the `/ws` service's upstream, which
//! decodes them, without the `/ws` route's origin check. The upstream still receives the
//! target exactly as the client sent it.

use crate::config::{ListenerConfig, OriginPattern, Upstream};

/// What a request is served with.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `None`: the built-in echo.
    pub upstream: Option<Upstream>,
    /// Empty: any Origin.
    pub allowed_origins: Vec<OriginPattern>,
    pub max_message_size: u64,
    /// The largest request body forwarded (plain requests).
    pub max_body_size: u64,
}

/// Why a request has no [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route matches and there is no listener `upstream`: 404.
    NoRoute,
    /// The target is not a path, or its path cannot be normalized: 400.
    BadPath,
}

impl Miss {
    pub fn status(self) -> u16 {
        match self {
            Miss::NoRoute => 404,
            Miss::BadPath => 400,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Miss::NoRoute => "Nothing is served at this path.\n",
            Miss::BadPath => "The request path is malformed.\n",
        }
    }
}

/// The route table of one listener.
#[derive(Debug)]
pub struct Routes {
    /// Longest path first, so that the first match is the longest.
    routes: Vec<(String, Target)>,
    /// For requests that match no route.
    fallback: Option<Target>,
}

impl Routes {
    pub fn new(listener: &ListenerConfig) -> Routes {
        let mut routes: Vec<(String, Target)> = listener
            .routes
            .iter()
            .map(|r| {
                let target = Target {
                    upstream: Some(r.upstream.clone()),
                    allowed_origins: r
                        .allowed_origins
                        .clone()
                        .unwrap_or_else(|| listener.allowed_origins.clone()),
                    max_message_size: r.max_message_size.unwrap_or(listener.max_message_size),
                    max_body_size: r.max_body_size.unwrap_or(listener.max_body_size),
                };
                (r.path.clone(), target)
            })
            .collect();
        routes.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let fallback = (listener.upstream.is_some() || routes.is_empty()).then(|| Target {
            upstream: listener.upstream.clone(),
            allowed_origins: listener.allowed_origins.clone(),
            max_message_size: listener.max_message_size,
            max_body_size: listener.max_body_size,
        });
        Routes { routes, fallback }
    }

    /// The target for a request target (path and query, as the client sent it).
    pub fn select(&self, request_target: &str) -> Result<&Target, Miss> {
        if self.routes.is_empty() {
            // Nothing to tell paths apart for: no work on the common path.
            return self.fallback.as_ref().ok_or(Miss::NoRoute);
        }
        let raw_path = request_target
            .split_once('?')
            .map_or(request_target, |(p, _)| p);
        let path = normalize(raw_path.as_bytes()).ok_or(Miss::BadPath)?;
        self.routes
            .iter()
            .find(|(prefix, _)| is_under(&path, prefix.as_bytes()))
            .map(|(_, target)| target)
            .or(self.fallback.as_ref())
            .ok_or(Miss::NoRoute)
    }

    /// Route paths and targets, longest path first, then the fallback (as `None`).
    pub fn table(&self) -> impl Iterator<Item = (Option<&str>, Option<&Target>)> {
        self.routes
            .iter()
            .map(|(p, t)| (Some(p.as_str()), Some(t)))
            .chain(std::iter::once((None, self.fallback.as_ref())))
    }
}

/// Is `path` the route path `prefix` or under it?
fn is_under(path: &[u8], prefix: &[u8]) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with(b"/") || rest.starts_with(b"/"),
    }
}

/// The path as routes see it: decoded, slashes merged, dot segments resolved. `None`
/// for a path that does not start with `/`, has a malformed or control-character
/// escape, or climbs above the root.
fn normalize(path: &[u8]) -> Option<Vec<u8>> {
    if path.first() != Some(&b'/') {
        return None;
    }
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if value.is_ascii_control() {
                return None;
            }
            decoded.push(value);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // Segments after the leading '/'; a trailing '/' is kept as an empty last segment.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (n, segment) in segments.into_iter().enumerate() {
        match segment {
            b"" if n != last => {}
            b"." => {
                if n == last {
                    out.push(b"");
                }
            }
            b".." => {
                out.pop()?;
                if n == last {
                    out.push(b"");
                }
            }
            s => out.push(s),
        }
    }
    let mut normalized = Vec::with_capacity(decoded.len());
    for segment in out {
        normalized.push(b'/');
        normalized.extend_from_slice(segment);
    }
    if normalized.is_empty() {
        normalized.push(b'/');
    }
    Some(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn norm(path: &str) -> Option<String> {
        normalize(path.as_bytes()).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn paths_are_normalized_as_nginx_does_for_location() {
        for (raw, normalized) in [
            ("/", "/"),
            ("/ws", "/ws"),
            ("/ws/", "/ws/"),
            ("/%77s", "/ws"),
            ("/%2Fws", "/ws"),
            ("//ws", "/ws"),
            ("/a//b///c", "/a/b/c"),
            ("/x/../ws", "/ws"),
            ("/x/..%2Fws", "/ws"),
            ("/./ws", "/ws"),
            ("/ws/.", "/ws/"),
            ("/ws/x/..", "/ws/"),
            ("/ws/..", "/"),
            ("/a/b/../../c", "/c"),
            ("/%7e", "/~"),
            ("/a%20b", "/a b"),
        ] {
            assert_eq!(norm(raw).as_deref(), Some(normalized), "{raw:?}");
        }
        for bad in [
            "", "ws", "*", "/..", "/a/../..", "/%", "/%2", "/%zz", "/%00", "/%0a", "/%7F", "/../ws",
        ] {
            assert_eq!(norm(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        assert!(is_under(b"/ws", b"/ws"));
        assert!(is_under(b"/ws/", b"/ws"));
        assert!(is_under(b"/ws/x", b"/ws"));
        assert!(!is_under(b"/wsx", b"/ws"));
        assert!(!is_under(b"/w", b"/ws"));
        assert!(is_under(b"/api/x", b"/api/"));
        assert!(is_under(b"/api/", b"/api/"));
        assert!(!is_under(b"/api", b"/api/"));
        assert!(is_under(b"/anything", b"/"));
        assert!(is_under(b"/", b"/"));
    }

    fn up(port: u16) -> Upstream {
        format!("http://127.0.0.1:{port}").parse().unwrap()
    }

    fn route(path: &str, port: u16) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            upstream: up(port),
            allowed_origins: None,
            max_message_size: None,
            max_body_size: None,
        }
    }

    fn port_for(routes: &Routes, target: &str) -> Result<Option<u16>, Miss> {
        routes
            .select(target)
            .map(|t| t.upstream.as_ref().map(|u| u.port))
    }

    #[test]
    fn the_longest_prefix_wins_then_the_listener_upstream() {
        let mut listener = ListenerConfig {
            upstream: Some(up(1)),
            ..ListenerConfig::default()
        };
        // File order must not matter: the short one first.
        listener.routes = vec![route("/ws", 2), route("/ws/admin", 3), route("/api/", 4)];
        let routes = Routes::new(&listener);
        assert_eq!(port_for(&routes, "/"), Ok(Some(1)));
        assert_eq!(port_for(&routes, "/index.html?x=/ws"), Ok(Some(1)));
        assert_eq!(port_for(&routes, "/ws"), Ok(Some(2)));
        assert_eq!(port_for(&routes, "/ws?room=1"), Ok(Some(2)));
        assert_eq!(port_for(&routes, "/ws/chat"), Ok(Some(2)));
        assert_eq!(port_for(&routes, "/wsx"), Ok(Some(1)));
        assert_eq!(port_for(&routes, "/ws/admin"), Ok(Some(3)));
        assert_eq!(port_for(&routes, "/ws/admin/x"), Ok(Some(3)));
        assert_eq!(port_for(&routes, "/ws/administrator"), Ok(Some(2)));
        assert_eq!(port_for(&routes, "/ws/x/../admin"), Ok(Some(3)));
        assert_eq!(port_for(&routes, "/ws/%61dmin"), Ok(Some(3)));
        assert_eq!(port_for(&routes, "//ws//admin"), Ok(Some(3)));
        assert_eq!(port_for(&routes, "/api"), Ok(Some(1)));
        assert_eq!(port_for(&routes, "/api/v1"), Ok(Some(4)));
        assert_eq!(port_for(&routes, "/../ws"), Err(Miss::BadPath));
        assert_eq!(port_for(&routes, "/ws%zz"), Err(Miss::BadPath));
        assert_eq!(port_for(&routes, "http://evil/ws"), Err(Miss::BadPath));
        let order: Vec<Option<&str>> = routes.table().map(|(p, _)| p).collect();
        assert_eq!(order, [Some("/ws/admin"), Some("/api/"), Some("/ws"), None]);
    }

    #[test]
    fn without_a_listener_upstream_unmatched_paths_get_404_and_without_routes_the_echo() {
        let mut listener = ListenerConfig::default();
        let echo = Routes::new(&listener);
        assert_eq!(
            port_for(&echo, "/anything"),
            Ok(None),
            "no routes: the echo"
        );
        assert_eq!(
            port_for(&echo, "/%zz"),
            Ok(None),
            "no routes: paths are not looked at"
        );
        listener.routes = vec![route("/ws", 2)];
        let routes = Routes::new(&listener);
        assert_eq!(port_for(&routes, "/ws"), Ok(Some(2)));
        assert_eq!(port_for(&routes, "/"), Err(Miss::NoRoute));
        assert_eq!(port_for(&routes, "/other"), Err(Miss::NoRoute));
        assert_eq!(Miss::NoRoute.status(), 404);
        assert_eq!(Miss::BadPath.status(), 400);
        assert_ne!(Miss::NoRoute.message(), Miss::BadPath.message());
    }

    #[test]
    fn routes_inherit_the_listener_settings_they_do_not_set() {
        let app = OriginPattern::parse("https://app.example").unwrap();
        let admin = OriginPattern::parse("https://admin.example").unwrap();
        let mut listener = ListenerConfig {
            upstream: Some(up(1)),
            allowed_origins: vec![app.clone()],
            max_message_size: 1000,
            ..ListenerConfig::default()
        };
        let mut own = route("/admin", 3);
        own.allowed_origins = Some(vec![admin.clone()]);
        own.max_message_size = Some(10);
        listener.routes = vec![route("/ws", 2), own];
        let routes = Routes::new(&listener);
        let ws = routes.select("/ws").unwrap();
        assert_eq!(
            (ws.allowed_origins.as_slice(), ws.max_message_size),
            (std::slice::from_ref(&app), 1000)
        );
        let adm = routes.select("/admin").unwrap();
        assert_eq!(
            (adm.allowed_origins.as_slice(), adm.max_message_size),
            (std::slice::from_ref(&admin), 10)
        );
        let rest = routes.select("/").unwrap();
        assert_eq!(
            (rest.allowed_origins.as_slice(), rest.max_message_size),
            (std::slice::from_ref(&app), 1000)
        );
    }
}
