//! The system store: what curl, OpenSSL, Python, Node (with `--use-system-ca`), Go and
//! most command-line clients trust. Debian and Ubuntu keep local CAs in
//! `/usr/local/share/ca-certificates` and build the bundle with `update-ca-certificates`;
//! Fedora, RHEL and Arch keep anchors for `update-ca-trust`; macOS has the System keychain.
//!
//! These files belong to root. Run as another user, the steps that touch them go
//! through `sudo` (which asks for a password), as mkcert does, so that the NSS changes
//! still land in the user's own home and not in root's.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CaCert, Direction, Options, Outcome, Report, find_program, run};
use crate::cert::store::{self, CERT_MODE};

/// The system store's tool on this host.
enum Tool {
    /// Debian, Ubuntu.
    UpdateCaCertificates(PathBuf),
    /// Fedora, RHEL, Arch (p11-kit).
    UpdateCaTrust(PathBuf),
    /// macOS.
    Keychain(PathBuf),
}

fn detect() -> Option<Tool> {
    if cfg!(target_os = "macos") {
        return find_program("security").map(Tool::Keychain);
    }
    find_program("update-ca-certificates")
        .map(Tool::UpdateCaCertificates)
        .or_else(|| find_program("update-ca-trust").map(Tool::UpdateCaTrust))
}

pub fn apply(options: &Options) -> Report {
    match detect() {
        Some(Tool::UpdateCaCertificates(tool)) => Report::new(
            "system store (update-ca-certificates)",
            debian(options, &tool).unwrap_or_else(Outcome::Failed),
        ),
        Some(Tool::UpdateCaTrust(tool)) => Report::new(
            "system store (update-ca-trust)",
            p11_kit(options, &tool).unwrap_or_else(Outcome::Failed),
        ),
        Some(Tool::Keychain(tool)) => Report::new(
            "System keychain",
            keychain(options, &tool).unwrap_or_else(Outcome::Failed),
        ),
        None => Report::new(
            "system store",
            Outcome::Skipped(
                "no update-ca-certificates (Debian/Ubuntu: ca-certificates) or update-ca-trust \
                 (Fedora/RHEL: ca-certificates, Arch: p11-kit) found"
                    .into(),
            ),
        ),
    }
}

/// Debian and Ubuntu: `wssd-dev-ca.crt` in the local CA directory, then
/// `update-ca-certificates` (with `--fresh` after a removal, which also drops the
/// links to the removed file).
fn debian(options: &Options, tool: &Path) -> Result<Outcome, String> {
    let anchor = options.system_path("/usr/local/share/ca-certificates/wssd-dev-ca.crt");
    let link = options.system_path("/etc/ssl/certs/wssd-dev-ca.pem");
    let bundle = options.system_path("/etc/ssl/certs/ca-certificates.crt");
    let update = |privilege: Privilege, fresh: bool| -> Result<(), String> {
        let mut command = privilege.command(tool);
        if fresh {
            command.arg("--fresh");
        }
        if !options.is_real_root() {
            let etc_certs = options.system_path("/etc/ssl/certs");
            std::fs::create_dir_all(&etc_certs)
                .map_err(|e| format!("cannot create {}: {e}", etc_certs.display()))?;
            for (flag, path) in [
                ("--certsconf", "/etc/ca-certificates.conf"),
                ("--certsdir", "/usr/share/ca-certificates"),
                ("--localcertsdir", "/usr/local/share/ca-certificates"),
                ("--etccertsdir", "/etc/ssl/certs"),
                ("--hooksdir", "/etc/ca-certificates/update.d"),
            ] {
                command.arg(flag).arg(options.system_path(path));
            }
        }
        run(&mut command).map(drop)
    };
    match options.direction {
        Direction::Trust => {
            let ca = options.ca_to_install()?;
            let current = std::fs::read(&anchor).ok();
            let same = current.as_deref().and_then(super::pem_to_der).as_ref() == Some(&ca.der);
            if same && link.exists() {
                return Ok(Outcome::Unchanged(format!(
                    "already in {}",
                    anchor.display()
                )));
            }
            let verb = if current.is_some() { "replace" } else { "add" };
            if options.dry_run {
                return Ok(Outcome::Changed(format!(
                    "would {verb} {} and run update-ca-certificates",
                    anchor.display()
                )));
            }
            update(place(ca, &anchor)?, false)?;
            Ok(Outcome::Changed(format!(
                "{} {}; update-ca-certificates rebuilt {}",
                if current.is_some() {
                    "replaced"
                } else {
                    "added"
                },
                anchor.display(),
                bundle.display()
            )))
        }
        Direction::Untrust => {
            if !anchor.exists() && std::fs::symlink_metadata(&link).is_err() {
                return Ok(Outcome::Unchanged("not in the system store".into()));
            }
            if options.dry_run {
                return Ok(Outcome::Changed(format!(
                    "would remove {} and run update-ca-certificates --fresh",
                    anchor.display()
                )));
            }
            if let Ok(target) = std::fs::read_link(&link)
                && target == anchor
            {
                // The --fresh run below drops the link too; this way a run that fails
                // halfway leaves no link to a missing file.
                let _ = std::fs::remove_file(&link);
            }
            update(remove(&anchor)?, true)?;
            Ok(Outcome::Changed(format!(
                "removed {}; update-ca-certificates --fresh rebuilt {}",
                anchor.display(),
                bundle.display()
            )))
        }
    }
}

