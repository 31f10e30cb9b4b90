//! The one driver of provisioning, for every source wssd obtains certificates from (the
//! dev CA, ACME): plan when a certificate is due ([`super::schedule`]), obtain it, store
//! it ([`super::store`]), record the outcome ([`super::state`]), then hand the new pair
//! to the reloader and run the deploy hook. Those last two happen here and nowhere else.
//!
//! `wssd run` keeps one loop per certificate ([`run`]); `wssd issue`, and the start-up
//! of `wssd run` for the dev CA, make one pass ([`ensure`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::schedule::{self, Reason};
use super::selfsigned;
use super::state::{self, CertState, Failure, FailureKind};
use super::store::{Claim, Store};
use crate::acme::Acme;
use crate::acme::oneshot::Responders;
use crate::cert::inspect::{CertSummary, rfc3339};
use crate::cert::pair::{LoadedPair, PemPair};
use crate::config::CertificateConfig;
use crate::hooks::{self, HookError};
use crate::metrics::Metrics;
use crate::reload::watch::ReloadHandle;

/// The longest single sleep of a loop before it looks at the clock, the files and the
/// CA's window again.
const NAP: Duration = Duration::from_secs(3600);
/// The shortest wait before asking the CA's renewal window again, whatever its
/// `Retry-After` says (RFC 9773 asks clients to follow it within reasonable limits).
const ARI_MIN_RECHECK: Duration = Duration::from_secs(10);
/// The first wait after a failure to issue from the dev CA (a full disk, say).
const DEV_CA_BACKOFF: Duration = Duration::from_secs(60);
/// How often a replica that found the lock taken looks again (by then, usually, the
/// holder's pair has arrived and nothing is due).
const CONTENDED_RETRY: Duration = Duration::from_secs(2);
/// How long a pass waits for the pair of the replica holding the lock.
const CONTENDED_WAIT: Duration = Duration::from_secs(120);

/// Where a certificate comes from.
#[derive(Clone)]
pub enum Issuer {
    /// `source = "selfsigned"`: the dev CA in this directory.
    DevCa { ca_dir: PathBuf },
    /// `source = "acme"`. A one-shot pass starts its challenge responders before its
    /// first order (`responders`); `wssd run` has them running from the start.
    Acme {
        acme: Arc<Acme>,
        responders: Option<Arc<Responders>>,
    },
}

/// When a certificate is due, why, and when to ask the CA's window again.
struct Plan {
    at: SystemTime,
    reason: Reason,
    recheck: Option<Duration>,
}

