//! Certificate and key files as an attacker (or a truncated write) leaves them: the pair
//! loader and the X.509 summary refuse garbage with an error, never a panic.
#![no_main]

use std::path::Path;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use wssd::cert::inspect::CertSummary;
use wssd::cert::pair::pair_from_pem;
use wssd::config::Domain;

fuzz_target!(|data: &[u8]| {
    let _ = CertSummary::from_der(data);
    // The first 0xFF byte (never in PEM text) splits the input into the two files.
    let split = data.iter().position(|b| *b == 0xFF).unwrap_or(data.len() / 2);
    let (cert, key) = data.split_at(split);
    let key = key.get(1..).unwrap_or_default();
    let domains = [Domain::Dns("localhost".into())];
    if let Err(e) = pair_from_pem(cert, key, Path::new("cert.pem"), Path::new("key.pem"), &domains, SystemTime::now(), &wssd::tls::provider()) {
        let _ = e.to_string();
    }
});