/// Fedora, RHEL and Arch: a PEM anchor, then `update-ca-trust extract` (which writes
/// the real system's bundles only, so under another `--system-root` it is not run).
fn p11_kit(options: &Options, tool: &Path) -> Result<Outcome, String> {
    let fedora = options.system_path("/etc/pki/ca-trust/source/anchors");
    let dir = if fedora.parent().is_some_and(Path::exists) {
        fedora
    } else {
        options.system_path("/etc/ca-certificates/trust-source/anchors")
    };
    let anchor = dir.join("wssd-dev-ca.pem");
    let extract = |privilege: Privilege| -> Result<&'static str, String> {
        if !options.is_real_root() {
            return Ok(" (update-ca-trust not run: --system-root is not /)");
        }
        let mut command = privilege.command(tool);
        command.arg("extract");
        run(&mut command).map(|_| "; update-ca-trust extract ran")
    };
    match options.direction {
        Direction::Trust => {
            let ca = options.ca_to_install()?;
            let current = std::fs::read(&anchor).ok();
            if current.as_deref().and_then(super::pem_to_der).as_ref() == Some(&ca.der) {
                return Ok(Outcome::Unchanged(format!(
                    "already in {}",
                    anchor.display()
                )));
            }
            if options.dry_run {
                return Ok(Outcome::Changed(format!(
                    "would write {} and run update-ca-trust extract",
                    anchor.display()
                )));
            }
            let ran = extract(place(ca, &anchor)?)?;
            Ok(Outcome::Changed(format!("wrote {}{ran}", anchor.display())))
        }
        Direction::Untrust => {
            if !anchor.exists() {
                return Ok(Outcome::Unchanged("not in the system store".into()));
            }
            if options.dry_run {
                return Ok(Outcome::Changed(format!(
                    "would remove {} and run update-ca-trust extract",
                    anchor.display()
                )));
            }
            let ran = extract(remove(&anchor)?)?;
            Ok(Outcome::Changed(format!(
                "removed {}{ran}",
                anchor.display()
            )))
        }
    }
}