impl Issuer {
    /// The `source` label of the metrics.
    fn source(&self) -> &'static str {
        match self {
            Issuer::DevCa { .. } => "selfsigned",
            Issuer::Acme { .. } => "acme",
        }
    }

    /// Where its records are kept for `wssd status`: ACME's are; the dev CA's plan
    /// follows from the files alone.
    fn records(&self) -> Option<&Path> {
        match self {
            Issuer::DevCa { .. } => None,
            Issuer::Acme { acme, .. } => Some(acme.data_dir()),
        }
    }

    fn initial_backoff(&self) -> Duration {
        match self {
            Issuer::DevCa { .. } => DEV_CA_BACKOFF,
            Issuer::Acme { acme, .. } => acme.config().retry_backoff,
        }
    }

    /// Its name in log lines.
    fn kind(&self) -> &'static str {
        match self {
            Issuer::DevCa { .. } => "dev-CA",
            Issuer::Acme { .. } => "ACME",
        }
    }

    /// When a certificate valid as `summary` says is due, given the CA's window.
    fn due(
        &self,
        summary: &CertSummary,
        window: Option<(SystemTime, SystemTime)>,
    ) -> (SystemTime, Reason) {
        match self {
            Issuer::DevCa { .. } => (
                schedule::renew_at(summary.not_before, summary.not_after, None),
                Reason::LifetimeFraction,
            ),
            Issuer::Acme { acme, .. } => schedule::plan(
                summary.not_before,
                summary.not_after,
                acme.config().renew_before,
                window,
                schedule::jitter_for(&summary.serial),
            ),
        }
    }

    /// When the certificate with `current` stored is due.
    async fn plan(&self, current: Option<&LoadedPair>) -> Plan {
        let now = |reason| Plan {
            at: SystemTime::now(),
            reason,
            recheck: None,
        };
        let Some(pair) = current else {
            return now(Reason::Missing);
        };
        match self {
            Issuer::DevCa { ca_dir } => {
                if !selfsigned::from_current_ca(pair, ca_dir) {
                    return now(Reason::OtherIssuer);
                }
                let (at, reason) = self.due(&pair.summary, None);
                Plan {
                    at,
                    reason,
                    recheck: None,
                }
            }
            Issuer::Acme { acme, .. } => {
                let info = acme.renewal_info(pair).await;
                let (at, reason) = self.due(&pair.summary, info.map(|(window, _)| window));
                Plan {
                    at,
                    reason,
                    // Ask again when the CA says, within limits (its window may move).
                    recheck: info.map(|(_, after)| after.clamp(ARI_MIN_RECHECK, NAP)),
                }
            }
        }
    }

    /// A new pair for `cert`, checked; `current` is the one it replaces.
    async fn obtain(
        &self,
        cert: &CertificateConfig,
        current: Option<&LoadedPair>,
    ) -> Result<(PemPair, CertSummary), Failure> {
        match self {
            Issuer::DevCa { ca_dir } => {
                let (cert, ca_dir) = (cert.clone(), ca_dir.clone());
                tokio::task::spawn_blocking(move || selfsigned::issue(&cert, &ca_dir))
                    .await
                    .map_err(|e| failure(e.to_string()))?
                    .map_err(|e| failure(e.to_string()))
            }
            Issuer::Acme { acme, responders } => {
                if let Some(responders) = responders {
                    responders
                        .start()
                        .await
                        .map_err(|e| failure(e.to_string()))?;
                }
                acme.obtain(cert, current).await.map_err(|e| Failure {
                    kind: if e.is_rate_limited() {
                        FailureKind::RateLimited
                    } else {
                        FailureKind::Other
                    },
                    message: e.to_string(),
                    retry_after: if e.is_rate_limited() {
                        acme.take_retry_after()
                    } else {
                        None
                    },
                })
            }
        }
    }
}

fn failure(message: String) -> Failure {
    Failure {
        kind: FailureKind::Other,
        message,
        retry_after: None,
    }
}

/// Obtains a new pair for certificate `index` under `claim` and stores it; gives up
/// when the claim is lost.
async fn obtain_and_store(
    index: usize,
    cert: &CertificateConfig,
    issuer: &Issuer,
    store: &dyn Store,
    current: Option<&LoadedPair>,
    claim: &Claim,
) -> Result<CertSummary, Failure> {
    let obtained = tokio::select! {
        r = issuer.obtain(cert, current) => r,
        _ = claim.lost.cancelled() => Err(failure("the certificate's lock lapsed before the new pair was obtained".into())),
    };
    let (pem, summary) = obtained?;
    store
        .save(cert, claim, &pem)
        .await
        .map_err(|e| failure(e.to_string()))?;
    let (domains, serial, not_after) = (
        cert.domain_list(),
        &summary.serial,
        rfc3339(summary.not_after),
    );
    match issuer {
        Issuer::DevCa { .. } => {
            info!(event = "certificate_issued", certificate = index, %domains, %serial, %not_after, "issued a certificate from the dev CA")
        }
        Issuer::Acme { .. } => {
            info!(event = "certificate_issued", certificate = index, %domains, %serial, %not_after, "certificate issued by the CA and stored")
        }
    }
    Ok(summary)
}

/// What a pass did for one certificate.
pub enum Ensured {
    /// Valid and not due: renews at `at`, for `reason`.
    Fresh {
        summary: CertSummary,
        at: SystemTime,
        reason: Reason,
    },
    /// A new certificate was obtained and stored; `hook` is the deploy hook's outcome
    /// when the pass waited for it.
    Issued {
        summary: CertSummary,
        hook: Result<(), HookError>,
    },
}

/// How a pass runs the deploy hook of a new certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HookRun {
    /// Waits for it, and returns its outcome (`wssd issue`).
    Wait,
    /// In the background, its outcome logged (`wssd run`'s start-up).
    Background,
}

