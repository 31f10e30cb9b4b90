//! Deploy hooks: the user's command, run after wssd writes a new certificate, so that
//! other programs using the same files can pick it up (`systemctl reload my-app`).
//!
//! The hook runs through `sh -c` with `WSSD_DOMAINS` (comma-separated), `WSSD_CERT_FILE`
//! and `WSSD_KEY_FILE` in its environment. A failing hook is reported with its exit
//! status and the tail of its stderr; it never undoes the certificate, which is already
//! written and served.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::CertificateConfig;

/// How long a hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start deploy hook {hook:?}: {source}")]
    Start {
        hook: String,
        source: std::io::Error,
    },
    #[error("deploy hook {hook:?} failed ({status}){}", stderr_suffix(stderr))]
    Failed {
        hook: String,
        status: String,
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Runs `cert`'s deploy hook, if it has one, and waits for it (blocking).
pub fn run_deploy_hook(cert: &CertificateConfig) -> Result<(), HookError> {
    let Some(hook) = &cert.deploy_hook else {
        return Ok(());
    };
    let start = |source| HookError::Start {
        hook: hook.clone(),
        source,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("WSSD_DOMAINS", cert.domain_list())
        .env("WSSD_CERT_FILE", &cert.cert_file)
        .env("WSSD_KEY_FILE", &cert.key_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop everything the hook started.
        .process_group(0)
        .spawn()
        .map_err(start)?;
    // Read stderr on the side so a chatty hook cannot fill the pipe and stall. A hook
    // that leaves a background process holding the pipe must not hold wssd: the text is
    // taken from a channel with a deadline, and the reader thread is left to finish.
    let mut pipe = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.read_to_string(&mut text);
        }
        let _ = tx.send(text);
    });
    let deadline = Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(start)? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => break status.to_string(),
            None if Instant::now() >= deadline => {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after {}s", HOOK_TIMEOUT.as_secs());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stderr = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(1000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(HookError::Failed {
        hook: hook.clone(),
        status,
        stderr: tail,
    })
}

/// Runs `cert`'s deploy hook in the background (a slow hook must hold up neither
/// start-up nor renewal); the outcome is logged, a failure never fatal.
pub fn spawn_deploy_hook(index: usize, cert: &CertificateConfig) {
    if cert.deploy_hook.is_none() {
        return;
    }
    let cert = cert.clone();
    tokio::spawn(async move {
        let domains = cert.domain_list();
        match tokio::task::spawn_blocking(move || run_deploy_hook(&cert)).await {
            Ok(Ok(())) => {
                tracing::info!(event = "deploy_hook_ran", certificate = index, %domains, "deploy hook ran")
            }
            Ok(Err(e)) => {
                tracing::warn!(event = "deploy_hook_failed", certificate = index, %domains, error = %e, "deploy hook failed")
            }
            Err(e) => tracing::warn!(certificate = index, error = %e, "deploy hook task failed"),
        }
    });
}
