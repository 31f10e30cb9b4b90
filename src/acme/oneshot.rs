//! `wssd issue` for ACME certificates: one pass, with challenge responders that live only
//! for the pass (the http-01 responder on `http01_bind`; for tls-alpn-01, a listener on
//! `[listener] bind` that answers validation handshakes and nothing else). Responders
//! start only when a certificate is actually due, so a pass that finds everything fresh
//! never needs the ports (which `wssd run` may be holding).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::challenge::{Http01Tokens, Solver, serve_http01};
use super::renew::{self, CertState, Reason};
use super::{Acme, AcmeError};
use crate::cert::inspect::{CertSummary, rfc3339};
use crate::config::{CertificateConfig, Challenge, Config, Source};
use crate::metrics::Metrics;
use crate::reload::resolver::Resolver;

/// What a pass did for one certificate.
pub enum Ensured {
    /// Valid and not due: renews at the given time, for the given reason.
    Fresh(CertSummary, SystemTime, Reason),
    /// A new certificate was ordered and stored.
    Issued(CertSummary),
}

/// The ACME client of one pass and its (lazily started) responders.
pub struct OneShot {
    acme: Arc<Acme>,
    config: Config,
    solver: Solver,
    started: OnceCell<()>,
    stop: CancellationToken,
}

impl Drop for OneShot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OneShot {
    /// The ACME client for `config`; `None` when no certificate comes from ACME.
    pub fn new(config: &Config) -> Result<Option<OneShot>, AcmeError> {
        let Some(acme_config) = &config.acme else {
            return Ok(None);
        };
        if !config.certificates.iter().any(|c| c.source == Source::Acme) {
            return Ok(None);
        }
        let solver = match acme_config.challenge {
            Challenge::Http01 => Solver::Http01(Http01Tokens::default()),
            Challenge::TlsAlpn01 => Solver::TlsAlpn01(Arc::new(Resolver::new(Vec::new()))),
            Challenge::Dns01 => match &acme_config.dns01_hook {
                Some(hook) => Solver::Dns01(hook.clone()),
                None => return Err(AcmeError::Other("dns-01 needs [acme] dns01_hook".into())),
            },
        };
        let acme = Acme::new(acme_config.clone(), config.data_dir.clone(), solver.clone())?;
        Ok(Some(OneShot {
            acme,
            config: config.clone(),
            solver,
            started: OnceCell::new(),
            stop: CancellationToken::new(),
        }))
    }

    /// Binds and starts the responder the challenge needs (once).
    async fn start_responder(&self) -> Result<(), AcmeError> {
        self.started
            .get_or_try_init(|| async {
                let bind_error = |addr: std::net::SocketAddr, e: std::io::Error, what: &str| {
                    AcmeError::Other(format!(
                        "cannot listen on {addr} for {what}: {e} (if `wssd run` serves this address, it renews by itself)"
                    ))
                };
                match &self.solver {
                    Solver::Http01(tokens) => {
                        let addr = self.acme.config().http01_bind;
                        let listener = TcpListener::bind(addr).await.map_err(|e| bind_error(addr, e, "http-01"))?;
                        tokio::spawn(serve_http01(
                            listener,
                            tokens.clone(),
                            self.config.listener.bind.port(),
                            self.stop.clone(),
                        ));
                    }
                    Solver::TlsAlpn01(resolver) => {
                        let addr = self.config.listener.bind;
                        let listener = TcpListener::bind(addr).await.map_err(|e| bind_error(addr, e, "tls-alpn-01"))?;
                        let tls = crate::tls::server_config(resolver.clone(), &self.config.tls, true, false)
                            .map_err(|e| AcmeError::Other(e.to_string()))?;
                        let server = Arc::new(crate::server::Server::new(
                            tls,
                            self.config.listener.clone(),
                            Arc::new(Metrics::default()),
                            resolver.clone(),
                        ));
                        let stop = self.stop.clone();
                        tokio::spawn(async move {
                            if let Err(e) = crate::server::serve(listener, server, stop).await {
                                tracing::warn!(error = %e, "tls-alpn-01 listener failed");
                            }
                        });
                    }
                    Solver::Dns01(_) => {}
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Orders `cert` if it is missing or due; records the outcome for `wssd status` and
    /// the next pass.
    pub async fn ensure(&self, cert: &CertificateConfig) -> Result<Ensured, AcmeError> {
        let key = cert.domain_list();
        let data_dir = self.acme.data_dir();
        let mut state = renew::load_state(data_dir).remove(&key).unwrap_or_default();
        let current = renew::current_pair(cert);
        let (at, reason) = renew::next_renewal(&self.acme, current.as_ref()).await;
        let now = SystemTime::now();
        // Fresh: nothing to record. The plan follows from the certificate, the same for
        // every command, and a daemon beside this pass keeps its own record (its backoff,
        // say) untouched.
        if let Some(pair) = &current
            && now < at
        {
            return Ok(Ensured::Fresh(pair.summary.clone(), at, reason));
        }
        // A CA that rate-limited an earlier pass is not asked again before it said.
        if let Some(until) = state.retry_not_before()
            && now < until
        {
            return Err(AcmeError::Other(format!(
                "the CA asked to wait until {} before ordering again (rate limited)",
                rfc3339(until)
            )));
        }
        self.start_responder().await?;
        state.last_attempt = Some(rfc3339(now));
        let result = self.acme.obtain(cert, current.as_ref()).await;
        match &result {
            Ok(summary) => {
                let (next, why) = renew::plan(
                    summary.not_before,
                    summary.not_after,
                    self.acme.config().renew_before,
                    None,
                    renew::jitter_for(&summary.serial),
                );
                state = CertState {
                    next_attempt: Some(rfc3339(next)),
                    reason: Some(why.to_string()),
                    last_attempt: state.last_attempt,
                    serial: Some(summary.serial.clone()),
                    ..CertState::default()
                };
            }
            Err(e) => {
                state.serial = current.as_ref().map(|p| p.summary.serial.clone());
                state.failures += 1;
                state.last_error = Some(renew::failure_text(e));
                state.next_attempt = None;
                state.reason =
                    Some("the last `wssd issue` failed; the next pass tries again".into());
                if e.is_rate_limited() {
                    state.set_retry_not_before(self.acme.take_retry_after());
                }
            }
        }
        renew::save_state(data_dir, &key, &state);
        result.map(Ensured::Issued)
    }
}
