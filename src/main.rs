//! The `wssd` binary: parse the command line, run the command, map the result to the
//! exit code (0 ok, 1 runtime failure, 2 usage or configuration error).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use wssd::cli::{Cli, Command, LogFormat};
use wssd::commands::{self, CommandError, Outcome};
use wssd::config::{self, Config};
use wssd::probe::ProbeOptions;

/// jemalloc rather than the system allocator: its background thread hands memory freed by
/// closed connections back to the system within seconds (glibc keeps the peak of
/// thousands of connections resident), and it fragments less under many small buffers.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object per line, event fields at the top level.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        // https://no-color.org: set and not empty, no colour whatever the terminal.
        LogFormat::Text => logs.with_ansi(colour()).init(),
    }
    let json = cli.log_format == LogFormat::Json;

    let outcome = match cli.command {
        Command::Run { config, sidecar } => run(config.as_deref(), sidecar.overrides()),
        Command::Selfsigned {
            out_dir,
            domains,
            days,
            ca_dir,
        } => commands::selfsigned(&out_dir, domains, days, ca_dir),
        Command::Issue { config } => config_file(config)
            .and_then(|config| runtime().and_then(|rt| rt.block_on(commands::issue(&config)))),
        Command::Check { config } => {
            config_file(config).and_then(|config| commands::check(&config))
        }
        Command::Status { config, json } => config_file(config).and_then(|config| {
            runtime().and_then(|rt| rt.block_on(commands::status(&config, json)))
        }),
        Command::Probe {
            url,
            ca,
            insecure,
            send,
            timeout,
            json,
            expect_days,
            origin,
            headers,
            connect_to,
        } => runtime().and_then(|rt| {
            rt.block_on(commands::probe(
                ProbeOptions {
                    url,
                    ca,
                    insecure,
                    send,
                    timeout,
                    expect_days,
                    origin,
                    headers,
                    connect_to,
                },
                json,
            ))
        }),
        Command::Trust { stores } => commands::trust(wssd::trust::Direction::Trust, stores),
        Command::Untrust { stores } => commands::trust(wssd::trust::Direction::Untrust, stores),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "wssd", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => wssd::cli::manual(&mut std::io::stdout())
            .map(|()| 0)
            .map_err(CommandError::runtime),
    };
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        Err(CommandError { code, error }) => {
            if json {
                // Like every other line a collector reads from wssd: one JSON object.
                let line = serde_json::json!({
                    "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                    "level": "ERROR",
                    "message": describe(&error),
                    "exit_code": code,
                    "target": "wssd",
                });
                eprintln!("{line}");
            } else {
                eprintln!("wssd: error: {}", describe(&error));
            }
            ExitCode::from(code as u8)
        }
    }
}

/// The error and its causes on one line, each said once: most messages already quote
/// their cause ("cannot read FILE: No such file or directory"), so a cause whose text is
/// already there is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The config file a command reads: `--config`, else ./wssd.toml, which must then exist.
fn config_file(given: Option<std::path::PathBuf>) -> Result<std::path::PathBuf, CommandError> {
    match given {
        Some(path) => Ok(path),
        None => {
            let default_file = Path::new(config::DEFAULT_CONFIG_FILE);
            if default_file.exists() {
                Ok(default_file.to_path_buf())
            } else {
                Err(CommandError::usage(anyhow::anyhow!(
                    "no --config given and no ./{} in {}; pass --config FILE",
                    config::DEFAULT_CONFIG_FILE,
                    std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .unwrap_or_else(|_| "this directory".into())
                )))
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CommandError::runtime)
}

fn run(config_path: Option<&Path>, flags: config::Overrides) -> Outcome {
    let default_file = Path::new(config::DEFAULT_CONFIG_FILE);
    // A flag naming a file that is not there is a usage error, before anything starts.
    for (flag, path) in [
        ("--cert-file", &flags.cert_file),
        ("--key-file", &flags.key_file),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(CommandError::usage(anyhow::anyhow!(
                "{flag} {}: {e}",
                path.display()
            )));
        }
    }
    let config = match config_path {
        Some(path) => Config::load(path)?,
        None if default_file.exists() => Config::load(default_file)?,
        None => Config::dev_mode(),
    }
    .with_overrides(flags);
    let rt = runtime()?;
    let result = rt.block_on(wssd::agent::run(config, announce));
    // Blocking work still running (a slow deploy hook) must not delay the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map_err(CommandError::runtime)?;
    Ok(0)
}

/// The names of the certificate wssd serves first: the configured ones, or, for a pair
/// from `--cert-file` without `--domain`, those in the certificate (so that the printed
/// probe line verifies against it).
fn names_served(cert: &wssd::config::CertificateConfig) -> Vec<wssd::config::Domain> {
    use wssd::config::Domain;
    if !cert.domains.is_empty() {
        return cert.domains.clone();
    }
    let Ok(pem) = std::fs::read(&cert.cert_file) else {
        return Vec::new();
    };
    let leaf: Option<pki_types::CertificateDer<'static>> =
        pki_types::pem::PemObject::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok);
    let Some(summary) = leaf.and_then(|der| wssd::cert::inspect::CertSummary::from_der(&der).ok())
    else {
        return Vec::new();
    };
    let dns = summary.dns_names.into_iter().map(Domain::Dns);
    dns.chain(summary.ip_addresses.into_iter().map(Domain::Ip))
        .collect()
}

/// Without a config file (dev mode, or a sidecar from flags), tell the user what to do
/// next: the URL, the CA to trust, and a probe command that works as printed.
fn announce(addr: std::net::SocketAddr, config: &Config) {
    use wssd::config::{Domain, Source};
    if config.file.is_some() {
        return;
    }
    let Some(cert) = config.certificates.first() else {
        return;
    };
    let names = names_served(cert);
    let host = match names.first() {
        Some(Domain::Ip(std::net::IpAddr::V6(ip))) => format!("[{ip}]"),
        Some(Domain::Ip(ip)) => ip.to_string(),
        Some(Domain::Dns(name)) => name.replacen("*.", "www.", 1),
        None => "localhost".into(),
    };
    let url = format!("wss://{host}:{}/", addr.port());
    match &config.listener.upstream {
        None => {
            println!("wssd dev mode: built-in echo at {url}");
            println!(
                "  test page:    https://{host}:{}/ in a browser",
                addr.port()
            );
        }
        Some(upstream) => println!(
            "wssd sidecar: https://{host}:{}/ and {url} proxied to {upstream}",
            addr.port()
        ),
    }
    // A name without DNS yet is reached through the address wssd listens on.
    let connect_to = match names.first() {
        Some(Domain::Dns(name)) if name != "localhost" => {
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            format!(
                " --connect-to {}",
                std::net::SocketAddr::new(ip, addr.port())
            )
        }
        _ => String::new(),
    };
    let send = if config.listener.upstream.is_none() {
        " --send hi"
    } else {
        ""
    };
    if cert.source == Source::Selfsigned {
        let ca = config.ca_dir.join("ca.pem");
        let ca = std::fs::canonicalize(&ca).unwrap_or(ca);
        println!("  CA to trust:  {}", ca.display());
        println!("  trust it:     wssd trust  (once: system store, Chrome/Chromium, Firefox)");
        println!(
            "  try it:       wssd probe --ca {}{send}{connect_to} {url}",
            ca.display()
        );
    } else {
        println!("  try it:       wssd probe{send}{connect_to} {url}");
    }
    println!("  stop with Ctrl-C; configure with ./wssd.toml (see README.md)");
}
