//! The one-shot commands (`selfsigned`, `check`, `status`, `issue`, `probe`): CLI glue
//! between the library and the terminal. Each returns the process exit code, or a
//! [`CommandError`] that carries its own (2 for bad input, 1 for runtime failures).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::acme::oneshot::Responders;
use crate::cert::devca::DevCa;
use crate::cert::inspect::{CertSummary, rfc3339};
use crate::cert::pair;
use crate::cert::store::{self, CERT_MODE, KEY_MODE, PRIVATE_DIR_MODE};
use crate::config::{self, Config, Domain, KeyType, Source};
use crate::probe::{self, ProbeOptions};
use crate::provision::driver::{self, Ensured, HookRun, Issuer};
use crate::provision::store::{LocalDir, Store};
use crate::trust;
use crate::units::format_duration;

/// An error with the exit code it should produce.
#[derive(Debug)]
pub struct CommandError {
    pub code: i32,
    pub error: anyhow::Error,
}

impl CommandError {
    pub fn usage(error: impl Into<anyhow::Error>) -> CommandError {
        CommandError {
            code: 2,
            error: error.into(),
        }
    }

    pub fn runtime(error: impl Into<anyhow::Error>) -> CommandError {
        CommandError {
            code: 1,
            error: error.into(),
        }
    }
}

impl From<config::ConfigError> for CommandError {
    fn from(e: config::ConfigError) -> Self {
        CommandError::usage(e)
    }
}

pub type Outcome = Result<i32, CommandError>;

