//! X.509 summaries: the facts about a certificate that logs, `wssd status` and
//! `wssd probe` show (subject, issuer, serial, names, validity).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex, without leading zero bytes or separators.
    pub serial: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    #[serde(serialize_with = "ser_rfc3339")]
    pub not_before: SystemTime,
    #[serde(serialize_with = "ser_rfc3339")]
    pub not_after: SystemTime,
    pub is_ca: bool,
}

/// The certificate could not be parsed as X.509 DER.
#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 certificate: {0}")]
pub struct ParseError(String);

impl CertSummary {
    pub fn from_der(der: &[u8]) -> Result<CertSummary, ParseError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| ParseError(e.to_string()))?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns_names.push(n.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(b));
                        } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(IpAddr::from(b));
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: serial_hex(cert.raw_serial()),
            dns_names,
            ip_addresses,
            not_before: unix_time(validity.not_before.timestamp()),
            not_after: unix_time(validity.not_after.timestamp()),
            is_ca: cert.is_ca(),
        })
    }

    /// Whole days until `not_after` (negative once expired), rounded down.
    pub fn days_left(&self, now: SystemTime) -> i64 {
        let secs = match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 86_399,
        };
        secs / 86_400
    }

    /// The certificate's lifetime, `not_after - not_before`.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Does the certificate cover `name` (a DNS name, possibly via a wildcard, or an IP)?
    pub fn covers(&self, name: &crate::config::Domain) -> bool {
        use crate::config::Domain;
        match name {
            Domain::Ip(ip) => self.ip_addresses.contains(ip),
            Domain::Dns(dns) => self.dns_names.iter().any(|san| dns_matches(san, dns)),
        }
    }

    /// All names, DNS first then IPs, comma-separated: for logs.
    pub fn names(&self) -> String {
        self.dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(ToString::to_string))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// RFC 6125 matching of a SAN against a wanted name: exact (case-insensitive), or a
/// `*.` wildcard SAN covering exactly one label; a wanted wildcard needs the same wildcard.
fn dns_matches(san: &str, wanted: &str) -> bool {
    if san.eq_ignore_ascii_case(wanted) {
        return true;
    }
    match (san.strip_prefix("*."), wanted.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            label != "*" && !label.is_empty() && parent.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Formats a time as RFC 3339 in UTC, e.g. `2027-02-23T10:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn ser_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// The SHA-256 fingerprint of a DER certificate, as colon-separated uppercase hex (the
/// form browsers and `openssl x509 -fingerprint -sha256` show).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_one_label_only() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("*.Example.com", "A.example.COM"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("a.example.com", "*.example.com"));
        assert!(dns_matches("*.example.com", "*.example.com"));
    }

    #[test]
    fn serials_drop_der_padding() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x12, 0x00]), "1200");
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02T00:00:00Z"
        );
    }
}
