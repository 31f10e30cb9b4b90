//! Noticing that certificate files changed, and driving the reloader.
//!
//! notify watches the *parent directory* of every `cert_file`/`key_file`, never the file
//! itself: an atomic rename over the file, delete + recreate, and the Kubernetes Secret
//! update (a new timestamped directory, then `..data_tmp` renamed over `..data`) all
//! replace the inode, and a watch on the old inode would see none of it. An event counts
//! when it names a watched file, or a `..`-prefixed entry (the Kubernetes machinery).
//!
//! notify calls back on its own thread; the callback only maps the event to certificate
//! slots and sends a request into the reload task's channel. The task debounces (one
//! rename produces several events), reloads, and retries a pair that looks half-written
//! (the certificate renamed in, the key not yet) on a short schedule before it reports a
//! failure, so a writer's normal sequence never shows up as an error. SIGHUP and the
//! provisioners send requests into the same channel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::reloader::{Reloaded, Reloader};
use crate::cert::pair::PairError;

/// Events closer together than this are one change.
/// (A rename or a Secret update makes its events within microseconds; a new certificate
/// should be served within milliseconds of landing.)
const DEBOUNCE: Duration = Duration::from_millis(2);
/// Retry delays for a pair that may be mid-write (about two seconds in all); after the
/// last, the failure is final.
const RETRIES: [Duration; 8] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// The longest one reload attempt may take. Reading a pair takes microseconds; a file on
/// a hung network mount could take forever, and the reload task (and with it SIGHUP's
/// READY=1) must not wait on it.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the file watcher: {0}")]
    Start(notify::Error),
    #[error("cannot watch directory {}: {source}", dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}

#[derive(Debug)]
enum Request {
    /// Every slot, now; the sender (if any) hears when the first attempt at each is done.
    All(&'static str, Option<tokio::sync::oneshot::Sender<()>>),
    Slot(usize, &'static str),
}

/// Asks the reload task to re-read certificates.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl ReloadHandle {
    /// Re-reads every certificate now.
    pub fn reload_all(&self, reason: &'static str) {
        let _ = self.tx.send(Request::All(reason, None));
    }

    /// Re-reads every certificate now and returns once each has been tried (SIGHUP, so
    /// that systemd hears READY=1 only after the reload).
    pub async fn reload_all_and_wait(&self, reason: &'static str) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Request::All(reason, Some(done))).is_ok() {
            let _ = wait.await;
        }
    }

    /// Re-reads one certificate (after a provisioner wrote it).
    pub fn reload_slot(&self, index: usize, reason: &'static str) {
        let _ = self.tx.send(Request::Slot(index, reason));
    }
}

/// Starts the reload task (and, when `watch_files`, the file watcher). The task ends on
/// `shutdown`.
pub fn spawn(
    reloader: Arc<Reloader>,
    watch_files: bool,
    shutdown: CancellationToken,
) -> Result<ReloadHandle, WatchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = if watch_files {
        Some(start_watcher(&reloader, tx.clone())?)
    } else {
        None
    };
    tokio::spawn(async move {
        // The watcher stops when dropped: keep it alive as long as the task.
        let _watcher = watcher;
        reload_loop(reloader, rx, shutdown).await;
    });
    Ok(ReloadHandle { tx })
}

/// Which slots a file in a watched directory belongs to.
struct WatchedDir {
    files: Vec<(std::ffi::OsString, usize)>,
    slots: Vec<usize>,
}

fn start_watcher(
    reloader: &Reloader,
    tx: mpsc::UnboundedSender<Request>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let mut dirs: HashMap<PathBuf, WatchedDir> = HashMap::new();
    for (index, cert) in reloader.certificates().iter().enumerate() {
        for path in [&cert.cert_file, &cert.key_file] {
            let (dir, name) = split(path);
            let entry = dirs.entry(dir).or_insert_with(|| WatchedDir {
                files: Vec::new(),
                slots: Vec::new(),
            });
            entry.files.push((name, index));
            if !entry.slots.contains(&index) {
                entry.slots.push(index);
            }
        }
    }
    let dirs = Arc::new(dirs);
    let table = dirs.clone();
    let metrics = reloader.metrics().clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "file watcher error");
                return;
            }
        };
        // Opening a file for reading (our own reloads do) is not a change.
        if matches!(event.kind, EventKind::Access(AccessKind::Open(_))) {
            return;
        }
        metrics.watcher_event();
        // The kernel's event queue overflowed: anything may have changed.
        if event.need_rescan() {
            for slot in table.values().flat_map(|w| &w.slots) {
                let _ = tx.send(Request::Slot(*slot, "file change"));
            }
            return;
        }
        for path in &event.paths {
            let (dir, name) = split(path);
            let Some(watched) = table.get(&dir) else {
                continue;
            };
            if name.to_string_lossy().starts_with("..") {
                for slot in &watched.slots {
                    let _ = tx.send(Request::Slot(*slot, "file change"));
                }
            } else {
                for (file, slot) in &watched.files {
                    if *file == name {
                        let _ = tx.send(Request::Slot(*slot, "file change"));
                    }
                }
            }
        }
    })
    .map_err(WatchError::Start)?;
    for dir in dirs.keys() {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        debug!(dir = %dir.display(), "watching");
    }
    Ok(watcher)
}

