//! The HTTP names in a config: `[[route]]` path prefixes and `[listener.response_headers]`
//! entries. Pure parsing with unit tests; the config parser calls these, so a bad value is
//! reported with its key and line.

/// A `[[route]]` path prefix: `/` and path segments of RFC 3986 path characters, without
/// percent-escapes, empty segments or dot segments, so that it is already in the form
/// the listener brings a request's path to before matching.
pub fn route_path(text: &str) -> Result<String, String> {
    const MAX: usize = 1024;
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?}: a route path starts with /, like \"/websocket\""
        ));
    }
    if text.len() > MAX {
        return Err(format!("is longer than {MAX} characters"));
    }
    if let Some(c) = text.chars().find(|&c| !is_path_char(c)) {
        return Err(match c {
            '?' | '#' => {
                format!("{text:?}: a route path has no query or fragment; it matches every query")
            }
            '%' => format!(
                "{text:?}: write the path without percent-escapes; requests are decoded before matching"
            ),
            _ => format!("{text:?}: {c:?} is not allowed in a route path"),
        });
    }
    let inner = &text[1..];
    let segments = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() && segments.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Err(format!(
            "{text:?}: a route path has no empty, \".\" or \"..\" segments"
        ));
    }
    Ok(text.to_string())
}

/// RFC 3986 `pchar` without `%`, and `/`.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c)
}

/// An entry of `[listener.response_headers]`: a header name (an RFC 9110 token) that is
/// not one wssd or HTTP itself manages, and a value of visible characters and spaces.
pub fn response_header(name: &str, value: &str) -> Result<(), String> {
    const MANAGED: &[&str] = &[
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "strict-transport-security",
        "date",
    ];
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not a header name"));
    }
    if MANAGED.iter().any(|m| name.eq_ignore_ascii_case(m)) {
        return Err(format!(
            "{name} is not set here (wssd and HTTP manage it; HSTS is hsts_max_age)"
        ));
    }
    if value.is_empty()
        || value.starts_with(' ')
        || value.ends_with(' ')
        || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic())
    {
        return Err(format!(
            "{value:?} is not a header value (visible ASCII and inner spaces)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_are_checked() {
        assert_eq!(response_header("X-Frame-Options", "SAMEORIGIN"), Ok(()));
        assert_eq!(
            response_header("Content-Security-Policy", "default-src 'self'; img-src *"),
            Ok(())
        );
        assert_eq!(response_header("Permissions-Policy", "camera=()"), Ok(()));
        for (name, value, why) in [
            ("X Frame", "DENY", "not a header name"),
            ("", "DENY", "not a header name"),
            ("X-Frame-Options:", "DENY", "not a header name"),
            ("Connection", "close", "wssd and HTTP manage it"),
            ("strict-transport-security", "max-age=1", "hsts_max_age"),
            ("Content-Length", "1", "manage it"),
            ("X-A", "", "not a header value"),
            ("X-A", " a", "not a header value"),
            ("X-A", "a\r\nX-B: b", "not a header value"),
            ("X-A", "caf\u{e9}", "not a header value"),
        ] {
            let e = response_header(name, value).unwrap_err();
            assert!(e.contains(why), "{name:?} {value:?}: {e}");
        }
    }

    #[test]
    fn route_paths_are_plain_prefixes() {
        for good in [
            "/",
            "/websocket",
            "/websocket/",
            "/api/v1",
            "/a-b_c.d~e/@:x",
            "/socket.io/",
        ] {
            assert_eq!(route_path(good).as_deref(), Ok(good), "{good:?}");
        }
        for (bad, why) in [
            ("websocket", "starts with /"),
            ("", "starts with /"),
            ("/ws?x=1", "no query"),
            ("/ws#top", "no query"),
            ("/w%73", "percent-escapes"),
            ("/a b", "not allowed"),
            ("/a\\b", "not allowed"),
            ("//ws", "segments"),
            ("/a//b", "segments"),
            ("/a/./b", "segments"),
            ("/a/..", "segments"),
            ("/..", "segments"),
            ("/.", "segments"),
            ("/a//", "segments"),
        ] {
            let e = route_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(route_path(&format!("/{}", "a".repeat(1023))).is_ok());
        assert!(
            route_path(&format!("/{}", "a".repeat(1024)))
                .unwrap_err()
                .contains("longer than 1024")
        );
    }
}
