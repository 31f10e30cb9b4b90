//! When to obtain a certificate again: pure functions, unit-tested.
//!
//! The decision ([`plan`]) follows from the certificate's validity, the configured
//! `renew_before`, the CA's renewal window (ARI, RFC 9773) when it offers one, and the
//! failures so far. The default window is the last third of the lifetime (90-day
//! certificates renew with 30 days left, 6-day ones with 2), which works for every
//! lifetime; a random point early in the window spreads many instances out. A failed
//! attempt waits with capped exponential backoff and jitter ([`retry_plan`]), or as long
//! as the CA's `Retry-After` says when it rate-limits.

use std::time::{Duration, SystemTime};

use crate::cert::inspect::rfc3339;

/// The moment renewal becomes due.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let before = renew_before.unwrap_or(lifetime / 3).min(lifetime);
    not_after - before
}

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Why a certificate renews when it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No valid certificate yet.
    Missing,
    /// From a dev CA that has since been replaced: no longer trusted.
    OtherIssuer,
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
            Reason::OtherIssuer => f.write_str("not from the current dev CA"),
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn last_third_of_any_lifetime() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renew_at(start, start + 90 * DAY, None), start + 60 * DAY);
        assert_eq!(renew_at(start, start + 6 * DAY, None), start + 4 * DAY);
    }

    #[test]
    fn renew_before_overrides_but_never_precedes_issuance() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(
            renew_at(start, start + 90 * DAY, Some(30 * DAY)),
            start + 60 * DAY
        );
        assert_eq!(
            renew_at(start, start + 90 * DAY, Some(10 * DAY)),
            start + 80 * DAY
        );
        assert_eq!(renew_at(start, start + 6 * DAY, Some(30 * DAY)), start);
    }

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
    fn reasons_read_as_status_shows_them() {
        let cases = [
            (Reason::Missing, "no valid certificate yet".to_string()),
            (
                Reason::OtherIssuer,
                "not from the current dev CA".to_string(),
            ),
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
