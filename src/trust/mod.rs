//! `wssd trust` and `wssd untrust`: the dev CA put into, and taken out of, the trust
//! stores that browsers and command-line clients read, as `mkcert -install` and
//! `caddy trust` do. Each store is handled by the platform's own tool, as a user would
//! by hand: the system store by `update-ca-certificates` (Debian, Ubuntu),
//! `update-ca-trust` (Fedora, RHEL, Arch) or `security` (macOS keychain); NSS (Chrome and
//! Chromium on Linux, and every Firefox profile) by `certutil`.
//!
//! Each store gives a [`Report`]: changed, unchanged (already as asked: a second run
//! changes nothing), skipped with the reason (a missing tool names its package), or
//! failed. `--dry-run` says what would change and changes nothing.

pub mod nss;
pub mod system;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The name the CA carries in NSS databases, and the stem of its file in the system store.
pub const NICKNAME: &str = "wssd dev CA";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Trust,
    Untrust,
}

/// The CA certificate to install (or, for untrust, the one to look for by content).
#[derive(Debug, Clone)]
pub struct CaCert {
    /// A file holding it (PEM), for the tools that read one.
    pub path: PathBuf,
    pub pem: String,
    pub der: Vec<u8>,
}

/// What a run works on.
#[derive(Debug, Clone)]
pub struct Options {
    pub direction: Direction,
    /// Needed to trust; untrust removes wssd's entries by name with or without it.
    pub ca: Option<CaCert>,
    /// The home directory whose NSS database and Firefox profiles are changed.
    pub home: PathBuf,
    /// `/`, or a directory that stands for it (an image being built, a test): the system
    /// store's files are looked for under it.
    pub system_root: PathBuf,
    pub dry_run: bool,
}

impl Options {
    /// `path` (absolute, as on the real system) under the system root.
    pub fn system_path(&self, path: &str) -> PathBuf {
        self.system_root.join(path.trim_start_matches('/'))
    }

    pub fn is_real_root(&self) -> bool {
        self.system_root == Path::new("/")
    }

    /// The CA to install: trusting needs one.
    pub fn ca_to_install(&self) -> Result<&CaCert, String> {
        self.ca
            .as_ref()
            .ok_or_else(|| format!("no dev CA ({NICKNAME}) to install"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Changed now (or, in a dry run, would be).
    Changed(String),
    /// Already as asked.
    Unchanged(String),
    /// Not there, or its tool is missing: nothing to do, and why.
    Skipped(String),
    /// Could not be changed.
    Failed(String),
}

/// One store's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Which store, e.g. "system store (update-ca-certificates)".
    pub store: String,
    pub outcome: Outcome,
}

impl Report {
    pub fn new(store: impl Into<String>, outcome: Outcome) -> Report {
        Report {
            store: store.into(),
            outcome,
        }
    }
}

/// Changes every store in turn; one failing does not stop the others.
pub fn apply(options: &Options) -> Vec<Report> {
    let mut reports = vec![system::apply(options)];
    reports.extend(nss::apply(options));
    reports
}

/// A program by name: in `PATH`, or in the sbin directories an unprivileged user's
/// `PATH` often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `command` to its end; its standard output, or an error that names it and
/// carries what it printed.
pub fn run(command: &mut Command) -> Result<Vec<u8>, String> {
    let shown = show(command);
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    let said = if said.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        said.to_string()
    };
    Err(format!("{shown} failed ({}): {said}", output.status))
}

/// `command` as a user would type it (for messages).
fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The DER of the first certificate in `pem`, if any.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use pki_types::pem::PemObject;
    pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_sit_under_the_root() {
        let options = Options {
            direction: Direction::Trust,
            ca: None,
            home: PathBuf::from("/home/u"),
            system_root: PathBuf::from("/tmp/root"),
            dry_run: false,
        };
        assert_eq!(
            options.system_path("/etc/ssl/certs"),
            PathBuf::from("/tmp/root/etc/ssl/certs")
        );
        assert!(!options.is_real_root());
    }

    #[test]
    fn a_failed_command_says_what_it_printed() {
        let err = run(Command::new("sh").args(["-c", "echo nope >&2; exit 3"])).unwrap_err();
        assert!(
            err.contains("sh -c 'echo nope >&2; exit 3' failed"),
            "{err}"
        );
        assert!(err.ends_with("nope"), "{err}");
        let err = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(err.starts_with("cannot run /nonexistent/tool"), "{err}");
    }
}
