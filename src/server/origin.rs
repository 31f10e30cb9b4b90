//! `allowed_origins`: which web pages may open a WebSocket through wssd.
//!
//! Browsers send `Origin` with every WebSocket handshake and, unlike fetch, do not
//! enforce CORS on WebSockets, so the server must (cross-site WebSocket hijacking).
//! The header is parsed as an origin (scheme, host, port: [`Origin`]) before it is
//! compared, so text that merely ends like an allowed host (`https://evil.com?.example.com`)
//! matches nothing. The patterns themselves ([`OriginPattern`]) come from the config.

use crate::config::{Origin, OriginPattern};

/// Is a request with this `Origin` header allowed? An empty pattern list allows any.
pub fn is_allowed(patterns: &[OriginPattern], origin: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(origin) = origin.and_then(Origin::parse) else {
        return false;
    };
    patterns.iter().any(|p| p.matches(&origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<OriginPattern> {
        list.iter()
            .map(|p| OriginPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn empty_list_allows_anything() {
        assert!(is_allowed(&[], None));
        assert!(is_allowed(&[], Some("https://evil.example")));
        assert!(is_allowed(&[], Some("not an origin")));
    }

    #[test]
    fn a_list_needs_an_origin_that_parses_and_matches() {
        let list = patterns(&["https://app.example.com", "https://*.example.org"]);
        assert!(is_allowed(&list, Some("https://app.example.com")));
        assert!(is_allowed(&list, Some("https://chat.example.org")));
        assert!(!is_allowed(&list, None));
        assert!(!is_allowed(&list, Some("")));
        assert!(!is_allowed(&list, Some("null")));
        assert!(!is_allowed(&list, Some("https://evil.com?.example.org")));
        assert!(!is_allowed(&list, Some("https://app.example.com/")));
    }
}
