//! ACME (RFC 8555): certificates from Let's Encrypt, ZeroSSL, step-ca or Pebble.
//!
//! The nouns follow the RFC: [`account`] (created once, stored, reused), [`order`] (one
//! certificate, start to finish), [`challenge`] (http-01, tls-alpn-01, dns-01), and the
//! renewal information of RFC 9773 (ARI). [`http`] is the HTTP client underneath, and
//! [`oneshot`] the responders of a `wssd issue` pass. [`Acme`] ties them together:
//! `obtain` orders and validates a certificate for these names. When to order, storing
//! the result and telling the listener belong to provisioning ([`crate::provision`]).

/// Retries an instant-acme call whose request the CA refused with `badNonce` (RFC 8555
/// §6.5: the client should retry with a fresh nonce). instant-acme already retries twice;
/// a CA that rejects many nonces (Pebble's `PEBBLE_WFE_NONCEREJECT`) needs more.
macro_rules! retry_bad_nonce {
    ($call:expr) => {{
        let mut attempts = 0;
        loop {
            match $call {
                Err(e)
                    if $crate::acme::is_bad_nonce(&e) && attempts < $crate::acme::NONCE_RETRIES =>
                {
                    attempts += 1;
                }
                result => break result,
            }
        }
    }};
}

pub mod account;
pub mod challenge;
pub mod http;
pub mod oneshot;
pub mod order;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use instant_acme::{Account, CertificateIdentifier, Problem};
use tokio::sync::OnceCell;
use tracing::warn;

use crate::cert::inspect::CertSummary;
use crate::cert::pair::{self, LoadedPair, PairError, PemPair};
use crate::cert::store::StoreError;
use crate::config::{AcmeConfig, CertificateConfig};
use crate::errors::error_chain;
use challenge::Solver;
use http::{AcmeHttp, HttpSetupError};

/// The longest one whole order may take (every step is bounded too; this bounds the sum).
const ORDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Clock skew tolerated when checking a certificate fresh from the CA.
const SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// How many times a call refused with `badNonce` is tried again.
pub const NONCE_RETRIES: usize = 10;
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

