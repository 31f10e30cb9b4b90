//! `wssd issue` for ACME certificates: one pass, with challenge responders that live only
//! for the pass (the http-01 responder on `http01_bind`; for tls-alpn-01, a listener on
//! `[listener] bind` that answers validation handshakes and nothing else).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::challenge::{Http01Tokens, Solver, serve_http01};
use super::renew::{self, CertState, Reason};
use super::{Acme, AcmeError};
use crate::cert::inspect::{CertSummary, rfc3339};
use crate::config::{Challenge, Config, Source};
use crate::metrics::Metrics;
use crate::reload::reloader::Reloader;

/// What a pass did for one certificate.
pub enum Ensured {
    /// Valid and not due: renews at the given time, for the given reason.
    Fresh(CertSummary, SystemTime, Reason),
    /// A new certificate was ordered and stored.
    Issued(CertSummary),
}

/// The ACME client and its temporary responders.
pub struct OneShot {
    acme: Arc<Acme>,
    stop: CancellationToken,
}

impl Drop for OneShot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OneShot {
    /// Starts the responders `config`'s challenge needs. `None` when no certificate comes
    /// from ACME.
    pub async fn start(config: &Config) -> Result<Option<OneShot>, AcmeError> {
        let Some(acme_config) = &config.acme else {
            return Ok(None);
        };
        if !config.certificates.iter().any(|c| c.source == Source::Acme) {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let bind_error = |addr: std::net::SocketAddr, e: std::io::Error, what: &str| {
            AcmeError::Other(format!(
                "cannot listen on {addr} for {what}: {e} (if `wssd run` serves this address, it renews by itself)"
            ))
        };
        let solver = match acme_config.challenge {
            Challenge::Http01 => {
                let addr = acme_config.http01_bind;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error(addr, e, "http-01"))?;
                let tokens = Http01Tokens::default();
                tokio::spawn(serve_http01(
                    listener,
                    tokens.clone(),
                    config.listener.bind.port(),
                    stop.clone(),
                ));
                Solver::Http01(tokens)
            }
            Challenge::TlsAlpn01 => {
                let addr = config.listener.bind;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_error(addr, e, "tls-alpn-01"))?;
                let reloader =
                    Reloader::new(config.certificates.clone(), Arc::new(Metrics::default()));
                let resolver = reloader.resolver();
                let tls = crate::tls::server_config(resolver.clone(), true)
                    .map_err(|e| AcmeError::Other(e.to_string()))?;
                let server = Arc::new(crate::server::Server {
                    tls,
                    settings: config.listener.clone(),
                    metrics: Arc::new(Metrics::default()),
                });
                tokio::spawn(crate::server::serve(listener, server, stop.clone()));
                Solver::TlsAlpn01(resolver)
            }
            Challenge::Dns01 => match &acme_config.dns01_hook {
                Some(hook) => Solver::Dns01(hook.clone()),
                None => return Err(AcmeError::Other("dns-01 needs [acme] dns01_hook".into())),
            },
        };
        let acme = Acme::new(acme_config.clone(), config.data_dir.clone(), solver)?;
        Ok(Some(OneShot { acme, stop }))
    }

    /// Orders `cert` if it is missing or due; records the outcome for `wssd status`.
    pub async fn ensure(
        &self,
        cert: &crate::config::CertificateConfig,
    ) -> Result<Ensured, AcmeError> {
        let key = cert.domain_list();
        let mut state = renew::load_state(self.acme.data_dir())
            .remove(&key)
            .unwrap_or_default();
        let current = renew::current_pair(cert);
        let (at, reason) = renew::next_renewal(&self.acme, current.as_ref()).await;
        if let Some(pair) = &current
            && SystemTime::now() < at
        {
            state.next_attempt = Some(rfc3339(at));
            state.reason = Some(reason.to_string());
            renew::save_state(self.acme.data_dir(), &key, &state);
            return Ok(Ensured::Fresh(pair.summary.clone(), at, reason));
        }
        state.last_attempt = Some(rfc3339(SystemTime::now()));
        let result = self.acme.obtain(cert, current.as_ref()).await;
        match &result {
            Ok(summary) => {
                let (next, why) = renew::plan(
                    summary.not_before,
                    summary.not_after,
                    self.acme.config().renew_before,
                    None,
                    0.0,
                );
                state = CertState {
                    next_attempt: Some(rfc3339(next)),
                    reason: Some(why.to_string()),
                    last_attempt: state.last_attempt,
                    ..CertState::default()
                };
            }
            Err(e) => {
                state.failures += 1;
                state.last_error = Some(e.to_string());
                state.next_attempt = None;
                state.reason =
                    Some("the last `wssd issue` failed; the next run tries again".into());
            }
        }
        renew::save_state(self.acme.data_dir(), &key, &state);
        result.map(Ensured::Issued)
    }
}
