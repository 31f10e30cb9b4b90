//! The HTTP client wssd's ACME client talks through.
//!
//! Two reasons to bring our own instead of instant-acme's default: the roots (the system's
//! plus every certificate in `[acme] ca_file`, for Pebble or a private step-ca), and
//! `Retry-After`. instant-acme turns an error response into a problem document and drops
//! its headers; a rate-limited order (HTTP 429, `rateLimited`) must wait as long as the
//! CA asks, so this client remembers the last `Retry-After` the CA sent with an error.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

type Inner = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// The ACME HTTP client; cheap to clone.
#[derive(Clone)]
pub struct AcmeHttp {
    inner: Inner,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("cannot read [acme] ca_file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("no trusted CA certificates: the system has none and [acme] ca_file is not set")]
    NoRoots,
}

impl AcmeHttp {
    /// A client trusting the system's roots plus those in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, HttpSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = ca_file {
            crate::tls::add_pem_roots(&mut roots, path).map_err(|reason| {
                HttpSetupError::CaFile {
                    path: path.to_path_buf(),
                    reason,
                }
            })?;
        }
        if roots.is_empty() {
            return Err(HttpSetupError::NoRoots);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|_| HttpSetupError::NoRoots)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(AcmeHttp {
            inner,
            retry_after: Arc::new(Mutex::new(None)),
        })
    }

    /// The `Retry-After` of the most recent error response, taken (so it is used once).
    pub fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
    }
}

/// A request to the CA that got no complete answer in time.
#[derive(Debug, thiserror::Error)]
#[error("no answer from {uri} within {}s", REQUEST_TIMEOUT.as_secs())]
pub struct RequestTimeout {
    uri: String,
}

/// How long one request to the CA may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let uri = req.uri().to_string();
        let response = HttpClient::request(&self.inner, req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            let timeout =
                || instant_acme::Error::Other(Box::new(RequestTimeout { uri: uri.clone() }));
            // The whole exchange, body included, is bounded: a CA (or a middlebox) that
            // accepts and then stalls must not stall renewal.
            let exchange = async {
                let mut response = response.await?;
                let body = response
                    .body
                    .into_bytes()
                    .await
                    .map_err(instant_acme::Error::Other)?;
                Ok::<_, instant_acme::Error>((response.parts, body))
            };
            let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| timeout())??;
            let status = parts.status;
            if status.is_client_error() || status.is_server_error() {
                if let Some(at) = retry_after(&parts.headers)
                    && let Ok(mut slot) = slot.lock()
                {
                    *slot = Some(at);
                }
                let body = problem_body(&parts, body, &uri);
                return Ok(BytesResponse {
                    parts,
                    body: Box::new(body),
                });
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// An error answer that is not a problem document (an HTML page from a proxy, an empty
/// 429 from a CDN) becomes one, so that it is reported with its status and URL, and a
/// 429 counts as a rate limit.
fn problem_body(parts: &http::response::Parts, body: Bytes, uri: &str) -> Bytes {
    let is_problem = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"))
        && serde_json::from_slice::<serde_json::Value>(&body).is_ok();
    if is_problem {
        return body;
    }
    let status = parts.status.as_u16();
    let kind = if status == 429 {
        "rateLimited"
    } else {
        "serverInternal"
    };
    let problem = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": format!("HTTP {} from {uri}", parts.status),
        "status": status,
    });
    Bytes::from(problem.to_string())
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP date>` (RFC 9110 §10.2.3).
fn retry_after(headers: &http::HeaderMap) -> Option<SystemTime> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs.min(86_400 * 7)));
    }
    httpdate::parse_http_date(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_become_problem_documents() {
        let parts = |status: u16, ct: &str| {
            let mut r = http::Response::builder().status(status);
            if !ct.is_empty() {
                r = r.header("content-type", ct);
            }
            r.body(()).unwrap().into_parts().0
        };
        let html = problem_body(
            &parts(502, "text/html"),
            Bytes::from("<html>bad gateway</html>"),
            "https://ca/dir",
        );
        let p: serde_json::Value = serde_json::from_slice(&html).unwrap();
        assert_eq!(p["type"], "urn:ietf:params:acme:error:serverInternal");
        assert_eq!(p["detail"], "HTTP 502 Bad Gateway from https://ca/dir");
        let limited = problem_body(&parts(429, ""), Bytes::new(), "https://ca/new-order");
        let p: serde_json::Value = serde_json::from_slice(&limited).unwrap();
        assert_eq!(p["type"], "urn:ietf:params:acme:error:rateLimited");
        let real = Bytes::from(r#"{"type":"urn:ietf:params:acme:error:malformed","detail":"x"}"#);
        assert_eq!(
            problem_body(&parts(400, "application/problem+json"), real.clone(), "u"),
            real
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        let at = retry_after(&h).unwrap();
        let wait = at.duration_since(SystemTime::now()).unwrap();
        assert!(wait > Duration::from_secs(118) && wait <= Duration::from_secs(120));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
