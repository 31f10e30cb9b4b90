//! Property tests for the small parsers and matchers that every request or config line
//! goes through: sizes, durations and Origin patterns.

use proptest::prelude::*;
use wssd::config::OriginPattern;
use wssd::server::origin::is_allowed;
use wssd::units::{parse_duration, parse_size};

proptest! {
    #[test]
    fn sizes_scale_by_their_unit(n in 0u64..1 << 24, unit in prop::sample::select(vec![
        ("", 1u64), ("B", 1), ("KiB", 1 << 10), ("kib", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
        ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000),
    ]), space in any::<bool>()) {
        let text = format!("{n}{}{}", if space { " " } else { "" }, unit.0);
        prop_assert_eq!(parse_size(&text), Ok(n * unit.1));
    }

    #[test]
    fn any_text_is_a_size_or_an_error_never_a_panic(text in ".{0,40}") {
        let _ = parse_size(&text);
        let _ = parse_duration(&text);
    }

    #[test]
    fn durations_in_seconds_minutes_and_days(n in 1u64..100_000) {
        prop_assert_eq!(parse_duration(&format!("{n}s")).unwrap().as_secs(), n);
        prop_assert_eq!(parse_duration(&format!("{n}m")).unwrap().as_secs(), n * 60);
        prop_assert_eq!(parse_duration(&format!("{n}d")).unwrap().as_secs(), n * 86_400);
    }

    #[test]
    fn a_wildcard_covers_subdomains_only(
        label in "[a-z0-9]{1,12}",
        deeper in "[a-z0-9]{1,12}",
        suffix in "[a-z]{1,10}\\.(com|org|example)",
    ) {
        let patterns = vec![OriginPattern::parse(&format!("https://*.{suffix}")).unwrap()];
        let allowed = |origin: String| is_allowed(&patterns, Some(&origin));
        let sub = allowed(format!("https://{label}.{suffix}"));
        let deep = allowed(format!("https://{deeper}.{label}.{suffix}"));
        let apex = allowed(format!("https://{suffix}"));
        let no_dot = allowed(format!("https://{label}{suffix}"));
        let scheme = allowed(format!("http://{label}.{suffix}"));
        let longer = allowed(format!("https://{label}.{suffix}.evil"));
        let port = allowed(format!("https://{label}.{suffix}:8443"));
        prop_assert!(sub && deep);
        prop_assert!(!apex && !no_dot && !scheme && !longer && !port);
        prop_assert!(!is_allowed(&patterns, None));
    }

    #[test]
    fn exact_origins_match_case_insensitively_and_nothing_else(
        host in "[a-z][a-z0-9]{0,10}\\.[a-z]{2,6}",
        other in "[a-z][a-z0-9]{0,10}\\.[a-z]{2,6}",
        port in prop::option::of(1u16..65535),
    ) {
        let origin = match port { Some(p) => format!("https://{host}:{p}"), None => format!("https://{host}") };
        let patterns = vec![OriginPattern::parse(&origin).unwrap()];
        prop_assert!(is_allowed(&patterns, Some(&origin.to_uppercase())));
        if other != host {
            prop_assert!(!is_allowed(&patterns, Some(&origin.replace(&host, &other))));
        }
    }

    #[test]
    fn any_origin_header_is_judged_without_panicking(origin in ".{0,60}", pattern in "https://(\\*\\.)?[a-z.]{1,20}") {
        if let Ok(p) = OriginPattern::parse(&pattern) {
            let _ = is_allowed(&[p], Some(&origin));
        }
    }
}
