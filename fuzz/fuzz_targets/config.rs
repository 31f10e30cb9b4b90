//! The config file: any text either parses into a config or is refused with an error that
//! names a key; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = wssd::config::Config::from_toml(text, std::path::Path::new("fuzz.toml")) {
        let _ = e.to_string();
    }
});
