//! Which headers go on to the upstream and which come back, for WebSocket upgrades
//! ([`super::proxy`]) and plain requests ([`super::forward`]) alike (SPEC "Proxying").
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1), and those the client's `Connection` names, stay
//! on their hop. The forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
//! `X-Forwarded-Client-Cert`) are wssd's to set: a client's copies are dropped, so that
//! the upstream can trust them. Header names with an underscore are dropped (as nginx
//! does), because CGI, WSGI and Rack servers read `X_Forwarded_For` as `X-Forwarded-For`.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};

/// Request headers that describe one hop and are not forwarded, plus the forwarding
/// headers wssd sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    // wssd answers `Expect: 100-continue` itself, when it starts reading the body.
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    CLIENT_CERT_HEADER_LOWER,
];

/// Headers a client's `Connection` cannot turn into hop-by-hop ones: wssd judged them
/// (Origin, Host) or the handshake needs them.
const NEVER_HOP_BY_HOP: &[&str] = &[
    "host",
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Response headers that describe one hop (or that wssd writes itself for a 101).
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "transfer-encoding",
    "te",
    "trailer",
];

/// The header that carries the verified client certificate to the upstream. Whatever a
/// client sends under this name is dropped, so only wssd can set it.
pub const CLIENT_CERT_HEADER: HeaderName = HeaderName::from_static(CLIENT_CERT_HEADER_LOWER);
const CLIENT_CERT_HEADER_LOWER: &str = "x-forwarded-client-cert";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The names a `Connection` header value lists, as hop-by-hop headers to drop (never the
/// ones in `NEVER_HOP_BY_HOP`).
pub fn connection_named<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a str> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && !NEVER_HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)))
        .collect()
}

/// Does the client's request header `name` go on to the upstream?
pub fn forwards_request_header(name: &str, named: &[&str]) -> bool {
    !(NOT_FORWARDED.iter().any(|h| name.eq_ignore_ascii_case(h))
        || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        || name.contains('_'))
}

/// Does the upstream's response header `name` go back to the client?
pub fn returns_response_header(name: &str, named: &[&str]) -> bool {
    !(NOT_RETURNED.iter().any(|h| name.eq_ignore_ascii_case(h))
        || named.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// The forwarding headers for a client at `peer` that asked for `host`, in order.
pub fn forwarding_headers(peer: IpAddr, host: &str) -> [(HeaderName, HeaderValue); 4] {
    ClientAddress::new(peer).headers(host)
}

/// The parts of the forwarding headers that name the client: made once per connection,
/// as they are the same for all its requests.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    /// `X-Forwarded-For`.
    address: HeaderValue,
    /// `Forwarded` up to the host: `for=...;proto=https;host="`.
    forwarded_prefix: String,
}

impl ClientAddress {
    pub fn new(peer: IpAddr) -> ClientAddress {
        let forwarded_for = match peer {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        ClientAddress {
            address: HeaderValue::try_from(peer.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_prefix: format!("for={forwarded_for};proto=https;host=\""),
        }
    }

    /// The forwarding headers of a request that asked for `host`, in order.
    pub fn headers(&self, host: &str) -> [(HeaderName, HeaderValue); 4] {
        let mut forwarded = String::with_capacity(self.forwarded_prefix.len() + host.len() + 1);
        forwarded.push_str(&self.forwarded_prefix);
        forwarded.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
        forwarded.push('"');
        let value = |text: String| {
            HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("invalid"))
        };
        [
            (X_FORWARDED_FOR, self.address.clone()),
            (X_FORWARDED_PROTO, HeaderValue::from_static("https")),
            (X_FORWARDED_HOST, value(host.to_string())),
            (http::header::FORWARDED, value(forwarded)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_forwarding_headers_stay_behind() {
        let named = connection_named(
            [
                b"keep-alive, X-Secret".as_slice(),
                b"Origin, Host".as_slice(),
            ]
            .into_iter(),
        );
        assert_eq!(
            named,
            ["keep-alive", "X-Secret"],
            "Origin and Host cannot be named away"
        );
        for dropped in [
            "Connection",
            "Keep-Alive",
            "Transfer-Encoding",
            "TE",
            "Upgrade",
            "Host",
            "Expect",
            "X-Forwarded-For",
            "x-real-ip",
            "Forwarded",
            "X-Forwarded-Client-Cert",
            "X_Forwarded_For",
            "x-secret",
        ] {
            assert!(!forwards_request_header(dropped, &named), "{dropped}");
        }
        for kept in [
            "Cookie",
            "Authorization",
            "Origin",
            "Sec-WebSocket-Protocol",
            "Content-Type",
            "Accept",
        ] {
            assert!(forwards_request_header(kept, &named), "{kept}");
        }
        for dropped in [
            "Connection",
            "Transfer-Encoding",
            "Keep-Alive",
            "Upgrade",
            "x-secret",
        ] {
            assert!(!returns_response_header(dropped, &named), "{dropped}");
        }
        for kept in [
            "Content-Length",
            "Content-Type",
            "Set-Cookie",
            "Content-Security-Policy",
        ] {
            assert!(returns_response_header(kept, &named), "{kept}");
        }
    }

    #[test]
    fn forwarding_headers_name_the_client_and_the_host() {
        let v4 = forwarding_headers("192.0.2.7".parse().unwrap(), "chat.example:8443");
        let v4: Vec<(&str, &str)> = v4
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            v4,
            [
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "chat.example:8443"),
                (
                    "forwarded",
                    "for=192.0.2.7;proto=https;host=\"chat.example:8443\""
                )
            ]
        );
        let v6 = forwarding_headers("2001:db8::1".parse().unwrap(), "[::1]");
        assert_eq!(v6[0].1, "2001:db8::1");
        assert_eq!(v6[3].1, "for=\"[2001:db8::1]\";proto=https;host=\"[::1]\"");
        // Quotes and backslashes cannot end the quoted host early.
        let odd = forwarding_headers("192.0.2.7".parse().unwrap(), "a\"b\\c");
        assert_eq!(odd[3].1, "for=192.0.2.7;proto=https;host=\"abc\"");
    }
}
