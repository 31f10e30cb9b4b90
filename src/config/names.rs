//! The names in a config: the domains a certificate covers, the upstream URL, and the
//! origins allowed to open WebSockets. Pure parsing with unit tests; serde calls these
//! while reading the file, so a bad name is reported with its key and line.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

/// A plain-HTTP upstream, `ws://host:port` or `http://host:port`: the two name the same
/// server (one that takes WebSocket upgrades and, on routes, ordinary requests); the
/// scheme is kept only to show the URL as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub scheme: UpstreamScheme,
}

/// How an upstream URL was written; both mean plain HTTP/1.1 to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    Ws,
    Http,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            UpstreamScheme::Ws => "ws",
            UpstreamScheme::Http => "http",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = text
            .parse()
            .map_err(|e| format!("invalid URL {text:?}: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("ws") => UpstreamScheme::Ws,
            Some("http") => UpstreamScheme::Http,
            Some("wss" | "https") => {
                return Err(format!(
                    "{text:?}: a TLS upstream is not supported; wssd terminates TLS and speaks plain HTTP (ws:// or http://) to the upstream"
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?}: the upstream must be a ws:// or http:// URL, like \"http://127.0.0.1:9000\""
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{text:?}: the upstream URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{text:?}: the upstream URL must not have a path or query; each client's own path and query are forwarded unchanged"
            ));
        }
        Ok(Upstream {
            host,
            port: uri.port_u16().unwrap_or(80),
            scheme,
        })
    }
}

/// A name a certificate covers: a DNS name (possibly `*.` wildcard) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Domain {
    Dns(String),
    Ip(IpAddr),
}

