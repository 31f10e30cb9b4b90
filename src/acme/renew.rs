//! When to order a certificate again, and the renewal loop of `wssd run`.
//!
//! The decision is a pure function ([`plan`]) of the certificate's validity, the
//! configured `renew_before`, the CA's renewal window (ARI, RFC 9773) when it offers one,
//! and the failures so far. The default window is the last third of the lifetime, so
//! 90-day and 6-day certificates are both renewed in time; a random point early in the
//! window spreads many instances out. A failed attempt waits with capped exponential
//! backoff and jitter, or as long as the CA's `Retry-After` says when it rate-limits.
//!
//! The plan is kept in `data_dir/acme/state.json`, so `wssd status` in another process can
//! show when each certificate renews next and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Acme, AcmeError};
use crate::cert::inspect::rfc3339;
use crate::cert::pair::{self, LoadedPair};
use crate::cert::store::{self, CERT_MODE, PRIVATE_DIR_MODE};
use crate::config::CertificateConfig;
use crate::metrics::Metrics;
use crate::provision::schedule::renew_at;
use crate::reload::watch::ReloadHandle;

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The longest single sleep of the renewal loop before it looks at the clock, the files
/// and the CA's window again.
const NAP: Duration = Duration::from_secs(3600);
/// The shortest wait before asking the CA's renewal window again, whatever its
/// `Retry-After` says (RFC 9773 asks clients to follow it within reasonable limits).
const ARI_MIN_RECHECK: Duration = Duration::from_secs(10);