/// One pass for certificate `index`: obtains it if it is missing or due, and records the
/// outcome for `wssd status` and the next pass.
pub async fn ensure(
    index: usize,
    cert: &CertificateConfig,
    issuer: &Issuer,
    store: &dyn Store,
    hook: HookRun,
) -> Result<Ensured, Failure> {
    let domains = cert.domain_list();
    let current = store.current(cert);
    let plan = issuer.plan(current.as_ref()).await;
    let now = SystemTime::now();
    // Fresh: nothing to record. The plan follows from the certificate, the same for
    // every command, and a daemon beside this pass keeps its own record (its backoff,
    // say) untouched.
    if let Some(pair) = &current
        && now < plan.at
    {
        return Ok(Ensured::Fresh {
            summary: pair.summary.clone(),
            at: plan.at,
            reason: plan.reason,
        });
    }
    let records = issuer.records();
    let mut state = records
        .and_then(|dir| state::load_state(dir).remove(&domains))
        .unwrap_or_default();
    // A CA that rate-limited an earlier pass is not asked again before it said.
    if let Some(until) = state.retry_not_before()
        && now < until
    {
        return Err(Failure {
            kind: FailureKind::RateLimited,
            message: format!(
                "the CA asked to wait until {} before ordering again (rate limited)",
                rfc3339(until)
            ),
            retry_after: Some(until),
        });
    }
    // One replica of a fleet obtains it; the others wait for its pair.
    let waited = std::time::Instant::now();
    let claim = loop {
        match store.claim(cert).await {
            Ok(Some(claim)) => break claim,
            Ok(None) if waited.elapsed() < CONTENDED_WAIT => {
                tokio::time::sleep(CONTENDED_RETRY / 4).await;
                store.fetch(cert).await;
                if let Some(pair) = store.current(cert)
                    && current
                        .as_ref()
                        .is_none_or(|c| c.summary.serial != pair.summary.serial)
                {
                    let plan = issuer.plan(Some(&pair)).await;
                    return Ok(Ensured::Fresh {
                        summary: pair.summary,
                        at: plan.at,
                        reason: plan.reason,
                    });
                }
            }
            Ok(None) => {
                return Err(failure(
                    "another replica holds this certificate's lock and published nothing".into(),
                ));
            }
            Err(e) => return Err(failure(e.to_string())),
        }
    };
    // Still due under the lock? A replica that held it before may have published.
    store.fetch(cert).await;
    let current = store.current(cert);
    // A rate limit that the fleet's last attempt met holds for this pass too.
    if let Some(shared) = store.shared_state(cert).await
        && let Some(until) = shared.retry_not_before()
        && SystemTime::now() < until
    {
        return Err(Failure {
            kind: FailureKind::RateLimited,
            message: format!(
                "the CA asked the fleet to wait until {} before ordering again (rate limited)",
                rfc3339(until)
            ),
            retry_after: Some(until),
        });
    }
    if let Some(pair) = &current {
        let plan = issuer.plan(Some(pair)).await;
        if SystemTime::now() < plan.at {
            return Ok(Ensured::Fresh {
                summary: pair.summary.clone(),
                at: plan.at,
                reason: plan.reason,
            });
        }
    }
    state.last_attempt = Some(rfc3339(now));
    let result = obtain_and_store(index, cert, issuer, store, current.as_ref(), &claim).await;
    let mut shared = state.clone();
    match &result {
        Ok(_) => shared.record_success(),
        Err(f) => {
            shared.record_failure(f);
            let jitter = schedule::random_unit();
            shared.schedule_retry(issuer.initial_backoff(), jitter, SystemTime::now());
        }
    }
    store.share_state(cert, &claim, &shared).await;
    drop(claim);
    match &result {
        Ok(summary) => {
            let (next, why) = issuer.due(summary, None);
            state = CertState {
                next_attempt: Some(rfc3339(next)),
                reason: Some(why.to_string()),
                last_attempt: state.last_attempt,
                serial: Some(summary.serial.clone()),
                ..CertState::default()
            };
        }
        Err(f) => {
            state.serial = current.as_ref().map(|p| p.summary.serial.clone());
            state.record_failure(f);
            state.next_attempt = None;
            state.reason = Some("the last `wssd issue` failed; the next pass tries again".into());
        }
    }
    if let Some(dir) = records {
        state::save_state(dir, &domains, &state);
    }
    let summary = result?;
    let hook = match hook {
        HookRun::Wait => {
            let c = cert.clone();
            tokio::task::spawn_blocking(move || hooks::run_deploy_hook(&c))
                .await
                .unwrap_or(Ok(()))
        }
        HookRun::Background => {
            hooks::spawn_deploy_hook(index, cert);
            Ok(())
        }
    };
    Ok(Ensured::Issued { summary, hook })
}

