//! The names in a config: the domains a certificate covers and the upstream URL. Pure
//! parsing with unit tests; serde calls these while reading the file, so a bad name is
//! reported with its key and line.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

/// A plain `ws://host:port` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "ws://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "ws://{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = text
            .parse()
            .map_err(|e| format!("invalid URL {text:?}: {e}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(format!(
                    "{text:?}: a wss:// upstream is not supported; wssd terminates TLS and speaks plain ws:// to the upstream"
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?}: the upstream must be a ws:// URL, like \"ws://127.0.0.1:9000\""
                ));
            }
        }
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
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !labels.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is not a valid DNS name or IP address (letters, digits, '-' and '.' only; a wildcard only as a leading \"*.\")"
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Domain::parse("::1").unwrap().dir_name(), "__1");
        assert_eq!(
            Domain::parse("*.a.example").unwrap().dir_name(),
            "_wildcard.a.example"
        );
    }

    #[test]
    fn upstreams_are_plain_ws_without_a_path() {
        let up: Upstream = "ws://127.0.0.1:9000".parse().unwrap();
        assert_eq!((up.host.as_str(), up.port), ("127.0.0.1", 9000));
        assert_eq!("ws://app".parse::<Upstream>().unwrap().port, 80);
        let v6: Upstream = "ws://[::1]:9000/".parse().unwrap();
        assert_eq!(v6.to_string(), "ws://[::1]:9000");
        for bad in [
            "wss://x:1",
            "http://x:1",
            "ws://x:1/path",
            "ws://x:1/?q",
            "x:1",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad:?} accepted");
        }
    }
}