/// Why a certificate renews when it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No valid certificate yet.
    Missing,
    /// In the last third of its lifetime (the default window).
    LifetimeFraction,
    /// `renew_before` before expiry.
    RenewBefore(Duration),
    /// Inside the CA's suggested window.
    RenewalInfo { start: SystemTime, end: SystemTime },
    /// Waiting after failed attempts.
    Backoff { failures: u32 },
    /// The CA asked us to wait.
    RateLimited,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Missing => f.write_str("no valid certificate yet"),
            Reason::LifetimeFraction => f.write_str("last third of the lifetime"),
            Reason::RenewBefore(d) => {
                write!(f, "renew_before = {}", crate::units::format_duration(*d))
            }
            Reason::RenewalInfo { start, end } => {
                write!(
                    f,
                    "the CA's renewal window {} .. {}",
                    rfc3339(*start),
                    rfc3339(*end)
                )
            }
            Reason::Backoff { failures } => write!(f, "backoff after {failures} failed attempt(s)"),
            Reason::RateLimited => f.write_str("rate limited: the CA's Retry-After"),
        }
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`. `jitter` is a
/// random number in [0, 1).
pub fn plan(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    renewal_info: Option<(SystemTime, SystemTime)>,
    jitter: f64,
) -> (SystemTime, Reason) {
    if let Some((start, end)) = renewal_info {
        let span = end.duration_since(start).unwrap_or_default();
        return (
            start + span.mul_f64(jitter),
            Reason::RenewalInfo { start, end },
        );
    }
    let due = renew_at(not_before, not_after, renew_before);
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    // Up to 2% of the lifetime early (43 h of a 90-day certificate, 3 h of a 6-day one),
    // never before issuance.
    let early = (lifetime / 50).mul_f64(jitter);
    let at = due.checked_sub(early).unwrap_or(due).max(not_before);
    let reason = match renew_before {
        Some(d) => Reason::RenewBefore(d),
        None => Reason::LifetimeFraction,
    };
    (at, reason)
}

/// The wait after the `failures`-th failure in a row: `initial`, doubling, at most six
/// hours, ±10% jitter (`jitter` in [0, 1)).
pub fn backoff(failures: u32, initial: Duration, jitter: f64) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(MAX_BACKOFF).mul_f64(0.9 + 0.2 * jitter)
}

/// When to try again after `failures` failed attempts in a row: when the CA said (a
/// rate limit's `Retry-After`, but never sooner than the backoff), else after the backoff.
pub fn retry_plan(
    failures: u32,
    retry_after: Option<SystemTime>,
    initial: Duration,
    jitter: f64,
    now: SystemTime,
) -> (SystemTime, Reason) {
    let backed_off = now + backoff(failures, initial, jitter);
    match retry_after {
        Some(until) if until > backed_off => (until, Reason::RateLimited),
        _ => (backed_off, Reason::Backoff { failures }),
    }
}

/// A window wider than the lifetime (renew_before too long, or a CA's odd ARI) would
/// order again and again: never sooner than a third of a lifetime after the last
/// certificate this process obtained.
pub fn reorder_floor(at: SystemTime, last_issued: Option<(SystemTime, Duration)>) -> SystemTime {
    match last_issued {
        Some((issued, lifetime)) => at.max(issued + lifetime / 3),
        None => at,
    }
}

/// The point of the renewal window for the certificate with this serial, in [0, 1): a
/// hash of the serial, so `wssd run`, `wssd issue` and `wssd status` (and every restart)
/// plan the same moment, while certificates (and hosts) still spread over the window.
pub fn jitter_for(serial: &str) -> f64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, serial.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// One certificate's renewal state, as stored for `wssd status` (and the next pass).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CertState {
    pub next_attempt: Option<String>,
    pub reason: Option<String>,
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_attempt: Option<String>,
    /// A rate limit's Retry-After (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_not_before: Option<u64>,
    /// The serial of the certificate this plan is about (none: there was none); a record
    /// about another serial is out of date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl CertState {
    /// The state a new `wssd run` starts from, given what an earlier process recorded:
    /// a fresh start, but a rate limit's Retry-After still holds.
    pub fn resumed(recorded: Option<CertState>) -> CertState {
        CertState {
            retry_not_before: recorded.and_then(|s| s.retry_not_before),
            ..CertState::default()
        }
    }

    pub fn set_retry_not_before(&mut self, until: Option<SystemTime>) {
        // Rounded up: stored in whole seconds, it must never come before the CA's time.
        self.retry_not_before = until.map(|t| {
            let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            since.as_secs() + u64::from(since.subsec_nanos() > 0)
        });
    }

    pub fn retry_not_before(&self) -> Option<SystemTime> {
        self.retry_not_before
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// `data_dir/acme/state.json`: renewal state by certificate (keyed by its domains).
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("state.json")
}

pub fn load_state(data_dir: &Path) -> BTreeMap<String, CertState> {
    std::fs::read(state_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Updates one certificate's entry; a failure to write only costs `status` its detail.
pub fn save_state(data_dir: &Path, key: &str, state: &CertState) {
    // Renewal loops run on several threads; each read-modify-write is whole.
    static WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let path = state_path(data_dir);
    let mut all = load_state(data_dir);
    all.insert(key.to_string(), state.clone());
    let written = serde_json::to_vec_pretty(&all)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            if let Some(dir) = path.parent() {
                store::ensure_dir(dir, PRIVATE_DIR_MODE).map_err(|e| e.to_string())?;
            }
            store::write_atomic(&path, &json, CERT_MODE).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot record the renewal state");
    }
}

/// The valid pair on disk for `cert`, if there is one.
pub fn current_pair(cert: &CertificateConfig) -> Option<LoadedPair> {
    pair::load_pair(
        &cert.cert_file,
        &cert.key_file,
        &cert.domains,
        SystemTime::now(),
        &crate::tls::provider(),
    )
    .ok()
}

/// When `cert` (with `current` on disk) should be renewed, asking the CA's renewal
/// window when it has one.
pub async fn next_renewal(acme: &Acme, current: Option<&LoadedPair>) -> (SystemTime, Reason) {
    let Some(pair) = current else {
        return (SystemTime::now(), Reason::Missing);
    };
    let window = acme.renewal_window(pair).await;
    plan(
        pair.summary.not_before,
        pair.summary.not_after,
        acme.config().renew_before,
        window,
        jitter_for(&pair.summary.serial),
    )
}

/// What the renewal loop needs from the rest of wssd.
pub struct Renewal {
    pub index: usize,
    pub cert: CertificateConfig,
    pub acme: Arc<Acme>,
    pub reload: ReloadHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// Keeps one certificate current until shutdown: waits for its renewal time, orders,
/// and hands the new pair to the reloader. Never gives up; a failure keeps the current
/// certificate serving and is retried with backoff.
pub async fn run(r: Renewal) {
    let domains = r.cert.domain_list();
    let data_dir = r.acme.data_dir().to_path_buf();
    // A rate limit from an earlier run still holds.
    let mut state = CertState::resumed(load_state(&data_dir).remove(&domains));
    let initial = r.acme.config().retry_backoff;
    let mut last_issued: Option<(SystemTime, Duration)> = None;
    // For the backoff only: the renewal moment itself follows from the serial.
    let backoff_jitter = random_unit();
    let mut announced: Option<SystemTime> = None;
    loop {
        // Re-read every time: someone else (`wssd issue`, an operator) may have renewed.
        let current = current_pair(&r.cert);
        let mut recheck: Option<Duration> = None;
        state.serial = current.as_ref().map(|p| p.summary.serial.clone());
        let (mut at, mut reason) = if state.failures > 0 {
            let rate_limited = state
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("rateLimited"));
            retry_plan(
                state.failures,
                rate_limited.then(|| state.retry_not_before()).flatten(),
                initial,
                backoff_jitter,
                SystemTime::now(),
            )
        } else {
            let (at, reason) = match &current {
                None => (SystemTime::now(), Reason::Missing),
                Some(pair) => {
                    let info = r.acme.renewal_info(pair).await;
                    // Ask again when the CA says, within limits (its window may move).
                    recheck = info.map(|(_, after)| after.clamp(ARI_MIN_RECHECK, NAP));
                    let s = &pair.summary;
                    plan(
                        s.not_before,
                        s.not_after,
                        r.acme.config().renew_before,
                        info.map(|(window, _)| window),
                        jitter_for(&s.serial),
                    )
                }
            };
            let floored = reorder_floor(at, last_issued);
            if floored > at {
                warn!(
                    certificate = r.index,
                    %domains,
                    next = %rfc3339(floored),
                    "the renewal window opens as soon as a certificate is issued (is renew_before longer than the lifetime?); waiting a third of the lifetime"
                );
            }
            (floored, reason)
        };
        if let Some(until) = state.retry_not_before()
            && until > at
        {
            (at, reason) = (until, Reason::RateLimited);
        }
        state.next_attempt = Some(rfc3339(at));
        state.reason = Some(reason.to_string());
        save_state(&data_dir, &domains, &state);
        r.metrics.next_renewal_at(r.index, &r.cert, at);
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        if !wait.is_zero() && announced != Some(at) {
            info!(certificate = r.index, %domains, next = %rfc3339(at), %reason, "next ACME renewal");
            announced = Some(at);
        }
        // Sleep in naps against the wall clock: a monotonic sleep does not count time
        // spent suspended, and the CA's window (ARI) may move meanwhile.
        let nap = wait.min(recheck.unwrap_or(NAP));
        tokio::select! {
            _ = r.shutdown.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
        }
        if nap < wait {
            continue;
        }
        state.last_attempt = Some(rfc3339(SystemTime::now()));
        let attempt = tokio::select! {
            _ = r.shutdown.cancelled() => return,
            result = r.acme.obtain(&r.cert, current.as_ref()) => result,
        };
        match attempt {
            Ok(summary) => {
                r.metrics.acme_order(true);
                r.metrics.renewal("acme", true);
                state.failures = 0;
                state.last_error = None;
                state.retry_not_before = None;
                announced = None;
                last_issued = Some((SystemTime::now(), summary.lifetime()));
                // (A first certificate was already logged as issued.)
                if current.is_some() {
                    info!(
                        event = "certificate_renewed",
                        certificate = r.index,
                        %domains,
                        serial = %summary.serial,
                        not_after = %rfc3339(summary.not_after),
                        "renewed from the CA"
                    );
                }
                r.reload.reload_slot(r.index, "acme renewal");
                crate::hooks::spawn_deploy_hook(r.index, &r.cert);
            }
            Err(e) => {
                r.metrics.acme_order(false);
                r.metrics.renewal("acme", false);
                state.failures += 1;
                state.last_error = Some(failure_text(&e));
                if e.is_rate_limited() {
                    state.set_retry_not_before(r.acme.take_retry_after());
                }
                // An expired pair on disk is still served (wssd keeps the last one).
                if current.is_some() || r.cert.cert_file.exists() {
                    error!(
                        event = "certificate_renewal_failed",
                        certificate = r.index,
                        %domains,
                        error = %e,
                        failures = state.failures,
                        "ACME renewal failed; the current certificate keeps serving"
                    );
                } else {
                    error!(
                        event = "certificate_order_failed",
                        certificate = r.index,
                        %domains,
                        error = %e,
                        failures = state.failures,
                        "ACME order failed; no certificate exists yet for these domains, so none is served"
                    );
                }
            }
        }
    }
}

/// The error as stored, with the problem type kept searchable for the rate-limit check.
pub fn failure_text(e: &AcmeError) -> String {
    if e.is_rate_limited() {
        format!("rateLimited: {e}")
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(days: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000 + DAY * days
    }

    #[test]
    fn default_window_is_the_last_third_with_early_jitter_only() {
        let (at, reason) = plan(t(0), t(90), None, None, 0.0);
        assert_eq!((at, reason), (t(60), Reason::LifetimeFraction));
        let (at, _) = plan(t(0), t(90), None, None, 0.999);
        assert!(at < t(60) && at > t(60) - DAY * 2, "{at:?}");
        let (at, _) = plan(t(0), t(6), None, None, 0.5);
        assert!(at <= t(4) && at > t(4) - DAY / 4);
    }

    #[test]
    fn renew_before_and_renewal_info_override() {
        assert_eq!(
            plan(t(0), t(90), Some(10 * DAY), None, 0.0),
            (t(80), Reason::RenewBefore(10 * DAY))
        );
        let (at, reason) = plan(t(0), t(90), Some(10 * DAY), Some((t(40), t(42))), 0.5);
        assert_eq!(at, t(41));
        assert_eq!(
            reason,
            Reason::RenewalInfo {
                start: t(40),
                end: t(42)
            }
        );
        // A window longer than the lifetime means: now.
        assert_eq!(plan(t(0), t(6), Some(30 * DAY), None, 0.0).0, t(0));
    }

    #[test]
    fn backoff_doubles_with_a_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(30), 0.5), s(30));
        assert_eq!(backoff(2, s(30), 0.5), s(60));
        assert_eq!(backoff(5, s(30), 0.5), s(480));
        assert_eq!(backoff(40, s(30), 0.5), s(6 * 3600), "capped at six hours");
        assert!(backoff(3, s(30), 0.0) < s(120) && backoff(3, s(30), 0.99) > s(120));
    }

    #[test]
    fn rate_limits_wait_for_retry_after_but_never_less_than_the_backoff() {
        let now = t(0);
        let s = Duration::from_secs;
        assert_eq!(
            retry_plan(1, Some(now + s(3600)), s(30), 0.5, now),
            (now + s(3600), Reason::RateLimited)
        );
        assert_eq!(
            retry_plan(3, Some(now + s(1)), s(30), 0.5, now),
            (now + s(120), Reason::Backoff { failures: 3 })
        );
        assert_eq!(
            retry_plan(2, None, s(30), 0.5, now),
            (now + s(60), Reason::Backoff { failures: 2 })
        );
    }

    #[test]
    fn a_retry_after_equal_to_the_backoff_is_just_the_backoff() {
        let now = t(0);
        let s = Duration::from_secs;
        assert_eq!(
            retry_plan(1, Some(now + s(30)), s(30), 0.5, now),
            (now + s(30), Reason::Backoff { failures: 1 })
        );
    }

    #[test]
    fn a_retry_after_is_stored_rounded_up_to_the_second() {
        let mut state = CertState::default();
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        state.set_retry_not_before(Some(whole));
        assert_eq!(state.retry_not_before, Some(1_000));
        assert_eq!(state.retry_not_before(), Some(whole));
        state.set_retry_not_before(Some(whole + Duration::from_millis(1)));
        assert_eq!(
            state.retry_not_before(),
            Some(whole + Duration::from_secs(1))
        );
        state.set_retry_not_before(None);
        assert_eq!(state.retry_not_before(), None);
    }

    #[test]
    fn a_restart_keeps_only_the_rate_limit() {
        let recorded = CertState {
            failures: 4,
            last_error: Some("boom".into()),
            retry_not_before: Some(1_234),
            reason: Some("backoff".into()),
            ..CertState::default()
        };
        let resumed = CertState::resumed(Some(recorded));
        assert_eq!(
            resumed,
            CertState {
                retry_not_before: Some(1_234),
                ..CertState::default()
            }
        );
        assert_eq!(CertState::resumed(None), CertState::default());
    }

    #[test]
    fn failures_are_stored_with_the_rate_limit_kept_searchable() {
        let problem: instant_acme::Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many",
            "status": 429
        }))
        .unwrap();
        let limited = AcmeError::Problem {
            identifier: None,
            problem,
        };
        let text = failure_text(&limited);
        assert!(
            text.starts_with("rateLimited: ") && text.contains("too many"),
            "{text}"
        );
        assert_eq!(failure_text(&AcmeError::Other("boom".into())), "boom");
    }

    #[test]
    fn reasons_read_as_status_shows_them() {
        let cases = [
            (Reason::Missing, "no valid certificate yet".to_string()),
            (
                Reason::LifetimeFraction,
                "last third of the lifetime".to_string(),
            ),
            (
                Reason::RenewBefore(30 * DAY),
                "renew_before = 30d".to_string(),
            ),
            (
                Reason::RenewalInfo {
                    start: t(1),
                    end: t(2),
                },
                format!(
                    "the CA's renewal window {} .. {}",
                    rfc3339(t(1)),
                    rfc3339(t(2))
                ),
            ),
            (
                Reason::Backoff { failures: 3 },
                "backoff after 3 failed attempt(s)".to_string(),
            ),
            (
                Reason::RateLimited,
                "rate limited: the CA's Retry-After".to_string(),
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn the_reorder_floor_holds_back_a_window_that_never_closes() {
        assert_eq!(reorder_floor(t(1), None), t(1));
        assert_eq!(reorder_floor(t(1), Some((t(1), DAY * 6))), t(3));
        assert_eq!(reorder_floor(t(5), Some((t(1), DAY * 6))), t(5));
    }

    #[test]
    fn the_window_point_follows_the_serial() {
        assert_eq!(jitter_for("04ab"), jitter_for("04ab"));
        assert_ne!(jitter_for("04ab"), jitter_for("04ac"));
        let spread: Vec<f64> = (0..1000).map(|i| jitter_for(&format!("{i:x}"))).collect();
        assert!(spread.iter().all(|j| (0.0..1.0).contains(j)));
        let low = spread.iter().filter(|j| **j < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
    }

    #[test]
    fn random_unit_is_in_range_and_spread() {
        let draws: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        // Spread over the range, not one value: the odds of failing are below 1e-9.
        let low = draws.iter().filter(|r| **r < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
    }
}
