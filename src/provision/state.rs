//! The renewal record of each certificate: what provisioning decided and why, the
//! failures in a row and their kind. For ACME certificates it is kept in
//! `data_dir/acme/state.json`, so `wssd status` in another process can show when each
//! certificate renews next and why, and a rate limit's `Retry-After` holds across
//! restarts and `wssd issue` passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cert::store::{self, CERT_MODE, PRIVATE_DIR_MODE};

/// What kind of failure the last attempt was: what the next attempt's timing depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The CA's rate limit: the next attempt waits for its `Retry-After`.
    RateLimited,
    /// Anything else: the next attempt waits for the backoff.
    Other,
}

/// A failed attempt, as the source reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The error, for people (logs, `wssd status`).
    pub message: String,
    /// Until when the CA asked not to be asked again (a rate limit's `Retry-After`).
    pub retry_after: Option<SystemTime>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One certificate's renewal state, as stored for `wssd status` (and the next pass).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CertState {
    pub next_attempt: Option<String>,
    pub reason: Option<String>,
    pub failures: u32,
    /// The last failure's message; a rate limit's starts with `rateLimited: `, the name
    /// people search for.
    pub last_error: Option<String>,
    /// The last failure's kind (none: the last attempt succeeded, or none was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    pub last_attempt: Option<String>,
    /// A rate limit's Retry-After (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_not_before: Option<u64>,
    /// The serial of the certificate this plan is about (none: there was none); a record
    /// about another serial is out of date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// After a failure: when the next attempt may be made (milliseconds since the Unix
    /// epoch), fixed when the failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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

    /// Counts a failed attempt: its kind and message, and a rate limit's `Retry-After`.
    pub fn record_failure(&mut self, failure: &Failure) {
        self.failures += 1;
        self.failure = Some(failure.kind);
        self.last_error = Some(match failure.kind {
            FailureKind::RateLimited => format!("rateLimited: {}", failure.message),
            FailureKind::Other => failure.message.clone(),
        });
        if failure.kind == FailureKind::RateLimited {
            self.set_retry_not_before(failure.retry_after);
        }
    }

    /// Fixes when the next attempt after the failures so far may be made: the backoff
    /// from `failed_at`, or the CA's rate limit when that is later.
    pub fn schedule_retry(&mut self, initial: Duration, jitter: f64, failed_at: SystemTime) {
        let (at, _) = super::schedule::retry_plan(
            self.failures,
            self.rate_limited_until(),
            initial,
            jitter,
            failed_at,
        );
        self.retry_at_ms = Some(unix_ms(at));
    }

    /// When the next attempt may be made, as [`CertState::schedule_retry`] fixed it.
    pub fn retry_at(&self) -> Option<SystemTime> {
        self.retry_at_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Takes over the outcome of the fleet's last attempt (`shared`, made by whichever
    /// replica held the lock): its failures and when the next attempt may be made; a rate
    /// limit either of them met still holds.
    pub fn adopt(&mut self, shared: CertState) {
        self.failures = shared.failures;
        self.failure = shared.failure;
        self.last_error = shared.last_error;
        self.last_attempt = shared.last_attempt.or(self.last_attempt.take());
        self.retry_at_ms = shared.retry_at_ms;
        self.retry_not_before = self.retry_not_before.max(shared.retry_not_before);
    }

    /// A success: no failures, no rate limit.
    pub fn record_success(&mut self) {
        self.failures = 0;
        self.failure = None;
        self.last_error = None;
        self.retry_not_before = None;
        self.retry_at_ms = None;
    }

    /// Until when the CA's rate limit holds, when the last failure was one.
    pub fn rate_limited_until(&self) -> Option<SystemTime> {
        (self.failure == Some(FailureKind::RateLimited))
            .then(|| self.retry_not_before())
            .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn failures_are_stored_with_their_kind_and_the_rate_limit_kept_searchable() {
        let mut state = CertState::default();
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(5_000);
        state.record_failure(&Failure {
            kind: FailureKind::RateLimited,
            message: "too many".into(),
            retry_after: Some(until),
        });
        assert_eq!(state.failures, 1);
        assert_eq!(state.failure, Some(FailureKind::RateLimited));
        assert_eq!(state.last_error.as_deref(), Some("rateLimited: too many"));
        assert_eq!(state.rate_limited_until(), Some(until));
        state.record_failure(&Failure {
            kind: FailureKind::Other,
            message: "boom".into(),
            retry_after: Some(until + Duration::from_secs(1)),
        });
        assert_eq!(state.failures, 2);
        assert_eq!(state.last_error.as_deref(), Some("boom"));
        assert_eq!(
            state.rate_limited_until(),
            None,
            "the last failure was not one"
        );
        assert_eq!(
            state.retry_not_before(),
            Some(until),
            "an earlier limit still holds"
        );
        state.record_success();
        assert_eq!(
            (
                state.failures,
                state.failure,
                state.last_error,
                state.retry_not_before
            ),
            (0, None, None, None)
        );
    }

    #[test]
    fn the_kind_is_stored_by_name() {
        let state = CertState {
            failure: Some(FailureKind::RateLimited),
            ..CertState::default()
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["failure"], "rate_limited");
        let back: CertState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        // A record from before the kind was kept still reads.
        let old: CertState = serde_json::from_str(r#"{"next_attempt":null,"reason":null,"failures":2,"last_error":"x","last_attempt":null}"#).unwrap();
        assert_eq!((old.failures, old.failure), (2, None));
    }
}
