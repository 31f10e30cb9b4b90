//! Writing certificate material to disk so that no reader ever sees half a file.
//!
//! Every file goes through [`write_atomic`]: a temporary file in the same directory,
//! created with its final mode (0600 for keys) before any byte is written, flushed with
//! fsync, renamed over the target, and the directory fsynced so the rename survives a
//! crash. A reader (wssd's own watcher, nginx, the app) sees the old file or the new one.
//!
//! A certificate and its key are two files, and no rename replaces two files at once, so
//! pairs that wssd manages go through [`write_pair`], which uses the layout of a
//! Kubernetes Secret volume: the files live in a versioned directory, `..data` is a
//! symlink to the current version, and `cert.pem`/`key.pem` are symlinks through
//! `..data`. One rename of `..data` switches both, so a reader (and a crash at any
//! point) finds the old pair or the new pair, never one of each.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// File mode for private keys.
pub const KEY_MODE: u32 = 0o600;
/// File mode for certificates (public).
pub const CERT_MODE: u32 = 0o644;
/// Directory mode for directories holding private keys.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is open to group or others (mode {mode:03o}); wssd keeps private keys to itself. Fix: chmod {} {}",
        path.display(),
        if *dir { "700" } else { "600" },
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32, dir: bool },
    #[error(
        "{} and {} must be two different files in one directory, so that they can be replaced together",
        cert.display(),
        key.display()
    )]
    SplitPair { cert: PathBuf, key: PathBuf },
}

/// Refuses a private file (or directory) that group or others can read or enter. A path
/// that does not exist yet is fine: wssd will create it private.
pub fn check_private(path: &Path) -> Result<(), StoreError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::TooOpen {
            path: path.to_path_buf(),
            mode,
            dir: meta.is_dir(),
        });
    }
    Ok(())
}

/// Refuses a secret file that wssd reads but does not write (the fleet key) when it is
/// open to more than its owner, with one exception, PostgreSQL's for its key file: a
/// root-owned file may also be readable by its group (mode 0640 or stricter). That is
/// how an operator shares a key with a service's group, and how Kubernetes mounts a
/// Secret for a pod with `fsGroup` (root:fsGroup, 0440).
pub fn check_secret_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if secret_mode_ok(mode, meta.uid()) {
        return Ok(());
    }
    Err(StoreError::TooOpen {
        path: path.to_path_buf(),
        mode,
        dir: false,
    })
}

fn secret_mode_ok(mode: u32, owner: u32) -> bool {
    let open = if owner == 0 { 0o037 } else { 0o077 };
    mode & open == 0
}

/// Creates `dir` (and parents) if missing; a directory this creates gets `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Replaces `path` with `contents` atomically, the new file having `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path has no file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; make it exact before any secret is written.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The symlink that names the current version of a pair.
const DATA_LINK: &str = "..data";
/// Versioned directories are called `..wssd-<nanoseconds>-<n>`.
const VERSION_PREFIX: &str = "..wssd-";

