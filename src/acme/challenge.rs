//! Answering ACME challenges: proving control of a name to the CA.
//!
//! * `http-01`: the key authorization is served at
//!   `http://NAME/.well-known/acme-challenge/TOKEN` by wssd's own responder on
//!   `http01_bind` ([`serve_http01`]); every other request there is redirected to https.
//! * `tls-alpn-01` (RFC 8737): a self-signed certificate carrying the key authorization's
//!   digest is put in the live listener's resolver under the name being validated; it is
//!   only ever served to handshakes that offer ALPN `acme-tls/1`, so ordinary clients on
//!   the same port never see it.
//! * `dns-01`: the user's hook publishes the TXT record (`HOOK set FQDN VALUE`) and
//!   removes it afterwards (`HOOK clear FQDN VALUE`).
//!
//! In a fleet, answers are also kept where every replica finds them (the engine), so
//! that the replica the CA's request reaches answers it, whichever replica placed the
//! order: http-01 answers are read from there ([`SharedTokens`]); tls-alpn-01 answers
//! must be in every replica's resolver before the CA is told to validate, because a
//! handshake cannot wait for the engine ([`SharedAlpn`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use instant_acme::{ChallengeType, Identifier, KeyAuthorization};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Challenge;
use crate::reload::resolver::Resolver;
use crate::server::body::Body;
use crate::server::http::{self, Request, SecurityHeaders};

/// How long a dns-01 hook may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

pub type TokenFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a fleet keeps the http-01 answers of every replica's orders.
pub trait SharedTokens: Send + Sync {
    /// Stores an answer; the CA is told to validate only once this has returned.
    fn put<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> TokenFuture<'a, Result<(), String>>;
    fn get<'a>(&'a self, token: &'a str) -> TokenFuture<'a, Option<String>>;
    fn clear<'a>(&'a self, token: &'a str) -> TokenFuture<'a, ()>;
}

/// Where a fleet puts the tls-alpn-01 answers of every replica's orders.
pub trait SharedAlpn: Send + Sync {
    /// Shares the answer for `identifier` (served under `sni`); returns once every live
    /// replica serves it, so the CA may be told to validate.
    fn put<'a>(
        &'a self,
        sni: &'a str,
        identifier: &'a Identifier,
        digest: &'a [u8],
    ) -> TokenFuture<'a, Result<(), String>>;
    fn clear<'a>(&'a self, sni: &'a str) -> TokenFuture<'a, ()>;
}

/// The tls-alpn-01 answers: in the live listener's resolver; in a fleet, every replica's.
#[derive(Clone)]
pub struct AlpnAnswers {
    resolver: Arc<Resolver>,
    shared: Option<Arc<dyn SharedAlpn>>,
}

impl AlpnAnswers {
    pub fn new(resolver: Arc<Resolver>, shared: Option<Arc<dyn SharedAlpn>>) -> AlpnAnswers {
        AlpnAnswers { resolver, shared }
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }
}

/// http-01 tokens being answered now: token → key authorization; in a fleet, the
/// other replicas' too.
#[derive(Clone, Default)]
pub struct Http01Tokens {
    own: Arc<RwLock<HashMap<String, String>>>,
    shared: Option<Arc<dyn SharedTokens>>,
}