/// macOS: the System keychain, with trust settings for TLS (`security add-trusted-cert`).
/// The CA is found by its SHA-256 hash, which `security find-certificate -Z` prints.
fn keychain(options: &Options, tool: &Path) -> Result<Outcome, String> {
    const KEYCHAIN: &str = "/Library/Keychains/System.keychain";
    if !options.is_real_root() {
        return Ok(Outcome::Skipped(
            "the keychain has no --system-root; not changed".into(),
        ));
    }
    let Some(ca) = options.ca.as_ref() else {
        return Ok(Outcome::Unchanged("no dev CA to look for".into()));
    };
    let hash = crate::cert::inspect::sha256_fingerprint(&ca.der).replace(':', "");
    let listed = run(Command::new(tool).args(["find-certificate", "-a", "-Z", KEYCHAIN]))
        .map(|out| String::from_utf8_lossy(&out).to_uppercase())
        .unwrap_or_default();
    let present = listed.contains(&hash);
    let privilege = keychain_privilege();
    match (options.direction, present) {
        (Direction::Trust, true) => Ok(Outcome::Unchanged(format!("already in {KEYCHAIN}"))),
        (Direction::Untrust, false) => Ok(Outcome::Unchanged(format!("not in {KEYCHAIN}"))),
        (_, _) if options.dry_run => Ok(Outcome::Changed(format!(
            "would {} {KEYCHAIN}",
            if present {
                "remove it from"
            } else {
                "add it to"
            }
        ))),
        (Direction::Trust, false) => {
            let mut add = privilege.command(tool);
            add.args(["add-trusted-cert", "-d", "-r", "trustRoot", "-k", KEYCHAIN])
                .arg(&ca.path);
            run(&mut add)?;
            Ok(Outcome::Changed(format!("added to {KEYCHAIN}")))
        }
        (Direction::Untrust, true) => {
            let mut untrust = privilege.command(tool);
            untrust.args(["remove-trusted-cert", "-d"]).arg(&ca.path);
            run(&mut untrust)?;
            let mut delete = privilege.command(tool);
            delete.args(["delete-certificate", "-Z", &hash, KEYCHAIN]);
            run(&mut delete)?;
            Ok(Outcome::Changed(format!("removed from {KEYCHAIN}")))
        }
    }
}

/// How the root-owned steps run: directly (as root, or in a `--system-root` of the
/// user's), or through sudo when a direct attempt was refused.
#[derive(Debug, Clone)]
enum Privilege {
    Direct,
    Sudo(PathBuf),
}

impl Privilege {
    fn command(&self, tool: &Path) -> Command {
        match self {
            Privilege::Sudo(sudo) => {
                let mut command = Command::new(sudo);
                command.arg(tool);
                command
            }
            Privilege::Direct => Command::new(tool),
        }
    }
}

fn sudo(path: &Path, error: &std::io::Error) -> Result<Privilege, String> {
    find_program("sudo").map(Privilege::Sudo).ok_or_else(|| {
        format!(
            "cannot change {}: {error}, and there is no sudo: run this as root",
            path.display()
        )
    })
}

fn denied(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::PermissionDenied
}

/// Writes the CA to `anchor` (mode 0644), creating its directory; through sudo if this
/// process may not.
fn place(ca: &CaCert, anchor: &Path) -> Result<Privilege, String> {
    let direct = || -> Result<(), std::io::Error> {
        if let Some(dir) = anchor.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match store::write_atomic(anchor, ca.pem.as_bytes(), CERT_MODE) {
            Err(store::StoreError::Write { source, .. }) => Err(source),
            Err(other) => Err(std::io::Error::other(other.to_string())),
            Ok(()) => Ok(()),
        }
    };
    match direct() {
        Ok(()) => Ok(Privilege::Direct),
        Err(e) if denied(&e) => {
            let privilege = sudo(anchor, &e)?;
            let mut install = privilege.command(Path::new("install"));
            install.args(["-D", "-m", "0644"]).arg(&ca.path).arg(anchor);
            run(&mut install)?;
            Ok(privilege)
        }
        Err(e) => Err(format!("cannot write {}: {e}", anchor.display())),
    }
}

/// Removes `anchor` (a missing one is fine); through sudo if this process may not.
fn remove(anchor: &Path) -> Result<Privilege, String> {
    match std::fs::remove_file(anchor) {
        Ok(()) => Ok(Privilege::Direct),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Privilege::Direct),
        Err(e) if denied(&e) => {
            let privilege = sudo(anchor, &e)?;
            let mut rm = privilege.command(Path::new("rm"));
            rm.arg("-f").arg(anchor);
            run(&mut rm)?;
            Ok(privilege)
        }
        Err(e) => Err(format!("cannot remove {}: {e}", anchor.display())),
    }
}

/// The keychain's privilege: root, or sudo.
fn keychain_privilege() -> Privilege {
    let root = run(Command::new("id").arg("-u")).is_ok_and(|out| out.trim_ascii() == b"0");
    match find_program("sudo") {
        Some(sudo) if !root => Privilege::Sudo(sudo),
        _ => Privilege::Direct,
    }
}
