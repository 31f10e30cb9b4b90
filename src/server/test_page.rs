//! The WebSocket test page of an echo route (the dev mode's every path): a browser's
//! plain GET gets a small HTML page instead of a 426. The page opens a WebSocket to its
//! own URL, which gets the echo, and shows the state, the negotiated subprotocol and
//! extensions, each message's round-trip time and the close code and reason.
//!
//! Its script and style are inline and allowed by their SHA-256 hashes in the page's
//! own Content-Security-Policy: no `unsafe-inline`, nothing loaded from elsewhere, and
//! connections to this origin only. The other security headers are wssd's usual ones.

use std::sync::OnceLock;

use base64::Engine;

use super::body::Body;
use super::http::{Request, SecurityHeaders};

const HTML: &str = include_str!("test_page/page.html");
const SCRIPT: &str = include_str!("test_page/page.js");
const STYLE: &str = include_str!("test_page/page.css");

struct Page {
    body: bytes::Bytes,
    csp: http::HeaderValue,
}

fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let body = HTML
            .replacen("{{STYLE}}", STYLE, 1)
            .replacen("{{SCRIPT}}", SCRIPT, 1);
        let csp = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        Page {
            body: bytes::Bytes::from(body),
            csp: http::HeaderValue::from_str(&csp)
                .unwrap_or(http::HeaderValue::from_static("default-src 'none'")),
        }
    })
}

/// A CSP hash source for an inline element's exact text.
fn hash(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// Whether `request` is a browser asking for a page: a GET or HEAD that accepts HTML.
/// Anything else (a WebSocket client's plain request, curl's `*/*`) still gets the 426.
pub fn wanted(request: &Request) -> bool {
    (request.method == http::Method::GET || request.method == http::Method::HEAD)
        && request
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

/// The page, with the security headers and the page's own CSP in place of the usual one.
pub fn response(security: &SecurityHeaders) -> hyper::Response<Body> {
    let page = page();
    let mut response = hyper::Response::new(http_body_util::Either::Right(
        http_body_util::Full::new(page.body.clone()),
    ));
    let headers = response.headers_mut();
    for (name, value) in security.headers() {
        if name != http::header::CONTENT_SECURITY_POLICY {
            headers.append(name, value.clone());
        }
    }
    headers.insert(http::header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csp_allows_exactly_the_inline_script_and_style() {
        let page = page();
        let csp = page.csp.to_str().unwrap();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(
            csp.contains(&hash(SCRIPT)) && csp.contains(&hash(STYLE)),
            "{csp}"
        );
        let body = std::str::from_utf8(&page.body).unwrap();
        // What the browser hashes is the text between the tags, which must be the file.
        assert!(body.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(body.contains(&format!("<style>{STYLE}</style>")));
        assert!(!body.contains("{{"), "a placeholder left in the page");
    }

    #[test]
    fn only_a_get_that_accepts_html_gets_the_page() {
        let parse = |head: &str| Request::parse(head.as_bytes()).unwrap();
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wanted(&parse(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\nAccept: {browser}\r\n\r\n"
        ))));
        assert!(wanted(&parse(&format!(
            "HEAD /x HTTP/1.1\r\nHost: a\r\nAccept: {browser}\r\n\r\n"
        ))));
        assert!(!wanted(&parse(
            "GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
        )));
        assert!(!wanted(&parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(!wanted(&parse(&format!(
            "POST / HTTP/1.1\r\nHost: a\r\nAccept: {browser}\r\n\r\n"
        ))));
    }
}