impl Http01Tokens {
    /// Tokens that are also kept in `shared` (a fleet's engine).
    pub fn shared(shared: Arc<dyn SharedTokens>) -> Http01Tokens {
        Http01Tokens {
            own: Arc::default(),
            shared: Some(shared),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    async fn get(&self, token: &str) -> Option<String> {
        let own = self.own.read().ok().and_then(|m| m.get(token).cloned());
        match (own, &self.shared) {
            (Some(answer), _) => Some(answer),
            (None, Some(shared)) => shared.get(token).await,
            (None, None) => None,
        }
    }

    async fn set(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        if let Ok(mut map) = self.own.write() {
            map.insert(token.to_string(), key_authorization.to_string());
        }
        match &self.shared {
            Some(shared) => shared.put(token, key_authorization).await,
            None => Ok(()),
        }
    }

    async fn clear(&self, token: &str) {
        if let Ok(mut map) = self.own.write() {
            map.remove(token);
        }
        if let Some(shared) = &self.shared {
            shared.clear(token).await;
        }
    }
}

/// How this wssd answers challenges.
#[derive(Clone)]
pub enum Solver {
    Http01(Http01Tokens),
    TlsAlpn01(AlpnAnswers),
    Dns01(PathBuf),
}

/// What was put in place for one challenge, to take away afterwards.
pub struct Presented {
    kind: Presentation,
}

enum Presentation {
    Token(String),
    AlpnName(String, Arc<CertifiedKey>),
    Txt {
        hook: PathBuf,
        fqdn: String,
        value: String,
    },
}

impl Solver {
    pub fn challenge_type(&self) -> ChallengeType {
        match self {
            Solver::Http01(_) => ChallengeType::Http01,
            Solver::TlsAlpn01(_) => ChallengeType::TlsAlpn01,
            Solver::Dns01(_) => ChallengeType::Dns01,
        }
    }

    pub fn kind(&self) -> Challenge {
        match self {
            Solver::Http01(_) => Challenge::Http01,
            Solver::TlsAlpn01(_) => Challenge::TlsAlpn01,
            Solver::Dns01(_) => Challenge::Dns01,
        }
    }

    /// Puts the response to one challenge in place.
    pub async fn present(
        &self,
        identifier: &Identifier,
        wildcard: bool,
        token: &str,
        key_authorization: &KeyAuthorization,
    ) -> Result<Presented, String> {
        if wildcard && !matches!(self, Solver::Dns01(_)) {
            return Err("wildcard names can only be validated with challenge = \"dns-01\"".into());
        }
        let kind = match self {
            Solver::Http01(tokens) => {
                tokens
                    .set(token, key_authorization.as_str())
                    .await
                    .map_err(|e| format!("cannot share the http-01 answer with the fleet: {e}"))?;
                Presentation::Token(token.to_string())
            }
            Solver::TlsAlpn01(answers) => {
                let digest = key_authorization.digest();
                let (sni, key) = alpn_certificate(identifier, digest.as_ref())?;
                answers.resolver.set_challenge(&sni, key.clone());
                if let Some(shared) = &answers.shared
                    && let Err(e) = shared.put(&sni, identifier, digest.as_ref()).await
                {
                    answers.resolver.clear_challenge(&sni, &key);
                    return Err(format!(
                        "cannot share the tls-alpn-01 answer with the fleet: {e}"
                    ));
                }
                Presentation::AlpnName(sni, key)
            }
            Solver::Dns01(hook) => {
                let Identifier::Dns(name) = identifier else {
                    return Err(
                        "dns-01 cannot validate an IP address; use http-01 or tls-alpn-01".into(),
                    );
                };
                let fqdn = format!("_acme-challenge.{}", name.trim_start_matches("*."));
                let value = key_authorization.dns_value();
                run_hook(hook, "set", &fqdn, &value).await?;
                Presentation::Txt {
                    hook: hook.clone(),
                    fqdn,
                    value,
                }
            }
        };
        Ok(Presented { kind })
    }

    /// Takes a response away again; failures are logged (the certificate does not depend
    /// on them).
    pub async fn clean_up(&self, presented: Presented) {
        match (self, presented.kind) {
            (Solver::Http01(tokens), Presentation::Token(token)) => tokens.clear(&token).await,
            (Solver::TlsAlpn01(answers), Presentation::AlpnName(name, key)) => {
                answers.resolver.clear_challenge(&name, &key);
                if let Some(shared) = &answers.shared {
                    shared.clear(&name).await;
                }
            }
            (_, Presentation::Txt { hook, fqdn, value }) => {
                if let Err(e) = run_hook(&hook, "clear", &fqdn, &value).await {
                    warn!(%fqdn, error = %e, "dns-01 hook could not clear the TXT record");
                }
            }
            _ => {}
        }
    }
}

/// The tls-alpn-01 certificate for `identifier` (RFC 8737 §3; RFC 8738 §6 for IPs, which
/// are validated under their reverse-DNS name), carrying `digest` (the SHA-256 of the key
/// authorization), and the SNI it is served under.
pub fn alpn_certificate(
    identifier: &Identifier,
    digest: &[u8],
) -> Result<(String, Arc<CertifiedKey>), String> {
    let (san, sni) = match identifier {
        Identifier::Dns(name) => (
            rcgen::SanType::DnsName(name.clone().try_into().map_err(|e| format!("{e}"))?),
            name.to_ascii_lowercase(),
        ),
        Identifier::Ip(ip) => (rcgen::SanType::IpAddress(*ip), reverse_dns_name(*ip)),
        other => return Err(format!("cannot validate identifier {other:?}")),
    };
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![san];
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(
            key.serialize_der()
                .try_into()
                .map_err(|e: &str| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    Ok((
        sni,
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
    ))
}

/// `127.0.0.1` → `1.0.0.127.in-addr.arpa`; IPv6 by nibbles under `ip6.arpa`.
pub fn reverse_dns_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::new();
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// Runs the dns-01 hook: `HOOK set|clear FQDN VALUE`.
async fn run_hook(hook: &PathBuf, action: &str, fqdn: &str, value: &str) -> Result<(), String> {
    let child = tokio::process::Command::new(hook)
        .args([action, fqdn, value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(HOOK_TIMEOUT, child)
        .await
        .map_err(|_| {
            format!(
                "dns01_hook {} {action} {fqdn} did not finish within {}s",
                hook.display(),
                HOOK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run dns01_hook {}: {e}", hook.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "dns01_hook {} {action} {fqdn} failed ({}): {}",
        hook.display(),
        output.status,
        stderr.trim()
    ))
}

/// The http-01 responder: answers challenge tokens, and redirects every other request to
/// the same host and path over https (on `https_port`).
pub async fn serve_http01(
    listener: TcpListener,
    tokens: Http01Tokens,
    https_port: u16,
    shutdown: CancellationToken,
) {
    http::serve_plain(listener, shutdown, "http-01", move |req| {
        let tokens = tokens.clone();
        async move { http01_response(&req, &tokens, https_port).await }
    })
    .await
}

async fn http01_response(
    req: &Request,
    tokens: &Http01Tokens,
    https_port: u16,
) -> hyper::Response<Body> {
    const PREFIX: &str = "/.well-known/acme-challenge/";
    let security = SecurityHeaders::default();
    if let Some(token) = req.target.strip_prefix(PREFIX) {
        return match tokens.get(token).await {
            Some(key_authorization) if req.method == "GET" || req.method == "HEAD" => {
                http::typed_response(
                    200,
                    &[],
                    "application/octet-stream",
                    key_authorization.into(),
                    &security,
                )
            }
            _ => http::response(404, &[], "No such challenge.\n", &security),
        };
    }
    let host = strip_port(req.header("host").unwrap_or(""));
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        return http::response(400, &[], "A Host header is required.\n", &security);
    }
    let location = if https_port == 443 {
        format!("https://{host}{}", req.target)
    } else {
        format!("https://{host}:{https_port}{}", req.target)
    };
    http::response(
        301,
        &[("Location", location.as_str())],
        "Moved to https.\n",
        &security,
    )
}

/// `a.example:80` → `a.example`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_for_ip_validation() {
        assert_eq!(
            reverse_dns_name("127.0.0.1".parse().unwrap()),
            "1.0.0.127.in-addr.arpa"
        );
        let v6 = reverse_dns_name("2001:db8::567:89ab".parse().unwrap());
        assert_eq!(
            v6,
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    fn req(text: &str) -> Request {
        Request::parse(text.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn tokens_answered_and_everything_else_redirected() {
        let tokens = Http01Tokens::default();
        tokens.set("abc", "abc.thumb").await.unwrap();
        let ok = http::response_text(
            http01_response(
                &req("GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: a.example\r\n\r\n"),
                &tokens,
                443,
            )
            .await,
        );
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nabc.thumb"),
            "{ok}"
        );
        let missing = http::response_text(
            http01_response(
                &req("GET /.well-known/acme-challenge/zzz HTTP/1.1\r\nHost: a\r\n\r\n"),
                &tokens,
                443,
            )
            .await,
        );
        assert!(missing.starts_with("HTTP/1.1 404"));
        let redirect = http::response_text(
            http01_response(
                &req("GET /chat?x=1 HTTP/1.1\r\nHost: a.example:80\r\n\r\n"),
                &tokens,
                8443,
            )
            .await,
        );
        assert!(
            redirect.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
            "{redirect}"
        );
        assert!(
            redirect.contains("location: https://a.example:8443/chat?x=1\r\n"),
            "{redirect}"
        );
        assert!(redirect.contains("strict-transport-security"));
        let plain = http::response_text(
            http01_response(
                &req("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
                &tokens,
                443,
            )
            .await,
        );
        assert!(
            plain.contains("location: https://a.example/\r\n"),
            "{plain}"
        );
        let evil = http::response_text(
            http01_response(&req("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n"), &tokens, 443).await,
        );
        assert!(evil.starts_with("HTTP/1.1 400"));
    }

    /// A fleet's shared answers, in memory.
    #[derive(Default)]
    struct Memory(std::sync::Mutex<HashMap<String, String>>);

    impl SharedTokens for Memory {
        fn put<'a>(&'a self, token: &'a str, ka: &'a str) -> TokenFuture<'a, Result<(), String>> {
            self.0.lock().unwrap().insert(token.into(), ka.into());
            Box::pin(async { Ok(()) })
        }
        fn get<'a>(&'a self, token: &'a str) -> TokenFuture<'a, Option<String>> {
            let answer = self.0.lock().unwrap().get(token).cloned();
            Box::pin(async move { answer })
        }
        fn clear<'a>(&'a self, token: &'a str) -> TokenFuture<'a, ()> {
            self.0.lock().unwrap().remove(token);
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_replica_answers_the_tokens_another_replica_shared() {
        let shared: Arc<Memory> = Arc::default();
        let holder = Http01Tokens::shared(shared.clone());
        let other = Http01Tokens::shared(shared.clone());
        holder.set("t1", "t1.thumb").await.unwrap();
        assert_eq!(other.get("t1").await.as_deref(), Some("t1.thumb"));
        let answer = http::response_text(
            http01_response(
                &req("GET /.well-known/acme-challenge/t1 HTTP/1.1\r\nHost: a\r\n\r\n"),
                &other,
                443,
            )
            .await,
        );
        assert!(answer.ends_with("\r\n\r\nt1.thumb"), "{answer}");
        holder.clear("t1").await;
        assert_eq!(other.get("t1").await, None, "cleared for the whole fleet");
        assert_eq!(Http01Tokens::default().get("t1").await, None);
    }
}
