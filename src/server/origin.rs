//! `allowed_origins`: which web pages may open a WebSocket through wssd.
//!
//! Browsers send `Origin` with every WebSocket handshake and, unlike fetch, do not
//! enforce CORS on WebSockets, so the server must (cross-site WebSocket hijacking).
//! A pattern is an exact origin (`https://app.example.com`, `http://localhost:3000`) or
//! a wildcard on the host (`https://*.example.com`, any subdomain but not the apex).

/// Checks and normalises a pattern from the config file.
pub fn normalize_pattern(pattern: &str) -> Result<String, String> {
    let p = pattern.trim().trim_end_matches('/').to_ascii_lowercase();
    let bad = || {
        format!(
            "{pattern:?} is not an origin pattern; write \"https://app.example.com\" or \"https://*.example.com\" (scheme and host, optional port, no path)"
        )
    };
    let (scheme, rest) = p.split_once("://").ok_or_else(bad)?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        return Err(bad());
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let host_only = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
            h
        } else {
            "/"
        }
    });
    if host_only.is_empty()
        || !host_only
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'))
    {
        return Err(bad());
    }
    Ok(p)
}

/// Is a request with this `Origin` header allowed? An empty pattern list allows any.
pub fn is_allowed(patterns: &[String], origin: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(origin) = origin else { return false };
    let origin = origin.trim().to_ascii_lowercase();
    patterns.iter().any(|p| matches(p, &origin))
}

fn matches(pattern: &str, origin: &str) -> bool {
    if pattern == origin {
        return true;
    }
    let (Some((p_scheme, p_rest)), Some((o_scheme, o_rest))) =
        (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    let Some(suffix) = p_rest.strip_prefix("*.") else {
        return false;
    };
    // `o_rest` must be `<one or more labels>.<suffix>`, with the same port.
    p_scheme == o_scheme
        && o_rest.len() > suffix.len() + 1
        && o_rest.ends_with(suffix)
        && o_rest.as_bytes()[o_rest.len() - suffix.len() - 1] == b'.'
        && !o_rest[..o_rest.len() - suffix.len() - 1].contains([':', '/'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], origin: Option<&str>) -> bool {
        let patterns: Vec<String> = patterns
            .iter()
            .map(|p| normalize_pattern(p).unwrap())
            .collect();
        is_allowed(&patterns, origin)
    }

    #[test]
    fn empty_list_allows_anything() {
        assert!(allowed(&[], None));
        assert!(allowed(&[], Some("https://evil.example")));
    }

    #[test]
    fn exact_origins() {
        let list = ["https://app.example.com", "http://localhost:3000/"];
        assert!(allowed(&list, Some("https://app.example.com")));
        assert!(allowed(&list, Some("HTTPS://APP.example.com")));
        assert!(allowed(&list, Some("http://localhost:3000")));
        assert!(
            !allowed(&list, Some("http://app.example.com")),
            "scheme matters"
        );
        assert!(
            !allowed(&list, Some("https://app.example.com:8443")),
            "port matters"
        );
        assert!(!allowed(&list, Some("https://app.example.com.evil.io")));
        assert!(!allowed(&list, None), "a list needs an Origin");
        assert!(!allowed(&list, Some("null")));
    }

    #[test]
    fn wildcard_origins() {
        let list = ["https://*.example.com"];
        assert!(allowed(&list, Some("https://a.example.com")));
        assert!(allowed(&list, Some("https://a.b.example.com")));
        assert!(!allowed(&list, Some("https://example.com")), "not the apex");
        assert!(!allowed(&list, Some("https://evilexample.com")));
        assert!(!allowed(&list, Some("http://a.example.com")));
        assert!(!allowed(&list, Some("https://a.example.com:444")));
        assert!(allowed(
            &["https://*.example.com:8443"],
            Some("https://a.example.com:8443")
        ));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "example.com",
            "https://",
            "https://a.example.com/path",
            "://x",
        ] {
            assert!(normalize_pattern(bad).is_err(), "{bad} accepted");
        }
    }
}