/// The absolute directory and the file name of `path`. Absolute, because notify reports
/// events under absolute paths even for a relative watch, and the two must compare equal.
fn split(path: &Path) -> (PathBuf, std::ffi::OsString) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    (dir, name)
}

struct Pending {
    due: Instant,
    attempt: usize,
    reason: &'static str,
    /// When the files were first seen changing (for the file-to-served histogram); not
    /// set for reloads asked for (SIGHUP, start-up).
    changed_at: Option<Instant>,
}

async fn reload_loop(
    reloader: Arc<Reloader>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
) {
    let slots = reloader.certificates().len();
    let mut pending: HashMap<usize, Pending> = HashMap::new();
    let mut refused: HashMap<usize, Refusal> = HashMap::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            request = rx.recv() => {
                let Some(request) = request else { return };
                match request {
                    Request::All(reason, done) => {
                        // Asked for explicitly (SIGHUP, start-up): every refusal is reported.
                        refused.clear();
                        for index in 0..slots {
                            pending.remove(&index);
                            attempt(&reloader, &mut pending, &mut refused, index, Pending { due: Instant::now(), attempt: 0, reason, changed_at: None }).await;
                        }
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    Request::Slot(index, reason) if index < slots => {
                        // Each event pushes the attempt back (debounce); the clock of the
                        // change starts at the first.
                        let now = Instant::now();
                        let changed_at = pending.get(&index).and_then(|p| p.changed_at).unwrap_or(now);
                        pending.insert(index, Pending { due: now + DEBOUNCE, attempt: 0, reason, changed_at: Some(changed_at) });
                    }
                    Request::Slot(..) => {}
                }
            }
            _ = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                let due: Vec<usize> = pending.iter().filter(|(_, p)| p.due <= now).map(|(i, _)| *i).collect();
                for index in due {
                    let Some(p) = pending.remove(&index) else { continue };
                    attempt(&reloader, &mut pending, &mut refused, index, p).await;
                }
            }
        }
    }
}

/// A final refusal, as reported: the error and the files it was about.
#[derive(PartialEq, Eq)]
struct Refusal {
    error: String,
    files: Option<[FileStamp; 2]>,
}

/// Which version of a file was read: a rename-over changes the inode, an in-place write
/// the modification time or the length.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        len: m.len(),
    })
}

/// One reload attempt of slot `index`; a pair that may be mid-write goes back into
/// `pending` for a retry, a final failure is reported, once: one write to a file can
/// arrive as several events (a rename is seen as from, to and both), and the same
/// untouched files refused again are not news.
async fn attempt(
    reloader: &Arc<Reloader>,
    pending: &mut HashMap<usize, Pending>,
    refused: &mut HashMap<usize, Refusal>,
    index: usize,
    p: Pending,
) {
    let worker = reloader.clone();
    let reading = tokio::task::spawn_blocking(move || {
        // Stamped before reading: a write after the stamp makes the next refusal new.
        let files = worker
            .certificates()
            .get(index)
            .and_then(|c| Some([stamp(&c.cert_file)?, stamp(&c.key_file)?]));
        (worker.reload(index, p.reason), files)
    });
    let result = match tokio::time::timeout(ATTEMPT_DEADLINE, reading).await {
        Ok(result) => result,
        // The blocking read goes on in its thread; its result, if it ever comes, is dropped.
        Err(_) => {
            let Some(config) = reloader.certificates().get(index) else {
                return;
            };
            Ok((
                Err(PairError::TimedOut {
                    cert: config.cert_file.clone(),
                    key: config.key_file.clone(),
                    seconds: ATTEMPT_DEADLINE.as_secs(),
                }),
                None,
            ))
        }
    };
    match result {
        Ok((Ok(reloaded), _)) => {
            refused.remove(&index);
            if let (Reloaded::Swapped(_), Some(changed_at)) = (reloaded, p.changed_at) {
                reloader
                    .metrics()
                    .file_change_served(index, changed_at.elapsed().as_secs_f64());
            }
        }
        Ok((Err(error), _)) if error.may_be_mid_write() && p.attempt < RETRIES.len() => {
            debug!(certificate = index, error = %error, "pair not ready; retrying");
            pending.insert(
                index,
                Pending {
                    due: Instant::now() + RETRIES[p.attempt],
                    attempt: p.attempt + 1,
                    reason: p.reason,
                    changed_at: p.changed_at,
                },
            );
        }
        Ok((Err(error), files)) => {
            let refusal = Refusal {
                error: error.to_string(),
                files,
            };
            if files.is_some() && refused.get(&index) == Some(&refusal) {
                debug!(certificate = index, error = %error, "same files refused again");
            } else {
                reloader.refused(index, &error);
                refused.insert(index, refusal);
            }
        }
        Err(join) => warn!(certificate = index, error = %join, "reload task failed"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