/// What a certificate's loop needs from the rest of wssd.
pub struct Slot {
    pub index: usize,
    pub cert: CertificateConfig,
    pub issuer: Issuer,
    pub store: Arc<dyn Store>,
    pub reload: ReloadHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// Keeps one certificate current until shutdown: waits for its renewal time, obtains a
/// new pair, stores it and hands it to the reloader. Never gives up; a failure keeps the
/// current certificate serving and is retried with backoff (or after the CA's
/// `Retry-After`).
pub async fn run(s: Slot) {
    let domains = s.cert.domain_list();
    let records = s.issuer.records().map(Path::to_path_buf);
    // A rate limit from an earlier run still holds.
    let recorded = records
        .as_deref()
        .and_then(|dir| state::load_state(dir).remove(&domains));
    let mut state = CertState::resumed(recorded);
    let initial = s.issuer.initial_backoff();
    let kind = s.issuer.kind();
    let mut last_issued: Option<(SystemTime, Duration)> = None;
    // For the backoff only: the renewal moment itself follows from the serial.
    let backoff_jitter = schedule::random_unit();
    let mut announced: Option<SystemTime> = None;
    loop {
        // Read again every time: someone else (`wssd issue`, an operator) may have renewed.
        let current = s.store.current(&s.cert);
        state.serial = current.as_ref().map(|p| p.summary.serial.clone());
        let (mut at, mut reason, recheck) = if state.failures > 0 {
            let (at, reason) = retry_moment(&state, initial, backoff_jitter, SystemTime::now());
            (at, reason, None)
        } else {
            let plan = s.issuer.plan(current.as_ref()).await;
            let floored = schedule::reorder_floor(plan.at, last_issued);
            if floored > plan.at {
                warn!(
                    certificate = s.index,
                    %domains,
                    next = %rfc3339(floored),
                    "the renewal window opens as soon as a certificate is issued (is renew_before longer than the lifetime?); waiting a third of the lifetime"
                );
            }
            (floored, plan.reason, plan.recheck)
        };
        if let Some(until) = state.retry_not_before()
            && until > at
        {
            (at, reason) = (until, Reason::RateLimited);
        }
        state.next_attempt = Some(rfc3339(at));
        state.reason = Some(reason.to_string());
        if let Some(dir) = &records {
            state::save_state(dir, &domains, &state);
        }
        s.metrics.next_renewal_at(s.index, at);
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() && announced != Some(at) {
            info!(certificate = s.index, %domains, next = %rfc3339(at), %reason, "next {kind} renewal");
            announced = Some(at);
        }
        // Sleep in naps against the wall clock: a monotonic sleep does not count time
        // spent suspended, and the CA's window (ARI) may move meanwhile.
        let nap = wait.min(recheck.unwrap_or(NAP));
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
        }
        if nap < wait {
            continue;
        }
        let claim = match s.store.claim(&s.cert).await {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                // Another replica is obtaining it; its pair arrives through the store.
                tokio::select! {
                    _ = s.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(CONTENDED_RETRY) => continue,
                }
            }
            Err(e) => {
                warn!(certificate = s.index, %domains, error = %e, "cannot take the certificate's lock; no order until the engine answers");
                tokio::select! {
                    _ = s.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(CONTENDED_RETRY) => continue,
                }
            }
        };
        // Still due? Another replica may have renewed while this one waited; its pair is
        // fetched first, as this replica's own copy may not have caught up yet.
        s.store.fetch(&s.cert).await;
        let current = s.store.current(&s.cert);
        // The fleet's last attempt counts as this replica's: its failures, backoff and the
        // CA's rate limit hold for every replica, or N replicas would each try in turn.
        if let Some(shared) = s.store.shared_state(&s.cert).await {
            state.adopt(shared);
            let now = SystemTime::now();
            let waits = state.failures > 0 && state.retry_at().is_some_and(|at| now < at)
                || state.retry_not_before().is_some_and(|until| now < until);
            if waits {
                continue;
            }
        }
        if state.failures == 0 {
            // (The plan first: a "now" it returns must not be later than the clock read.)
            let due = s.issuer.plan(current.as_ref()).await.at;
            if SystemTime::now() < due {
                continue;
            }
        }
        state.last_attempt = Some(rfc3339(SystemTime::now()));
        let attempt = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            result = obtain_and_store(s.index, &s.cert, &s.issuer, &*s.store, current.as_ref(), &claim) => result,
        };
        match &attempt {
            Ok(_) => state.record_success(),
            Err(e) => {
                state.record_failure(e);
                state.schedule_retry(initial, backoff_jitter, SystemTime::now());
            }
        }
        s.store.share_state(&s.cert, &claim, &state).await;
        drop(claim);
        let ok = attempt.is_ok();
        if matches!(s.issuer, Issuer::Acme { .. }) {
            s.metrics.acme_order(ok);
        }
        s.metrics.renewal(s.index, s.issuer.source(), ok);
        match attempt {
            Ok(summary) => {
                announced = None;
                last_issued = Some((SystemTime::now(), summary.lifetime()));
                // (A first certificate was already logged as issued.)
                if current.is_some() {
                    let (serial, not_after) = (&summary.serial, rfc3339(summary.not_after));
                    match s.issuer {
                        Issuer::DevCa { .. } => {
                            info!(event = "certificate_renewed", certificate = s.index, %domains, %serial, %not_after, "renewed from the dev CA")
                        }
                        Issuer::Acme { .. } => {
                            info!(event = "certificate_renewed", certificate = s.index, %domains, %serial, %not_after, "renewed from the CA")
                        }
                    }
                }
                // Through the reload task, not the watcher: watching may be off.
                let reason = match s.issuer {
                    Issuer::DevCa { .. } => "renewal",
                    Issuer::Acme { .. } => "acme renewal",
                };
                s.reload.reload_slot(s.index, reason);
                hooks::spawn_deploy_hook(s.index, &s.cert);
            }
            Err(e) => {
                let failures = state.failures;
                // An expired pair on disk is still served (wssd keeps the last one).
                if current.is_some() || s.cert.cert_file.exists() {
                    error!(
                        event = "certificate_renewal_failed",
                        certificate = s.index,
                        %domains,
                        error = %e,
                        failures,
                        "{kind} renewal failed; the current certificate keeps serving"
                    );
                } else {
                    error!(
                        event = "certificate_order_failed",
                        certificate = s.index,
                        %domains,
                        error = %e,
                        failures,
                        "{kind} order failed; no certificate exists yet for these domains, so none is served"
                    );
                }
            }
        }
    }
}