/// `wssd selfsigned`
pub fn selfsigned(
    out_dir: &Path,
    domains: Vec<Domain>,
    days: u32,
    ca_dir: Option<PathBuf>,
) -> Outcome {
    crate::tls::install_default_provider();
    let domains = if domains.is_empty() {
        config::default_dev_domains()
    } else {
        domains
    };
    let ca_dir = ca_dir.unwrap_or_else(config::default_ca_dir);
    let (ca, created) = DevCa::load_or_create(&ca_dir).map_err(|e| match e {
        crate::cert::devca::DevCaError::DefaultDir { .. } => CommandError::usage(e),
        crate::cert::devca::DevCaError::Store(_) | crate::cert::devca::DevCaError::Read { .. } => {
            CommandError::usage(
                anyhow::Error::new(e).context(format!("--ca-dir {}", ca_dir.display())),
            )
        }
        other => CommandError::runtime(other),
    })?;
    let lifetime = Duration::from_secs(u64::from(days) * 86_400);
    let issued = ca
        .issue(&domains, lifetime, KeyType::EcdsaP256)
        .map_err(CommandError::runtime)?;
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    let ca_path = out_dir.join("ca.pem");
    let write = || -> Result<(), store::StoreError> {
        store::ensure_dir(out_dir, PRIVATE_DIR_MODE)?;
        store::write_atomic(&key_path, issued.key_pem.as_bytes(), KEY_MODE)?;
        store::write_atomic(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
        store::write_atomic(&ca_path, ca.cert_pem().as_bytes(), CERT_MODE)
    };
    write().map_err(|e| {
        CommandError::usage(anyhow::Error::new(e).context("--out-dir is not writable"))
    })?;
    let leaf = pair::load_pair(
        &cert_path,
        &key_path,
        &domains,
        SystemTime::now(),
        &crate::tls::provider(),
    )
    .map_err(CommandError::runtime)?;

    let names: Vec<String> = domains.iter().map(ToString::to_string).collect();
    println!(
        "Wrote a certificate for {} (serial {}, valid until {}):",
        names.join(", "),
        leaf.summary.serial,
        rfc3339(leaf.summary.not_after)
    );
    println!(
        "  certificate  {}  (leaf, then the CA)",
        cert_path.display()
    );
    println!("  private key  {}  (mode 0600)", key_path.display());
    println!("  CA           {}", ca_path.display());
    println!();
    println!(
        "Signed by the local dev CA in {} ({}).",
        ca_dir.display(),
        if created { "created now" } else { "reused" }
    );
    println!("  SHA-256 fingerprint: {}", ca.fingerprint());
    println!();
    print_trust_instructions(&ca.cert_path());
    Ok(0)
}

/// `wssd trust` and `wssd untrust`: every store in turn, one line each.
pub fn trust(direction: trust::Direction, flags: crate::cli::TrustFlags) -> Outcome {
    crate::tls::install_default_provider();
    let ca_dir = flags.ca_dir.unwrap_or_else(config::default_ca_dir);
    let home = dirs::home_dir().ok_or_else(|| {
        CommandError::usage(anyhow::anyhow!(
            "no home directory (set HOME): the NSS databases live there"
        ))
    })?;
    let ca = match direction {
        trust::Direction::Trust => {
            let (ca, created) = DevCa::load_or_create(&ca_dir).map_err(|e| {
                CommandError::usage(
                    anyhow::Error::new(e).context(format!("--ca-dir {}", ca_dir.display())),
                )
            })?;
            println!(
                "Trusting the dev CA {} ({}; SHA-256 {})",
                ca.cert_path().display(),
                if created { "created now" } else { "reused" },
                ca.fingerprint()
            );
            Some(trust::CaCert {
                path: ca.cert_path(),
                pem: ca.cert_pem().to_string(),
                der: ca.cert_der().to_vec(),
            })
        }
        trust::Direction::Untrust => {
            // No CA is made to be removed: wssd's entries are found by their names.
            let path = ca_dir.join("ca.pem");
            println!(
                "Removing the wssd dev CA ({}) from the trust stores",
                trust::NICKNAME
            );
            std::fs::read(&path).ok().and_then(|pem| {
                Some(trust::CaCert {
                    der: trust::pem_to_der(&pem)?,
                    pem: String::from_utf8(pem).ok()?,
                    path,
                })
            })
        }
    };
    if flags.dry_run {
        println!("Dry run: nothing is changed.");
    }
    let reports = trust::apply(&trust::Options {
        direction,
        ca,
        home,
        system_root: flags.system_root,
        dry_run: flags.dry_run,
    });
    let mut failed = 0;
    for report in &reports {
        let (label, detail) = match &report.outcome {
            trust::Outcome::Changed(d) if flags.dry_run => ("to change", d),
            trust::Outcome::Changed(d) => ("changed", d),
            trust::Outcome::Unchanged(d) => ("no change", d),
            trust::Outcome::Skipped(d) => ("skipped", d),
            trust::Outcome::Failed(d) => {
                failed += 1;
                ("FAILED", d)
            }
        };
        println!("  {label:<9}  {}: {detail}", report.store);
    }
    let changed = reports
        .iter()
        .filter(|r| matches!(r.outcome, trust::Outcome::Changed(_)))
        .count();
    if failed > 0 {
        println!("{failed} store(s) could not be changed; the lines above say why.");
        return Ok(1);
    }
    if direction == trust::Direction::Trust && changed > 0 && !flags.dry_run {
        println!("Restart the browsers that were open; new ones accept wssd dev certificates now.");
    }
    Ok(0)
}

/// How to trust the dev CA on the common platforms.
pub fn print_trust_instructions(ca: &Path) {
    let ca = ca.display();
    println!("Trust the CA once, and every wssd dev certificate is accepted:");
    println!(
        "  wssd trust  (the system store, NSS for Chrome and Chromium, every Firefox profile; --dry-run shows what changes)"
    );
    println!("Or by hand:");
    println!(
        "  Debian/Ubuntu:  sudo cp {ca} /usr/local/share/ca-certificates/wssd-dev-ca.crt && sudo update-ca-certificates"
    );
    println!(
        "  Chrome/Chromium (Linux, certutil is in libnss3-tools):  mkdir -p $HOME/.pki/nssdb && {{ [ -e $HOME/.pki/nssdb/cert9.db ] || certutil -d sql:$HOME/.pki/nssdb -N --empty-password; }} && certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n \"wssd dev CA\" -i {ca}"
    );
    println!(
        "  Firefox:  Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import {ca} (or the certutil command above with -d sql:PROFILE_DIR)"
    );
    println!(
        "  macOS:  sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}"
    );
    println!(
        "  One program only:  wssd probe --ca {ca} ...   curl --cacert {ca} ...   NODE_EXTRA_CA_CERTS={ca}"
    );
}

/// `wssd check`: the config, the files it names and every start-up precondition of
/// The route table as `wssd check` prints it: longest path first, the order in which
/// requests are matched, then where every other path goes.
fn route_table(l: &crate::config::ListenerConfig) -> Vec<String> {
    let routes = crate::server::routes::Routes::new(l);
    let table: Vec<_> = routes.table().collect();
    let width = table
        .iter()
        .filter_map(|(path, _)| path.map(str::len))
        .max()
        .unwrap_or(0)
        .max("(other)".len());
    let mut lines = Vec::new();
    for (n, (path, target)) in table.into_iter().enumerate() {
        let label = if n == 0 {
            "  routes    "
        } else {
            "            "
        };
        let path = path.unwrap_or("(other)");
        let line = match target {
            None => format!("{label} {path:width$}  → 404"),
            Some(t) => {
                let upstream = t
                    .upstream
                    .as_ref()
                    .map_or_else(|| "built-in echo".to_string(), ToString::to_string);
                let origins = match t.allowed_origins.as_slice() {
                    [] => "any origin".to_string(),
                    list => list
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                format!(
                    "{label} {path:width$}  → {upstream}  (origins: {origins}; max_message_size {} bytes)",
                    t.max_message_size
                )
            }
        };
        lines.push(line);
    }
    lines
}

/// `wssd run` ([`crate::preflight`]). The first line is the verdict; the exit code agrees.
pub fn check(path: &Path) -> Outcome {
    crate::tls::install_default_provider();
    let config = Config::load(path)?;
    let mut lines = Vec::new();
    let mut problems: Vec<String> = crate::preflight::check(&config)
        .iter()
        .map(ToString::to_string)
        .collect();
    let l = &config.listener;
    match &l.upstream {
        Some(up) => lines.push(format!("  listener   wss://{} → proxy to {up}", l.bind)),
        None if l.routes.is_empty() => {
            lines.push(format!("  listener   wss://{} → built-in echo", l.bind))
        }
        None => lines.push(format!("  listener   wss://{} → routes only", l.bind)),
    }
    if !l.routes.is_empty() {
        lines.extend(route_table(l));
    }
    if !l.allowed_origins.is_empty() {
        let origins: Vec<String> = l.allowed_origins.iter().map(ToString::to_string).collect();
        lines.push(format!("  origins    {}", origins.join(", ")));
    }
    lines.push(format!(
        "  limits     max_connections {}, handshake_timeout {}, idle_timeout {}, max_message_size {} bytes, drain_timeout {}",
        l.max_connections,
        format_duration(l.handshake_timeout),
        format_duration(l.idle_timeout),
        l.max_message_size,
        format_duration(l.drain_timeout)
    ));
    for (index, cert) in config.certificates.iter().enumerate() {
        lines.push(format!(
            "  certificate[{index}] {} from {}",
            cert.domain_list(),
            cert.source
        ));
        lines.push(format!(
            "             cert {}  key {}",
            cert.cert_file.display(),
            cert.key_file.display()
        ));
        let now = SystemTime::now();
        lines.push(
            match pair::load_pair(
                &cert.cert_file,
                &cert.key_file,
                &cert.domains,
                now,
                &crate::tls::provider(),
            ) {
                Ok(p) => format!(
                    "             serial {}, expires {} ({} days left)",
                    p.summary.serial,
                    rfc3339(p.summary.not_after),
                    p.summary.days_left(now)
                ),
                Err(e) if cert.source == Source::Files => {
                    problems.push(format!("certificate[{index}]: {e}"));
                    format!("             INVALID: {e}")
                }
                Err(e) if e.is_missing() => {
                    "             not issued yet: `wssd run` or `wssd issue` will issue it".into()
                }
                Err(e) => format!("             will be re-issued: {e}"),
            },
        );
    }
    if let Some(admin) = &config.admin {
        let drain = if admin.drain_endpoint {
            " (/drain on)"
        } else {
            ""
        };
        lines.push(format!("  admin      http://{}{drain}", admin.bind));
    }
    if let Some(cluster) = &config.cluster {
        lines.push(format!(
            "  cluster    {} on etcd {} (lease_ttl {})",
            cluster.name,
            cluster.endpoints.join(", "),
            format_duration(cluster.lease_ttl)
        ));
    }
    match problems.len() {
        0 => println!("{}: configuration is valid", path.display()),
        n => println!(
            "{}: INVALID ({n} problem{}; `wssd run` would refuse to start)",
            path.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
    for line in lines {
        println!("{line}");
    }
    for problem in &problems {
        println!("  problem    {problem}");
    }
    match problems.first() {
        Some(first) => Err(CommandError::usage(anyhow::anyhow!(
            "{}: {first}",
            path.display()
        ))),
        None => Ok(0),
    }
}

#[derive(Serialize)]
struct StatusEntry {
    index: usize,
    source: String,
    domains: Vec<String>,
    cert_file: PathBuf,
    key_file: PathBuf,
    serial: Option<String>,
    not_after: Option<String>,
    days_left: Option<i64>,
    next_renewal: Option<String>,
    renewal_reason: Option<String>,
    /// Failed attempts in a row (ACME).
    failures: u32,
    last_error: Option<String>,
    error: Option<String>,
    /// In fleet mode: the lock holder, the engine's pair, every replica's serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<crate::cluster::view::CertView>,
}

/// `wssd status`
pub async fn status(path: &Path, json: bool) -> Outcome {
    crate::tls::install_default_provider();
    // A missing file is what status is for: report it rather than refuse.
    let config = Config::parse_file(path)?;
    let now = SystemTime::now();
    // The fleet, as the engine sees it now.
    let mut fleet_views = match &config.cluster {
        Some(cluster) => {
            let fleet = crate::cluster::join(
                cluster,
                std::sync::Arc::new(crate::metrics::Metrics::default()),
            )
            .map_err(CommandError::runtime)?;
            crate::cluster::view::view(&fleet, &config.certificates)
                .await
                .into_iter()
                .map(Some)
                .collect()
        }
        None => Vec::new(),
    }
    .into_iter();
    let mut entries = Vec::new();
    for (index, cert) in config.certificates.iter().enumerate() {
        let loaded = pair::load_pair(
            &cert.cert_file,
            &cert.key_file,
            &cert.domains,
            now,
            &crate::tls::provider(),
        );
        let summary: Option<&CertSummary> = loaded.as_ref().ok().map(|p| &p.summary);
        let renew_before = config.acme.as_ref().and_then(|a| a.renew_before);
        // What the renewal loop (or the last `wssd issue`) decided, when there is a record.
        let recorded = (cert.source == Source::Acme)
            .then(|| {
                crate::provision::state::load_state(&config.data_dir).remove(&cert.domain_list())
            })
            .flatten();
        // A record about another certificate (renewed since) is out of date.
        let recorded = recorded.filter(|r| r.serial == summary.map(|s| s.serial.clone()));
        let (next_renewal, renewal_reason) = match (cert.source, summary, &recorded) {
            (Source::Files, _, _) => (None, Some("files are renewed outside wssd".to_string())),
            (Source::Acme, _, Some(state)) if state.reason.is_some() => {
                (state.next_attempt.clone(), state.reason.clone())
            }
            (_, None, _) => (
                Some(rfc3339(now)),
                Some("missing or invalid: issued at the next run".to_string()),
            ),
            (source, Some(s), _) => {
                // As the renewal loops plan it: ACME with renew_before and the serial's
                // point in the window, the dev CA at the start of the last third.
                let (before, jitter) = if source == Source::Acme {
                    (
                        renew_before,
                        crate::provision::schedule::jitter_for(&s.serial),
                    )
                } else {
                    (None, 0.0)
                };
                let (at, reason) = crate::provision::schedule::plan(
                    s.not_before,
                    s.not_after,
                    before,
                    None,
                    jitter,
                );
                (Some(rfc3339(at.max(now))), Some(reason.to_string()))
            }
        };
        entries.push(StatusEntry {
            index,
            source: cert.source.to_string(),
            domains: cert.domains.iter().map(ToString::to_string).collect(),
            cert_file: cert.cert_file.clone(),
            key_file: cert.key_file.clone(),
            serial: summary.map(|s| s.serial.clone()),
            not_after: summary.map(|s| rfc3339(s.not_after)),
            days_left: summary.map(|s| s.days_left(now)),
            next_renewal,
            renewal_reason,
            failures: recorded.as_ref().map_or(0, |r| r.failures),
            last_error: recorded.and_then(|r| r.last_error),
            error: loaded.as_ref().err().map(ToString::to_string),
            fleet: fleet_views.next().flatten(),
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&entries).map_err(CommandError::runtime)?;
        println!("{text}");
        return Ok(0);
    }
    for e in &entries {
        println!(
            "certificate[{}] {} ({})",
            e.index,
            e.domains.join(", "),
            e.source
        );
        match (&e.serial, &e.error) {
            (Some(serial), _) => println!(
                "  serial {serial}, expires {} ({} days left)",
                e.not_after.as_deref().unwrap_or("?"),
                e.days_left.unwrap_or_default()
            ),
            (None, Some(err)) => println!("  not servable: {err}"),
            _ => {}
        }
        if let Some(last) = &e.last_error {
            println!("  {} failed attempt(s); last: {last}", e.failures);
        }
        if let Some(next) = &e.next_renewal {
            println!(
                "  next renewal {next} ({})",
                e.renewal_reason.as_deref().unwrap_or("")
            );
        } else if let Some(reason) = &e.renewal_reason {
            println!("  {reason}");
        }
        if let Some(fleet) = &e.fleet {
            print_fleet(fleet);
        }
    }
    Ok(0)
}

fn print_fleet(fleet: &crate::cluster::view::CertView) {
    if fleet.engine != "up" {
        println!("  fleet: engine {}", fleet.engine);
        return;
    }
    let published = match (&fleet.published_serial, &fleet.published_by) {
        (Some(serial), Some(by)) => format!("serial {serial} (published by {by})"),
        _ => "nothing yet".into(),
    };
    println!(
        "  fleet: engine up; lock {}; in the engine: {published}",
        fleet
            .holder
            .as_deref()
            .map_or("free".to_string(), |h| format!("held by {h}"))
    );
    for r in &fleet.replicas {
        let serving = if r.serial.is_empty() {
            "nothing".to_string()
        } else if Some(&r.serial) == fleet.published_serial.as_ref() {
            format!("serial {} (the fleet's)", r.serial)
        } else {
            format!("serial {} (not the fleet's)", r.serial)
        };
        println!("    replica {} serves {serving}", r.replica);
    }
    if let Some(f) = &fleet.failing {
        println!(
            "    the fleet's last attempt (by {}) failed, {} in a row: {}; next attempt {}",
            f.by,
            f.failures,
            f.last_error.as_deref().unwrap_or("no detail"),
            f.next_attempt.as_deref().unwrap_or("when due")
        );
    }
}

/// `wssd issue`
pub async fn issue(path: &Path) -> Outcome {
    crate::tls::install_default_provider();
    let config = Config::load(path)?;
    let now = SystemTime::now();
    let mut all_good = true;
    let dev_ca = Issuer::DevCa {
        ca_dir: config.ca_dir.clone(),
    };
    // In a fleet, the pass takes each certificate's lock and publishes to the engine
    // like any replica, and its http-01 answers are where every replica finds them.
    let fleet = match &config.cluster {
        Some(cluster) => Some(
            crate::cluster::join(
                cluster,
                std::sync::Arc::new(crate::metrics::Metrics::default()),
            )
            .map_err(CommandError::runtime)?,
        ),
        None => None,
    };
    let store: Box<dyn Store> = match &fleet {
        Some(fleet) => Box::new(crate::cluster::store::FleetStore {
            fleet: fleet.clone(),
            certificates: config.certificates.clone(),
        }),
        None => Box::new(LocalDir),
    };
    let shared = fleet.as_ref().map(crate::cluster::acme_shares);
    let acme = Responders::new(&config, shared)
        .map_err(CommandError::runtime)?
        .map(|responders| Issuer::Acme {
            acme: responders.acme().clone(),
            responders: Some(std::sync::Arc::new(responders)),
        });
    // One pass for each certificate wssd obtains itself, all at once; the results print
    // in order.
    let store = &*store;
    let passes = config.certificates.iter().enumerate().map(|(index, cert)| {
        let issuer = match cert.source {
            Source::Selfsigned => Some(&dev_ca),
            Source::Acme => acme.as_ref(),
            Source::Files => None,
        };
        async move {
            match issuer {
                Some(issuer) => {
                    Some(driver::ensure(index, cert, issuer, store, HookRun::Wait).await)
                }
                None => None,
            }
        }
    });
    let results = futures_util::future::join_all(passes).await;
    for ((index, cert), result) in config.certificates.iter().enumerate().zip(results) {
        let domains = cert.domain_list();
        match result {
            Some(Ok(Ensured::Issued { summary, hook })) => {
                println!(
                    "certificate[{index}] {domains}: issued serial {} (expires {})",
                    summary.serial,
                    rfc3339(summary.not_after)
                );
                if let Err(e) = hook {
                    eprintln!("certificate[{index}] {domains}: {e}");
                }
            }
            Some(Ok(Ensured::Fresh {
                summary,
                at,
                reason,
            })) => println!(
                "certificate[{index}] {domains}: valid until {}, not due (renews from {}: {reason})",
                rfc3339(summary.not_after),
                rfc3339(at)
            ),
            Some(Err(e)) => {
                all_good = false;
                eprintln!("certificate[{index}] {domains}: {e}");
            }
            None => match pair::load_pair(
                &cert.cert_file,
                &cert.key_file,
                &cert.domains,
                now,
                &crate::tls::provider(),
            ) {
                Ok(p) => println!(
                    "certificate[{index}] {domains}: files, valid until {}",
                    rfc3339(p.summary.not_after)
                ),
                Err(e) => {
                    all_good = false;
                    eprintln!("certificate[{index}] {domains}: {e}");
                }
            },
        }
    }
    Ok(if all_good { 0 } else { 1 })
}

/// `wssd probe`
pub async fn probe(opts: ProbeOptions, json: bool) -> Outcome {
    crate::tls::install_default_provider();
    probe::check_options(&opts).map_err(|e| CommandError::usage(anyhow::anyhow!(e)))?;
    let report = probe::probe(&opts).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(CommandError::runtime)?
        );
    } else {
        print!("{}", report.render());
    }
    if report.ok() {
        Ok(0)
    } else {
        if json {
            eprintln!(
                "wssd probe: {}",
                report.error.as_deref().unwrap_or("failed")
            );
        }
        Ok(1)
    }
}