/// Writes a certificate chain and its key as one unit (see the module docs). Both paths
/// must be in the same directory; they end up as symlinks into `..data/`.
pub fn write_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(), StoreError> {
    let (dir, cert_name, key_name) = pair_names(cert_path, key_path)?;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Write { path, source }
    };
    ensure_dir(&dir, PRIVATE_DIR_MODE)?;
    // A pair of plain files (written by hand, or by an older wssd) first becomes a version
    // of its own, so that turning the names into symlinks never mixes old and new.
    let linked = is_link_into_data(&dir, &cert_name) && is_link_into_data(&dir, &key_name);
    if !linked {
        if let (Ok(old_cert), Ok(old_key)) = (fs::read(cert_path), fs::read(key_path)) {
            switch_version(&dir, &cert_name, &key_name, &old_cert, &old_key)?;
        }
        for name in [&cert_name, &key_name] {
            let target = Path::new(DATA_LINK).join(name);
            let tmp = dir.join(format!(".{}.tmp-link", name.to_string_lossy()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(err(&tmp))?;
            fs::rename(&tmp, dir.join(name)).map_err(err(&dir.join(name)))?;
        }
        sync_dir(&dir)?;
    }
    let current = switch_version(&dir, &cert_name, &key_name, cert_pem, key_pem)?;
    // Older versions are no longer reachable; a failure to remove one costs only space.
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(VERSION_PREFIX) && name != current.as_os_str() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// Writes a new version directory and points `..data` at it. Returns its name.
fn switch_version(
    dir: &Path,
    cert_name: &std::ffi::OsStr,
    key_name: &std::ffi::OsStr,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<PathBuf, StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = PathBuf::from(format!(
        "{VERSION_PREFIX}{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let version = dir.join(&name);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Write { path, source }
    };
    fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(&version)
        .map_err(err(&version))?;
    let written = write_new(&version.join(key_name), key_pem, KEY_MODE)
        .and_then(|()| write_new(&version.join(cert_name), cert_pem, CERT_MODE))
        .and_then(|()| sync_dir(&version));
    if let Err(e) = written {
        // Disk full, no permission: `..data` still names the old pair; leave no debris.
        let _ = fs::remove_dir_all(&version);
        return Err(e);
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(err(&tmp))?;
    fs::rename(&tmp, dir.join(DATA_LINK)).map_err(err(&dir.join(DATA_LINK)))?;
    sync_dir(dir)?;
    Ok(name)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    result.map_err(|source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

fn is_link_into_data(dir: &Path, name: &std::ffi::OsStr) -> bool {
    fs::read_link(dir.join(name)).is_ok_and(|target| target == Path::new(DATA_LINK).join(name))
}

/// The shared directory and the two file names of a pair.
fn pair_names(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(PathBuf, std::ffi::OsString, std::ffi::OsString), StoreError> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let split = || StoreError::SplitPair {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
    };
    let dir = parent(cert_path);
    if parent(key_path) != dir {
        return Err(split());
    }
    match (cert_path.file_name(), key_path.file_name()) {
        (Some(c), Some(k)) if c != k => Ok((dir, c.to_os_string(), k.to_os_string())),
        _ => Err(split()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_its_owners_or_roots_and_its_groups() {
        for (mode, owner, ok) in [
            (0o600, 1000, true),
            (0o400, 1000, true),
            (0o640, 1000, false),
            (0o440, 0, true),
            (0o640, 0, true),
            (0o660, 0, false),
            (0o644, 0, false),
            (0o604, 1000, false),
        ] {
            assert_eq!(
                secret_mode_ok(mode, owner),
                ok,
                "{mode:03o} owned by {owner}"
            );
        }
    }

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", KEY_MODE).unwrap();
        write_atomic(&path, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }

    #[test]
    fn pairs_switch_together_through_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        // Start from plain files, as a user might leave them.
        fs::write(&cert, "old cert").unwrap();
        fs::write(&key, "old key").unwrap();
        write_pair(&cert, &key, b"cert 1", b"key 1").unwrap();
        assert_eq!(fs::read(&cert).unwrap(), b"cert 1");
        assert_eq!(fs::read(&key).unwrap(), b"key 1");
        assert!(
            fs::symlink_metadata(&cert)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        write_pair(&cert, &key, b"cert 2", b"key 2").unwrap();
        assert_eq!(fs::read(&cert).unwrap(), b"cert 2");
        assert_eq!(fs::read(&key).unwrap(), b"key 2");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let versions = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(VERSION_PREFIX)
            })
            .count();
        assert_eq!(versions, 1, "old versions are removed");
    }

    #[test]
    fn open_private_files_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        assert!(check_private(&key).is_ok(), "missing is fine");
        write_atomic(&key, b"k", KEY_MODE).unwrap();
        assert!(check_private(&key).is_ok());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&key).unwrap_err().to_string();
        assert!(
            err.contains("mode 644") && err.contains(&format!("chmod 600 {}", key.display())),
            "{err}"
        );
    }

    #[test]
    fn split_pairs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_pair(
            &dir.path().join("a/cert.pem"),
            &dir.path().join("b/key.pem"),
            b"c",
            b"k",
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::SplitPair { .. }));
    }

    #[test]
    fn write_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("key.pem");
        let err = write_atomic(&path, b"x", KEY_MODE).unwrap_err();
        assert!(err.to_string().contains("nope/key.pem"), "{err}");
    }
}
