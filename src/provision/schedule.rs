//! When to renew: a pure function of the certificate's validity, unit-tested.
//!
//! The default window is the last third of the lifetime (90-day certificates renew
//! with 30 days left, 6-day ones with 2), which works for every lifetime; a configured
//! `renew_before` overrides it.

use std::time::{Duration, SystemTime};

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
}
