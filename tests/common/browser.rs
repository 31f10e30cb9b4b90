//! Headless Chromium (Debian's `/usr/bin/chromium`), driven by `tests/browser/browser.js`
//! with playwright-core, which `scripts/browser-setup` installs from npm. Chromium takes
//! its trusted CAs from `$HOME/.pki/nssdb`, so the `home` given decides what it trusts;
//! each run has a fresh profile.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// playwright-core's node_modules directory (installed once per test binary).
fn node_modules() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let setup = Command::new(root.join("scripts/browser-setup"))
            .output()
            .expect("run scripts/browser-setup");
        assert!(
            setup.status.success(),
            "scripts/browser-setup failed:\n{}",
            String::from_utf8_lossy(&setup.stderr)
        );
        String::from_utf8_lossy(&setup.stdout)
            .lines()
            .last()
            .expect("browser-setup prints node_modules")
            .to_string()
    })
}

/// Runs `browser.js ARGS` with `HOME=home`; its JSON answer.
pub fn chromium(home: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/browser.js");
    // `timeout` ends node (and, through playwright's SIGTERM handler, Chromium) if a
    // step hangs; each step has its own shorter timeout.
    let out = Command::new("timeout")
        .arg("120")
        .arg("node")
        .arg(script)
        .args(args)
        .env("NODE_PATH", node_modules())
        .env("HOME", home)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "browser.js printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