impl Domain {
    /// Parses a name from the command line or the config file.
    pub fn parse(text: &str) -> Result<Domain, String> {
        let text = text.trim();
        if let Ok(ip) = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Domain::Ip(ip));
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        let labels = name.strip_prefix("*.").unwrap_or(&name);
        let invalid = |why: String| {
            Err(format!(
                "{text:?} is not a valid DNS name or IP address: {why}"
            ))
        };
        if name.is_empty() {
            return invalid("it is empty".into());
        }
        if name.len() > 253 {
            return invalid(format!(
                "{} characters, over the 253 a DNS name may have",
                name.len()
            ));
        }
        for label in labels.split('.') {
            if label.is_empty() {
                return invalid("an empty label (two dots in a row, or a leading dot)".into());
            }
            if label.len() > 63 {
                return invalid(format!(
                    "the label {label:?} has {} characters, over the 63 a label may have",
                    label.len()
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return invalid(format!("the label {label:?} starts or ends with '-'"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                let why = if c == '*' {
                    "a wildcard may only be the whole first label, as in \"*.example.com\""
                        .to_string()
                } else if !c.is_ascii() {
                    format!(
                        "{c:?} is not ASCII; write an internationalized name in its xn-- (punycode) form"
                    )
                } else {
                    format!("{c:?} is not allowed; labels take letters, digits, '-' and '_'")
                };
                return invalid(why);
            }
        }
        Ok(Domain::Dns(name))
    }

    /// A file-system-safe form, for default paths under `data_dir`.
    pub fn dir_name(&self) -> String {
        self.to_string()
            .replace("*.", "_wildcard.")
            .replace(':', "_")
    }
}

impl TryFrom<String> for Domain {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Domain::parse(&text)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Dns(name) => f.write_str(name),
            Domain::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A web origin (RFC 6454 §4): scheme, host and port, and nothing else. A browser's
/// `Origin` header is exactly this; anything with a path, a query, a fragment, user
/// information or characters no host has is not an origin and matches nothing. Lowercase;
/// the default port of `http`/`ws` (80) and `https`/`wss` (443) is dropped, so
/// `https://a.example:443` and `https://a.example` are the same origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    pub fn parse(text: &str) -> Option<Origin> {
        let text = text.to_ascii_lowercase();
        let (scheme, rest) = text.split_once("://")?;
        let scheme_ok = scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let default_port = match scheme {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        Some(Origin {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port: port.filter(|p| Some(*p) != default_port),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// `host[:port]` of an origin: a DNS-style name (labels of letters, digits, `-` and `_`;
/// no empty label) or a bracketed IPv6 literal, then an optional decimal port.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let literal = &text[1..end];
        literal.parse::<std::net::Ipv6Addr>().ok()?;
        (&text[..=end], &text[end + 1..])
    } else {
        match text.find(':') {
            Some(colon) => (&text[..colon], &text[colon..]),
            None => (text, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        Some(digits) => {
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            Some(digits.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !host.starts_with('[') && (host.len() > 253 || !host.split('.').all(valid_label)) {
        return None;
    }
    Some((host, port))
}

/// An entry of `allowed_origins`: an exact origin (`https://app.example.com`,
/// `http://localhost:3000`) or a wildcard on the host (`https://*.example.com`: any
/// subdomain, at any depth, but not the apex), with the same scheme and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// For a wildcard, `host` holds the suffix after `*.`.
    origin: Origin,
    wildcard: bool,
}

impl OriginPattern {
    pub fn parse(pattern: &str) -> Result<OriginPattern, String> {
        let bad = || {
            format!(
                "{pattern:?} is not an origin pattern; write \"https://app.example.com\" or \"https://*.example.com\" (scheme and host, optional port, no path)"
            )
        };
        let text = pattern.trim();
        let text = text.strip_suffix('/').unwrap_or(text);
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, rest),
        };
        let origin = Origin::parse(&format!("{scheme}://{rest}")).ok_or_else(bad)?;
        if wildcard && origin.host.starts_with('[') {
            return Err(bad());
        }
        Ok(OriginPattern { origin, wildcard })
    }

    /// Does `origin` (parsed from a request's `Origin` header) match?
    pub fn matches(&self, origin: &Origin) -> bool {
        if !self.wildcard {
            return *origin == self.origin;
        }
        let p = &self.origin;
        origin.scheme == p.scheme
            && origin.port == p.port
            && origin
                .host
                .strip_suffix(p.host.as_str())
                .and_then(|labels| labels.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty())
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{star}{}", o.scheme, o.host)?;
        match o.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// An engine URL: `http://` or `https://`, a host and a port, nothing after them.
pub fn engine_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL; write it like \"http://127.0.0.1:2379\""))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority = uri.authority();
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    if !scheme_ok || authority.is_none_or(|a| a.port_u16().is_none()) || !path_ok {
        return Err(format!(
            "{url:?}: an engine URL is http:// or https://, a host and a port, like \"http://127.0.0.1:2379\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_name_says_which_rule_it_broke() {
        for (name, rule) in [
            ("a..b", "empty label"),
            ("", "empty"),
            ("-a.test", "starts or ends with '-'"),
            ("*.*.test", "wildcard may only be the whole first label"),
            ("a*.test", "wildcard"),
            ("bad name!", "' ' is not allowed"),
            ("münchen.de", "xn--"),
        ] {
            let e = Domain::parse(name).unwrap_err();
            assert!(e.contains(rule), "{name}: {e}");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(Domain::parse(&long).unwrap_err().contains("64 characters"));
        assert!(Domain::parse("under_score.test").is_ok());
    }

    #[test]
    fn domains_dns_wildcard_and_ip() {
        assert_eq!(
            Domain::parse("Example.COM."),
            Ok(Domain::Dns("example.com".into()))
        );
        assert_eq!(
            Domain::parse("*.example.com"),
            Ok(Domain::Dns("*.example.com".into()))
        );
        assert_eq!(Domain::parse("::1"), Ok(Domain::Ip("::1".parse().unwrap())));
        assert_eq!(
            Domain::parse("[::1]"),
            Ok(Domain::Ip("::1".parse().unwrap()))
        );
        for bad in [
            "bad name!",
            "",
            "a..b",
            "-a.example",
            "a.*.example",
            "x".repeat(64).as_str(),
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Domain::parse("_acme-challenge.a_b.example"),
            Ok(Domain::Dns("_acme-challenge.a_b.example".into())),
            "underscores are allowed (service labels)"
        );
        // At most 253 characters in all.
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(Domain::parse(&longest).is_ok());
        let too_long = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        assert_eq!(too_long.len(), 254);
        assert!(
            Domain::parse(&too_long).is_err(),
            "254 characters, every label valid"
        );
        assert_eq!(Domain::parse("::1").unwrap().dir_name(), "__1");
        assert_eq!(
            Domain::parse("*.a.example").unwrap().dir_name(),
            "_wildcard.a.example"
        );
    }

    #[test]
    fn upstreams_are_plain_ws_or_http_without_a_path() {
        let up: Upstream = "ws://127.0.0.1:9000".parse().unwrap();
        assert_eq!((up.host.as_str(), up.port), ("127.0.0.1", 9000));
        assert_eq!(up.to_string(), "ws://127.0.0.1:9000");
        assert_eq!("ws://app".parse::<Upstream>().unwrap().port, 80);
        let v6: Upstream = "ws://[::1]:9000/".parse().unwrap();
        assert_eq!(v6.to_string(), "ws://[::1]:9000");
        let http: Upstream = "http://app:8080".parse().unwrap();
        assert_eq!(
            (http.host.as_str(), http.port, http.scheme),
            ("app", 8080, UpstreamScheme::Http)
        );
        assert_eq!(http.to_string(), "http://app:8080");
        assert_eq!(
            "http://[::1]".parse::<Upstream>().unwrap().to_string(),
            "http://[::1]:80"
        );
        for tls in ["wss://x:1", "https://x:1"] {
            let e = tls.parse::<Upstream>().unwrap_err();
            assert!(e.contains("wssd terminates TLS"), "{e}");
        }
        let ftp = "ftp://x:1".parse::<Upstream>().unwrap_err();
        assert!(ftp.contains("must be a ws:// or http:// URL"), "{ftp}");
        let path = "ws://x:1/path".parse::<Upstream>().unwrap_err();
        assert!(path.contains("must not have a path"), "{path}");
        for bad in [
            "wss://x:1",
            "https://x:1",
            "ftp://x:1",
            "ws://x:1/path",
            "http://x:1/api",
            "ws://x:1/?q",
            "x:1",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad:?} accepted");
        }
    }

    fn allowed(patterns: &[&str], origin: &str) -> bool {
        let origin = Origin::parse(origin);
        patterns.iter().any(|p| {
            let p = OriginPattern::parse(p).unwrap();
            origin.as_ref().is_some_and(|o| p.matches(o))
        })
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        let o = Origin::parse("HTTPS://App.Example.com:443").unwrap();
        assert_eq!(o.to_string(), "https://app.example.com");
        assert_eq!(
            Origin::parse("http://localhost:3000").unwrap().to_string(),
            "http://localhost:3000"
        );
        assert_eq!(
            Origin::parse("https://[::1]:8443").unwrap().to_string(),
            "https://[::1]:8443"
        );
        for (with_default, without) in [
            ("http://localhost:80", "http://localhost"),
            ("ws://a.example:80", "ws://a.example"),
            ("wss://a.example:443", "wss://a.example"),
        ] {
            assert_eq!(Origin::parse(with_default).unwrap().to_string(), without);
        }
        assert_eq!(
            Origin::parse("http://localhost:443").unwrap().to_string(),
            "http://localhost:443",
            "443 is not http's default"
        );
        assert_eq!(
            Origin::parse("https://a_b.example:65535")
                .unwrap()
                .to_string(),
            "https://a_b.example:65535"
        );
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert!(Origin::parse(&format!("https://{longest}")).is_some());
        let too_long = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        assert!(
            Origin::parse(&format!("https://{too_long}")).is_none(),
            "254 characters"
        );
        for bad in [
            "null",
            "https://",
            "https://a.example.com/",
            "https://a.example.com/x",
            "https://a.example.com?x",
            "https://a.example.com#x",
            "https://u@a.example.com",
            "https://a..example.com",
            "https://.example.com",
            "https://example.com.",
            "https://a.example.com:",
            "https://a.example.com:0",
            "https://a.example.com:65536",
            "https://a.example.com:44x",
            "https://a b.example.com",
            "https://a\\b.example.com",
            "https://[::1",
            "https://[zz]",
            "https://[::1]x",
            "https://[::1]:",
            "https://a.example:000443",
            "https://a.example:+443",
            "1https://a.example",
            "://a.example",
            "a.example",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?} parsed");
        }
    }

    #[test]
    fn exact_patterns() {
        let list = ["https://app.example.com", "http://localhost:3000/"];
        assert!(allowed(&list, "https://app.example.com"));
        assert!(allowed(&list, "HTTPS://APP.example.com"));
        assert!(allowed(&list, "https://app.example.com:443"));
        assert!(allowed(&list, "http://localhost:3000"));
        assert!(!allowed(&list, "http://app.example.com"), "scheme matters");
        assert!(
            !allowed(&list, "https://app.example.com:8443"),
            "port matters"
        );
        assert!(!allowed(&list, "http://localhost"), "port matters");
        assert!(!allowed(&list, "https://app.example.com.evil.io"));
        assert!(!allowed(&list, "https://app.example.com/"));
        assert!(!allowed(&list, "null"));
    }

    #[test]
    fn wildcard_patterns_take_subdomains_only() {
        let list = ["https://*.example.com"];
        assert!(allowed(&list, "https://a.example.com"));
        assert!(allowed(&list, "https://a.b.example.com"));
        assert!(allowed(&list, "https://a.example.com:443"));
        assert!(!allowed(&list, "https://example.com"), "not the apex");
        assert!(!allowed(&list, "https://evilexample.com"));
        assert!(!allowed(&list, "https://aexample.com"));
        assert!(!allowed(&list, "http://a.example.com"));
        assert!(!allowed(&list, "https://a.example.com:444"));
        assert!(!allowed(&list, "https://a.example.com.evil"));
        for hostile in [
            "https://evil.com?.example.com",
            "https://evil.com#.example.com",
            "https://a@b.example.com",
            "https://evil.com/.example.com",
            "https://evil.com:1.example.com",
        ] {
            assert!(!allowed(&list, hostile), "{hostile}");
        }
        assert!(allowed(
            &["https://*.example.com:8443"],
            "https://a.example.com:8443"
        ));
        assert!(!allowed(
            &["https://*.example.com:8443"],
            "https://a.example.com"
        ));
    }

    #[test]
    fn patterns_print_normalised_and_bad_ones_are_refused() {
        assert_eq!(
            OriginPattern::parse(" HTTPS://*.Example.com:443/ ")
                .unwrap()
                .to_string(),
            "https://*.example.com"
        );
        assert_eq!(
            OriginPattern::parse("http://localhost:3000")
                .unwrap()
                .to_string(),
            "http://localhost:3000"
        );
        for bad in [
            "example.com",
            "https://",
            "https://a.example.com/path",
            "://x",
            "https://*.",
            "https://*",
            "https://a.*.example.com",
            "https://*.[::1]",
            "https://a.example.com?q",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn engine_urls_are_a_scheme_a_host_and_a_port() {
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379",
            "http://[::1]:2379/",
        ] {
            assert!(engine_url(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:2379",
            "ftp://h:1",
            "http://h",
            "http://h:2379/v3",
            "http://h:2379/?x",
            "not a url",
        ] {
            assert!(engine_url(bad).is_err(), "{bad}");
        }
    }
}