/// When the loop tries again after `state`'s failures: the moment fixed when the last
/// one happened, however often the loop wakes up before it.
fn retry_moment(
    state: &CertState,
    initial: Duration,
    jitter: f64,
    now: SystemTime,
) -> (SystemTime, Reason) {
    let limited = state.rate_limited_until();
    match state.retry_at() {
        Some(at) if limited == Some(at) => (at, Reason::RateLimited),
        Some(at) => (
            at,
            Reason::Backoff {
                failures: state.failures,
            },
        ),
        None => schedule::retry_plan(state.failures, limited, initial, jitter, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_stays_where_the_failure_put_it_however_often_the_loop_looks() {
        // Backoffs of hours are longer than the loop's nap: every wake-up must find the
        // same moment, not one pushed a backoff past the wake-up.
        let failed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let initial = Duration::from_secs(30 * 60);
        let mut state = CertState::default();
        for _ in 0..4 {
            state.record_failure(&failure("the CA is down".into()));
        }
        state.schedule_retry(initial, 0.5, failed_at);
        let (first, _) = retry_moment(&state, initial, 0.5, failed_at);
        assert_eq!(first, failed_at + schedule::backoff(4, initial, 0.5));
        for naps in 1..=3 {
            let (again, _) = retry_moment(&state, initial, 0.5, failed_at + NAP * naps);
            assert_eq!(again, first, "after {naps} naps");
        }
        let (now, _) = retry_moment(&state, initial, 0.5, first + Duration::from_secs(1));
        assert_eq!(
            now, first,
            "a moment passed is still the moment: the loop tries at once"
        );
    }
}
