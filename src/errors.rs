//! Errors described for people: one line with every cause.

/// An error and its sources, one line: "client error (Connect): tcp connect error: ...".
/// A cause whose text the line already holds is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn every_cause_once() {
        let e = E(
            "outer",
            Some(Box::new(E("middle", Some(Box::new(E("outer", None)))))),
        );
        assert_eq!(error_chain(&e), "outer: middle");
        assert_eq!(error_chain(&E("alone", None)), "alone");
    }
}
