//! The challenge responders of a one-shot pass (`wssd issue`), which live only for the
//! pass: the http-01 responder on `http01_bind`; for tls-alpn-01, a listener on
//! `[listener] bind` that answers validation handshakes and nothing else. They start
//! only when a certificate is actually due ([`Responders::start`], before the first
//! order), so a pass that finds everything fresh never needs the ports (which `wssd run`
//! may be holding). In a fleet, a port that is taken is no obstacle: the replicas
//! running there answer from the engine.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::FleetShares;
use super::challenge::{AlpnAnswers, Http01Tokens, Solver, serve_http01};
use super::{Acme, AcmeError};
use crate::config::{Challenge, Config, Source};
use crate::metrics::Metrics;
use crate::reload::resolver::Resolver;

/// The ACME client of one pass and its responders, started at most once; they stop when
/// this is dropped.
pub struct Responders {
    acme: Arc<Acme>,
    config: Config,
    solver: Solver,
    started: OnceCell<()>,
    stop: CancellationToken,
}

impl Drop for Responders {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Responders {
    /// The ACME client of a pass for `config`, and its responders; `None` when no
    /// certificate comes from ACME.
    /// `shared`: what a fleet shares (the challenge answers its replicas answer from, the
    /// account).
    pub fn new(
        config: &Config,
        shared: Option<FleetShares>,
    ) -> Result<Option<Responders>, AcmeError> {
        let Some(acme_config) = &config.acme else {
            return Ok(None);
        };
        if !config.certificates.iter().any(|c| c.source == Source::Acme) {
            return Ok(None);
        }
        let accounts = shared.as_ref().map(|s| s.accounts.clone());
        let solver = match acme_config.challenge {
            Challenge::Http01 => Solver::Http01(match shared {
                Some(shared) => Http01Tokens::shared(shared.tokens),
                None => Http01Tokens::default(),
            }),
            Challenge::TlsAlpn01 => Solver::TlsAlpn01(AlpnAnswers::new(
                Arc::new(Resolver::new(Vec::new())),
                shared.map(|s| s.alpn),
            )),
            Challenge::Dns01 => match &acme_config.dns01_hook {
                Some(hook) => Solver::Dns01(hook.clone()),
                None => return Err(AcmeError::Other("dns-01 needs [acme] dns01_hook".into())),
            },
        };
        let acme = Acme::new(
            acme_config.clone(),
            config.data_dir.clone(),
            solver.clone(),
            accounts,
        )?;
        Ok(Some(Responders {
            acme,
            config: config.clone(),
            solver,
            started: OnceCell::new(),
            stop: CancellationToken::new(),
        }))
    }

    pub fn acme(&self) -> &Arc<Acme> {
        &self.acme
    }

    /// Binds and starts the responder the challenge needs (once).
    pub async fn start(&self) -> Result<(), AcmeError> {
        let acme = &self.acme;
        self.started
            .get_or_try_init(|| async {
                let bind_error = |addr: std::net::SocketAddr, e: std::io::Error, what: &str| {
                    AcmeError::Other(format!(
                        "cannot listen on {addr} for {what}: {e} (if `wssd run` serves this address, it renews by itself)"
                    ))
                };
                match &self.solver {
                    Solver::Http01(tokens) => {
                        let addr = acme.config().http01_bind;
                        let listener = match TcpListener::bind(addr).await {
                            Ok(listener) => listener,
                            // In a fleet, the replicas running there answer.
                            Err(e) if tokens.is_shared() => {
                                tracing::info!(%addr, error = %e, "cannot listen for http-01 here; the fleet's replicas answer");
                                return Ok(());
                            }
                            Err(e) => return Err(bind_error(addr, e, "http-01")),
                        };
                        tokio::spawn(serve_http01(
                            listener,
                            tokens.clone(),
                            self.config.listener.bind.port(),
                            self.stop.clone(),
                        ));
                    }
                    Solver::TlsAlpn01(answers) => {
                        let addr = self.config.listener.bind;
                        let listener = match TcpListener::bind(addr).await {
                            Ok(listener) => listener,
                            // In a fleet, the replicas running there answer.
                            Err(e) if answers.is_shared() => {
                                tracing::info!(%addr, error = %e, "cannot listen for tls-alpn-01 here; the fleet's replicas answer");
                                return Ok(());
                            }
                            Err(e) => return Err(bind_error(addr, e, "tls-alpn-01")),
                        };
                        let resolver = answers.resolver();
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
}
