//! NSS databases: Chrome and Chromium on Linux read `~/.pki/nssdb`, and each Firefox
//! profile has its own (`cert9.db` in the profile directory). Every profile that a
//! `profiles.ini` lists is changed: the usual one, Snap's and Flatpak's, and macOS's.
//! `certutil` (NSS's tool) does the work; a database that does not exist yet is created,
//! as the browsers would on first start.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CaCert, Direction, NICKNAME, Options, Outcome, Report, find_program, run};

const CERTUTIL_MISSING: &str = "certutil not found: install libnss3-tools (Debian/Ubuntu), \
                                nss-tools (Fedora/RHEL), nss (Arch, Homebrew)";

/// Where Firefox keeps `profiles.ini`, relative to the home directory.
const FIREFOX_DIRS: &[&str] = &[
    ".mozilla/firefox",
    "snap/firefox/common/.mozilla/firefox",
    ".var/app/org.mozilla.firefox/.mozilla/firefox",
    "Library/Application Support/Firefox",
];

/// Changes the Chrome/Chromium database and every Firefox profile's.
pub fn apply(options: &Options) -> Vec<Report> {
    let certutil = find_program("certutil");
    let mut reports = Vec::new();

    let chromium = options.home.join(".pki/nssdb");
    // On macOS, Chrome reads the keychain; an NSS database there is only changed if one
    // was made on purpose.
    if cfg!(target_os = "linux") || chromium.exists() {
        let store = format!("NSS for Chrome/Chromium ({})", chromium.display());
        reports.push(Report::new(
            store,
            match &certutil {
                None => Outcome::Skipped(CERTUTIL_MISSING.into()),
                Some(tool) => database(options, tool, &chromium).unwrap_or_else(Outcome::Failed),
            },
        ));
    }

    let inis: Vec<PathBuf> = FIREFOX_DIRS
        .iter()
        .map(|d| options.home.join(d).join("profiles.ini"))
        .filter(|ini| ini.is_file())
        .collect();
    if inis.is_empty() {
        reports.push(Report::new(
            "Firefox",
            Outcome::Skipped(format!(
                "no profiles.ini under {} (Firefox not installed, or never started)",
                options.home.join(FIREFOX_DIRS[0]).display()
            )),
        ));
    }
    for ini in inis {
        let base = ini.parent().unwrap_or(Path::new("/"));
        let text = match std::fs::read_to_string(&ini) {
            Ok(text) => text,
            Err(e) => {
                reports.push(Report::new(
                    format!("Firefox ({})", ini.display()),
                    Outcome::Failed(format!("cannot read it: {e}")),
                ));
                continue;
            }
        };
        for profile in profiles(&text, base) {
            let store = format!("Firefox profile {}", profile.display());
            let outcome = match &certutil {
                None => Outcome::Skipped(CERTUTIL_MISSING.into()),
                Some(_) if !profile.is_dir() => {
                    Outcome::Skipped("listed in profiles.ini but not there".into())
                }
                Some(tool) => database(options, tool, &profile).unwrap_or_else(Outcome::Failed),
            };
            reports.push(Report::new(store, outcome));
        }
    }
    reports
}

/// The profile directories a `profiles.ini` lists (`[ProfileN]` sections; `Path`
/// relative to `base` when `IsRelative=1`, as Firefox writes it).
pub fn profiles(ini: &str, base: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut in_profile = false;
    let mut path: Option<String> = None;
    let mut relative = true;
    let mut finish = |path: &mut Option<String>, relative: bool| {
        if let Some(p) = path.take() {
            found.push(if relative {
                base.join(p)
            } else {
                PathBuf::from(p)
            });
        }
    };
    for line in ini.lines().map(str::trim) {
        if line.starts_with('[') {
            if in_profile {
                finish(&mut path, relative);
            }
            in_profile = line.starts_with("[Profile");
            relative = true;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "Path" => path = Some(value.trim().to_string()),
                "IsRelative" => relative = value.trim() != "0",
                _ => {}
            }
        }
    }
    if in_profile {
        finish(&mut path, relative);
    }
    found
}

