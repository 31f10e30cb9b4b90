//! Property tests for the small parsers and matchers that every request or config line
//! goes through: sizes, durations and Origin patterns.

use proptest::prelude::*;
use wssd::config::OriginPattern;
use wssd::server::origin::is_allowed;
use wssd::units::{format_duration, parse_duration, parse_size};

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
    fn any_text_that_parses_prints_back_to_the_same_value(text in "[0-9]{1,7} ?(ms|s|m|h|d|B|KiB|MiB|GiB|KB|MB)?|[0-9 .a-zA-Z]{0,16}|.{0,40}") {
        // A size that parses is a number of bytes, and that number reads back as itself.
        if let Ok(n) = parse_size(&text) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
        // A duration prints in at most two units (it may round down), and what it prints
        // parses back to a fixed point.
        if let Ok(d) = parse_duration(&text) {
            let printed = format_duration(d);
            let back = parse_duration(&printed).map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
            prop_assert!(back <= d, "{:?} printed as {} reads as {:?}", d, printed, back);
            prop_assert_eq!(parse_duration(&format_duration(back)), Ok(back));
        }
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
    fn only_a_bare_origin_is_ever_allowed(
        host in "[a-z0-9]{1,8}",
        suffix in "[a-z]{1,8}\\.(com|org|example)",
        before in "[a-z0-9@./?#:\\\\ _-]{0,6}",
        after in "[a-z0-9@./?#:\\\\ _-]{0,6}",
        wildcard in any::<bool>(),
    ) {
        let pattern = if wildcard { format!("https://*.{suffix}") } else { format!("https://{host}.{suffix}") };
        let p = OriginPattern::parse(&pattern).unwrap();
        let bare = format!("https://{host}.{suffix}");
        prop_assert!(is_allowed(std::slice::from_ref(&p), Some(&bare)), "{} refused by {}", bare, p);
        let origin = format!("https://{before}{host}.{suffix}{after}");
        if is_allowed(std::slice::from_ref(&p), Some(&origin)) {
            // Nothing before or after the host may hide another host or a path.
            let rest = &origin["https://".len()..];
            prop_assert!(
                !rest.contains(['/', '?', '#', '@', '\\', ' ']),
                "{} allowed by {}", origin, p
            );
            prop_assert!(after.is_empty() || after == ":443", "{} allowed by {}", origin, p);
        }
    }
}