pub fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(BAD_NONCE))
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot reach the ACME server {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the CA refused {}: {}", identifier.as_deref().unwrap_or("the request"), describe_problem(problem))]
    Problem {
        identifier: Option<String>,
        problem: Problem,
    },
    #[error("challenge for {identifier}: {reason}")]
    Challenge { identifier: String, reason: String },
    #[error("ACME account: {reason}")]
    Account { reason: String },
    #[error("ACME account file {}: {reason}", path.display())]
    AccountFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Setup(#[from] HttpSetupError),
    #[error("the certificate from the CA does not validate: {0}")]
    Invalid(#[from] PairError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the CA took too long to validate or issue")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

impl AcmeError {
    /// Classifies an instant-acme error: a problem document from the CA, a transport
    /// failure (the CA is unreachable), or something else.
    pub fn from_acme(
        e: instant_acme::Error,
        directory: &str,
        identifier: Option<String>,
    ) -> AcmeError {
        use instant_acme::Error as E;
        let transport = match &e {
            E::Hyper(_) => true,
            E::Other(inner) => {
                inner
                    .downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some()
                    || inner.downcast_ref::<http::RequestTimeout>().is_some()
            }
            _ => false,
        };
        match e {
            E::Api(problem) => AcmeError::Problem {
                identifier,
                problem,
            },
            E::Timeout(_) => AcmeError::Timeout,
            e if transport => AcmeError::Unreachable {
                url: directory.to_string(),
                cause: error_chain(&e),
            },
            other => AcmeError::Other(error_chain(&other)),
        }
    }

    /// Was this the CA's rate limit?
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, AcmeError::Problem { problem, .. }
            if problem.r#type.as_deref() == Some(RATE_LIMITED) || problem.status == Some(429))
    }
}

/// "detail (type); subproblems: for "x": detail (type)", with the RFC's type prefix
/// shortened to the name people search for.
fn describe_problem(p: &Problem) -> String {
    let short = |t: &Option<String>| {
        t.as_deref()
            .map(|t| {
                t.trim_start_matches("urn:ietf:params:acme:error:")
                    .to_string()
            })
            .unwrap_or_else(|| "no type".into())
    };
    let mut out = format!(
        "{} ({})",
        p.detail.as_deref().unwrap_or("no detail given"),
        short(&p.r#type)
    );
    for sub in &p.subproblems {
        let who = sub
            .identifier
            .as_ref()
            .map(|i| format!("for {}: ", i.authorized(false)))
            .unwrap_or_default();
        out.push_str(&format!(
            "; {who}{} ({})",
            sub.detail.as_deref().unwrap_or("no detail given"),
            short(&sub.r#type)
        ));
    }
    out
}

/// What a fleet shares with each replica's ACME client (kept in its engine): the
/// challenge answers, so any replica answers the CA, and the one account.
#[derive(Clone)]
pub struct FleetShares {
    pub tokens: Arc<dyn challenge::SharedTokens>,
    pub alpn: Arc<dyn challenge::SharedAlpn>,
    pub accounts: Arc<dyn account::SharedAccounts>,
}

/// The ACME client of one wssd process: its account (made on first use), HTTP client and
/// challenge solver.
pub struct Acme {
    config: AcmeConfig,
    data_dir: PathBuf,
    http: AcmeHttp,
    account: OnceCell<Account>,
    solver: Solver,
    /// A fleet's one account (every replica's client uses it).
    accounts: Option<Arc<dyn account::SharedAccounts>>,
}

impl Acme {
    pub fn new(
        config: AcmeConfig,
        data_dir: PathBuf,
        solver: Solver,
        accounts: Option<Arc<dyn account::SharedAccounts>>,
    ) -> Result<Arc<Acme>, AcmeError> {
        let http = AcmeHttp::new(config.ca_file.as_deref())?;
        Ok(Arc::new(Acme {
            config,
            data_dir,
            http,
            account: OnceCell::new(),
            solver,
            accounts,
        }))
    }

    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The `Retry-After` the CA sent with its last error, if any.
    pub fn take_retry_after(&self) -> Option<SystemTime> {
        self.http.take_retry_after()
    }

    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| {
                account::load_or_create(
                    &self.config,
                    &self.data_dir,
                    &self.http,
                    self.accounts.as_deref(),
                )
            })
            .await
    }

    /// The CA's suggested renewal window for `current` (RFC 9773), if it offers one.
    pub async fn renewal_window(&self, current: &LoadedPair) -> Option<(SystemTime, SystemTime)> {
        self.renewal_info(current).await.map(|(window, _)| window)
    }

    /// The CA's suggested renewal window for `current`, and how soon to ask again (its
    /// `Retry-After`), if it offers renewal information.
    pub async fn renewal_info(
        &self,
        current: &LoadedPair,
    ) -> Option<((SystemTime, SystemTime), std::time::Duration)> {
        let account = self.account().await.ok()?;
        let id = certificate_identifier(current)?;
        let info = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            account.renewal_info(&id),
        );
        let Ok(info) = info.await else {
            warn!("no ACME renewal information within 60s; using the default window");
            return None;
        };
        match info {
            Ok((info, retry_after)) => {
                let (start, end): (SystemTime, SystemTime) = (
                    info.suggested_window.start.into(),
                    info.suggested_window.end.into(),
                );
                // RFC 9773 §4.2: a window that ends before it starts is no answer.
                if end <= start {
                    warn!(
                        "the CA's renewal window ends before it starts; using the default window"
                    );
                    return None;
                }
                Some(((start, end), retry_after))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                warn!(error = %error_chain(&e), "could not fetch ACME renewal information");
                None
            }
        }
    }

    /// Orders a certificate for `cert` and checks it like any other pair; storing it is
    /// the caller's. `current` is the certificate being replaced, if any.
    pub async fn obtain(
        &self,
        cert: &CertificateConfig,
        current: Option<&LoadedPair>,
    ) -> Result<(PemPair, CertSummary), AcmeError> {
        let account = self.account().await?;
        let wanted = cert.profile.as_deref().or(self.config.profile.as_deref());
        let profile = match wanted {
            Some(name) if account.profiles().any(|p| p.name == name) => Some(name),
            // Ordering without it would quietly give another kind of certificate (a
            // 90-day one where `shortlived` was asked for, or none for an IP address).
            Some(name) => {
                let offered: Vec<&str> = account.profiles().map(|p| p.name).collect();
                return Err(AcmeError::Other(format!(
                    "the CA at {} offers no profile named {name:?} ({}); set `profile` to one of those, or remove it",
                    self.config.directory,
                    if offered.is_empty() {
                        "it offers no profiles at all".to_string()
                    } else {
                        format!("it offers: {}", offered.join(", "))
                    }
                )));
            }
            None => None,
        };
        // `replaces` only where the CA speaks ARI (instant-acme refuses it otherwise).
        let replaces = match current {
            Some(pair) if self.renewal_window(pair).await.is_some() => certificate_identifier(pair),
            _ => None,
        };
        let order = order::obtain(
            account,
            &self.config.directory,
            cert,
            order::OrderOptions { profile, replaces },
            &self.solver,
        );
        let obtained = tokio::time::timeout(ORDER_TIMEOUT, order)
            .await
            .map_err(|_| AcmeError::Timeout)??;
        let checked = pair::pair_from_pem_with_skew(
            obtained.cert_pem.as_bytes(),
            obtained.key_pem.as_bytes(),
            &cert.cert_file,
            &cert.key_file,
            &cert.domains,
            SystemTime::now(),
            // A CA that does not backdate, and a clock a little behind: still good.
            SKEW,
            &crate::tls::provider(),
        )?;
        Ok((obtained, checked.summary))
    }
}

/// The RFC 9773 identifier of a certificate: its issuer's key id and its serial.
fn certificate_identifier(pair: &LoadedPair) -> Option<CertificateIdentifier<'static>> {
    let leaf = pair.key.cert.first()?;
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(|id| id.into_owned())
}
