//! Durations (`"10s"`, `"5m"`, `"30d"`) and byte sizes (`"64KiB"`, `"16MiB"`) as written in
//! the config file. Pure parsing, no I/O, so the rules are unit-tested here and the rest of
//! the code only ever sees `Duration` and `u64`.

use std::time::Duration;

/// Parses a human duration such as `"10s"`, `"5m"`, `"1h 30m"` or `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write it like \"10s\", \"5m\" or \"30d\"".into());
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write it like \"10s\", \"5m\" or \"30d\"")
    })
}

/// Parses a byte size such as `"64KiB"`, `"16MiB"`, `"1GB"` or a bare number of bytes.
/// Binary (`KiB`, `MiB`, `GiB`) and decimal (`KB`, `MB`, `GB`) units are both accepted,
/// case-insensitively.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size {text:?}; write it like \"64KiB\", \"16MiB\" or a number of bytes")
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

/// Formats a duration for people, in at most two units and without a zero second one:
/// `"89d 23h"`, `"30d"`, `"4m 10s"`, `"350ms"`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (big, big_unit, small, small_unit) = match secs {
        0 => return format!("{}ms", d.as_millis()),
        1..=59 => return format!("{secs}s"),
        60..=3599 => (secs / 60, "m", secs % 60, "s"),
        3600..=86_399 => (secs / 3600, "h", secs % 3600 / 60, "m"),
        _ => (secs / 86_400, "d", secs % 86_400 / 3600, "h"),
    };
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_config_style() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for bad in ["", "10", "ten seconds", "5x", "-1s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("\"10s\""), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 mib"), Ok(16 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10kb"), Ok(10_000));
    }

    #[test]
    fn every_size_unit() {
        for (text, bytes) in [
            ("7", 7u64),
            ("7b", 7),
            ("7B", 7),
            ("7kb", 7_000),
            ("7k", 7 << 10),
            ("7KiB", 7 << 10),
            ("7mb", 7_000_000),
            ("7m", 7 << 20),
            ("7MiB", 7 << 20),
            ("7gb", 7_000_000_000),
            ("7g", 7 << 30),
            ("7GiB", 7 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "MiB", "12XB", "1.5MiB", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn durations_print_in_the_unit_of_their_range() {
        let s = Duration::from_secs;
        for (d, text) in [
            (s(1), "1s"),
            (s(59), "59s"),
            (s(60), "1m"),
            (s(61), "1m 1s"),
            (s(3599), "59m 59s"),
            (s(3600), "1h"),
            (s(3600 + 120 + 5), "1h 2m"),
            (s(86_399), "23h 59m"),
            (s(86_400), "1d"),
            (s(2 * 86_400 + 3 * 3600 + 59), "2d 3h"),
        ] {
            assert_eq!(format_duration(d), text, "{d:?}");
        }
    }

    #[test]
    fn durations_print_for_people() {
        assert_eq!(format_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(format_duration(Duration::from_secs(250)), "4m 10s");
        assert_eq!(format_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(
            format_duration(Duration::from_secs(90 * 86_400 - 3600)),
            "89d 23h"
        );
    }
}