/// Trusts (or untrusts) the CA in the NSS database in `dir`, by its nickname.
fn database(options: &Options, certutil: &Path, dir: &Path) -> Result<Outcome, String> {
    let db = format!("sql:{}", dir.display());
    let exists = dir.join("cert9.db").exists();
    let current = if exists { lookup(certutil, &db) } else { None };
    match options.direction {
        Direction::Trust => {
            let ca = options.ca_to_install()?;
            if current.as_ref() == Some(&ca.der) {
                return Ok(Outcome::Unchanged("already trusted".into()));
            }
            let (would, did) = match (exists, &current) {
                (false, _) => (
                    "create the database and add the CA",
                    "created the database, added the CA",
                ),
                (true, None) => ("add the CA", "added the CA"),
                (true, Some(_)) => (
                    "replace an older wssd dev CA",
                    "replaced an older wssd dev CA",
                ),
            };
            if options.dry_run {
                return Ok(Outcome::Changed(format!("would {would}")));
            }
            if !exists {
                create(certutil, dir, &db)?;
            }
            if current.is_some() {
                delete_all(certutil, &db)?;
            }
            add(certutil, &db, ca)?;
            Ok(Outcome::Changed(did.into()))
        }
        Direction::Untrust => {
            if current.is_none() {
                return Ok(Outcome::Unchanged(if exists {
                    "not there".into()
                } else {
                    "no database".into()
                }));
            }
            if options.dry_run {
                return Ok(Outcome::Changed("would remove the CA".into()));
            }
            delete_all(certutil, &db)?;
            Ok(Outcome::Changed("removed the CA".into()))
        }
    }
}

/// The DER of the certificate named [`NICKNAME`] in `db`, if there is one.
fn lookup(certutil: &Path, db: &str) -> Option<Vec<u8>> {
    let pem = run(Command::new(certutil).args(["-L", "-d", db, "-n", NICKNAME, "-a"])).ok()?;
    super::pem_to_der(&pem)
}

fn create(certutil: &Path, dir: &Path, db: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    run(Command::new(certutil).args(["-N", "-d", db, "--empty-password"])).map(drop)
}

fn add(certutil: &Path, db: &str, ca: &CaCert) -> Result<(), String> {
    // "C,,": a CA trusted to issue TLS server certificates, and nothing else.
    run(Command::new(certutil)
        .args(["-A", "-d", db, "-t", "C,,", "-n", NICKNAME, "-i"])
        .arg(&ca.path))
    .map(drop)
}

/// Deletes every certificate named [`NICKNAME`] (one per `certutil -D`).
fn delete_all(certutil: &Path, db: &str) -> Result<(), String> {
    for _ in 0..16 {
        if lookup(certutil, db).is_none() {
            return Ok(());
        }
        run(Command::new(certutil).args(["-D", "-d", db, "-n", NICKNAME]))?;
    }
    Err(format!("{db} still lists {NICKNAME} after 16 deletions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_ini_lists_relative_and_absolute_profiles() {
        let ini = "[Install4F96D1932A9F858E]\nDefault=abc.default-release\nLocked=1\n\n\
                   [Profile1]\nName=default\nIsRelative=1\nPath=xyz.default\nDefault=1\n\n\
                   [Profile0]\nName=work\nIsRelative=0\nPath=/data/ff/work\n\n\
                   [General]\nStartWithLastProfile=1\nVersion=2\n";
        assert_eq!(
            profiles(ini, Path::new("/home/u/.mozilla/firefox")),
            vec![
                PathBuf::from("/home/u/.mozilla/firefox/xyz.default"),
                PathBuf::from("/data/ff/work"),
            ]
        );
        // A Path before IsRelative, CRLF line ends, and a last section without a blank line.
        let ini =
            "[Profile0]\r\nPath=p0\r\nIsRelative=1\r\n[Profile1]\r\nPath=/abs\r\nIsRelative=0";
        assert_eq!(
            profiles(ini, Path::new("/b")),
            vec![PathBuf::from("/b/p0"), PathBuf::from("/abs")]
        );
        assert!(profiles("[General]\nVersion=2\n", Path::new("/b")).is_empty());
    }
}
