//! The command line (clap). The single source of truth for flags and their help; later
//! also the source of the man page and shell completions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Domain;

/// `0.1.0 (git 1a2b3c4d5e6f)`: the version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("WSSD_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "wssd",
    version = VERSION,
    about = "Certificates that manage themselves, and a WSS listener that hot-swaps them",
    long_about = "wssd obtains TLS certificates (ACME or a local dev CA), keeps them on disk, watches them, \
and serves wss:// with them, proxying WebSocket upgrades to a plain ws:// upstream (or echoing). \
Certificates are swapped without dropping a live connection.\n\n\
Run `wssd run` with no arguments for the zero-config dev mode."
)]
pub struct Cli {
    /// Log lines as text (for people) or JSON (one object per line, for collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The agent: provision, watch, serve. With no config and no ./wssd.toml: dev mode.
    #[command(after_help = RUN_EXAMPLES)]
    Run {
        /// Config file (default: ./wssd.toml when present, else the zero-config dev mode).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        sidecar: SidecarFlags,
    },
    /// Issue a certificate from the local dev CA (made on first use, then reused).
    #[command(after_help = SELFSIGNED_EXAMPLES)]
    Selfsigned {
        /// Where to write cert.pem (leaf, then CA), key.pem (0600) and ca.pem.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// A DNS name or IP address to cover; repeat for more
        /// [default: localhost, 127.0.0.1, ::1].
        #[arg(long = "domain", value_name = "NAME", value_parser = parse_domain)]
        domains: Vec<Domain>,
        /// Validity of the leaf in days.
        #[arg(long, default_value_t = 90, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=825))]
        days: u32,
        /// The dev CA's directory [default: the platform data dir, e.g. ~/.local/share/wssd/ca].
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
    },
    /// One provisioning pass: obtain or renew what is missing or due, then exit.
    #[command(after_help = ISSUE_EXAMPLES)]
    Issue {
        /// Config file [default: ./wssd.toml].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Connect to a wss:// (or ws://) URL and report TLS, certificate, upgrade and echo.
    #[command(after_help = PROBE_EXAMPLES)]
    Probe {
        /// The URL, e.g. wss://localhost:8443/
        url: String,
        /// Trust the CA certificates in this PEM file instead of the system's.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Do not verify the server's certificate (it is still shown).
        #[arg(long)]
        insecure: bool,
        /// Send this text message and expect it back.
        #[arg(long, value_name = "TEXT")]
        send: Option<String>,
        /// Give up after this long, e.g. 5s.
        #[arg(long, default_value = "10s", value_name = "DUR", value_parser = parse_duration)]
        timeout: Duration,
        /// Print one JSON object instead of the human report.
        #[arg(long)]
        json: bool,
        /// Fail (exit 1) when the served certificate expires within N days: a ready
        /// monitoring check for cron or Nagios.
        #[arg(long, value_name = "N")]
        expect_days: Option<u32>,
        /// Send this Origin with the upgrade, as a browser on that page would (servers with
        /// allowed_origins refuse a missing or unknown one with 403).
        #[arg(long, value_name = "ORIGIN")]
        origin: Option<String>,
        /// Add a request header to the upgrade, e.g. 'Authorization: Bearer x'; repeat for more.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = crate::probe::parse_header)]
        headers: Vec<(String, String)>,
        /// Connect to HOST:PORT instead of the URL's host and port; the TLS name and Host
        /// stay the URL's (test a name before its DNS points here).
        #[arg(long, value_name = "HOST:PORT", value_parser = crate::probe::parse_connect_to)]
        connect_to: Option<(String, u16)>,
    },
    /// Validate a config and the files it names; print what would run.
    #[command(after_help = CHECK_EXAMPLES)]
    Check {
        /// Config file [default: ./wssd.toml].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Install the dev CA into the system store, NSS (Chrome, Chromium) and every Firefox
    /// profile, so that browsers and clients accept dev certificates.
    #[command(after_help = TRUST_EXAMPLES)]
    Trust {
        #[command(flatten)]
        stores: TrustFlags,
    },
    /// Remove the dev CA from the stores `wssd trust` installs it into.
    #[command(after_help = UNTRUST_EXAMPLES)]
    Untrust {
        #[command(flatten)]
        stores: TrustFlags,
    },
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to write completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output: `wssd man | man -l -`.
    #[command(after_help = MAN_EXAMPLES)]
    Man,
    /// Inventory: each certificate, its source, domains, serial, expiry, next renewal.
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        /// Config file [default: ./wssd.toml].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The flags of `wssd trust` and `wssd untrust`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustFlags {
    /// Say what would change in each store, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The dev CA's directory [default: the platform data dir, e.g. ~/.local/share/wssd/ca].
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Change the system store's files under DIR instead of / (an image being built, a
    /// test); the NSS databases are the home directory's ($HOME) either way.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub system_root: PathBuf,
}

/// `wssd run`'s flags for a sidecar without a config file; with one, they override it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SidecarFlags {
    /// Listen on ADDR instead of [listener] bind: IP:PORT, or localhost:PORT for both
    /// loopbacks [default: localhost:8443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<crate::config::Listen>,
    /// Proxy every request (pages, API, WebSocket upgrades) to this plain upstream,
    /// http://HOST:PORT or ws://HOST:PORT, instead of the built-in echo.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<crate::config::Upstream>,
    /// Serve a dev-CA certificate for this DNS name or IP address; repeat for more
    /// [default: localhost, 127.0.0.1, ::1]. With --cert-file: the names the pair must
    /// cover.
    #[arg(long = "domain", value_name = "NAME", value_parser = parse_domain)]
    pub domains: Vec<Domain>,
    /// Serve this certificate chain (PEM, leaf first) instead of a dev-CA one; watched
    /// and hot-swapped when it changes. Needs --key-file.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) for --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

impl SidecarFlags {
    pub fn overrides(self) -> crate::config::Overrides {
        crate::config::Overrides {
            listen: self.listen,
            upstream: self.upstream,
            domains: self.domains,
            cert_file: self.cert_file,
            key_file: self.key_file,
        }
    }
}

const RUN_EXAMPLES: &str = "\
Examples:
  wssd run                                          dev mode: echo at wss://localhost:8443/
  wssd run --upstream http://127.0.0.1:3000         a sidecar for the app on port 3000
  wssd run --listen 0.0.0.0:443 --upstream http://127.0.0.1:3000 \\
           --cert-file /etc/tls/fullchain.pem --key-file /etc/tls/privkey.pem
  wssd run --domain app.test --domain 192.168.1.20  dev-CA certificate for these names
  wssd run -c /etc/wssd/wssd.toml                   everything from a config file";

const SELFSIGNED_EXAMPLES: &str = "\
Examples:
  wssd selfsigned --out-dir ./tls                    localhost, 127.0.0.1, ::1
  wssd selfsigned --out-dir ./tls --domain app.test --domain '*.app.test' --domain 192.168.1.20
  wssd selfsigned --out-dir ./tls --days 30 --ca-dir ./ca   a CA of the project's own

The CA is made once and reused: trust it once with `wssd trust`.";

const ISSUE_EXAMPLES: &str = "\
Examples:
  wssd issue                              ./wssd.toml: obtain or renew what is due, then exit
  wssd issue -c /etc/wssd/wssd.toml       from cron or a systemd timer (exit 1: not all valid)";

const PROBE_EXAMPLES: &str = "\
Examples:
  wssd probe wss://localhost:8443/ --send hi
  wssd probe --ca ~/.local/share/wssd/ca/ca.pem wss://localhost:8443/
  wssd probe wss://app.example.com/socket --origin https://app.example.com
  wssd probe wss://app.example.com/ --connect-to 10.0.0.5:443   before DNS points there
  wssd probe wss://app.example.com/ --expect-days 14 --json     a monitoring check";

const CHECK_EXAMPLES: &str = "\
Examples:
  wssd check                              ./wssd.toml: settings, routes, certificates
  wssd check -c /etc/wssd/wssd.toml       before a reload (exit 2: invalid, with key and line)";

const STATUS_EXAMPLES: &str = "\
Examples:
  wssd status                             each certificate: source, domains, expiry, next renewal
  wssd status -c /etc/wssd/wssd.toml --json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  wssd completions bash > /etc/bash_completion.d/wssd
  wssd completions zsh > \"${fpath[1]}/_wssd\"
  wssd completions fish > ~/.config/fish/completions/wssd.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  wssd man | man -l -
  wssd man > /usr/local/share/man/man1/wssd.1";

const TRUST_EXAMPLES: &str = "\
Examples:
  wssd trust --dry-run          what would change, store by store
  wssd trust                    as yourself: sudo is asked for the system store only
  wssd trust --ca-dir ./ca      the CA made by `wssd selfsigned --ca-dir ./ca`

Stores: the system store (update-ca-certificates, update-ca-trust, or the macOS System
keychain), ~/.pki/nssdb (Chrome, Chromium; created when missing) and every profile in
Firefox's profiles.ini. Running it again changes nothing. Exit 1 when a store could not
be changed; a store whose tool is missing is skipped, and the package named.";

const UNTRUST_EXAMPLES: &str = "\
Examples:
  wssd untrust --dry-run        what would be removed
  wssd untrust                  remove the dev CA everywhere `wssd trust` put it";

fn parse_domain(text: &str) -> Result<Domain, String> {
    Domain::parse(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::units::parse_duration(text)
}

/// `wssd man`: one page, wssd(1), with every command's synopsis, description and flags
/// in a section of its own (there are no wssd-COMMAND(1) pages to point at).
pub fn manual(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // Sets the subcommands' bin names ("wssd run"), which their synopses show.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    let commands: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .collect();
    writeln!(w, ".SH COMMANDS")?;
    for sub in &commands {
        writeln!(
            w,
            ".TP\n\\fBwssd {}\\fR\n{}",
            sub.get_name(),
            roff_text(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())
        )?;
    }
    for sub in commands {
        writeln!(w, ".SH \"WSSD {}\"", sub.get_name().to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone());
        let mut body = Vec::new();
        page.render_synopsis_section(&mut body)?;
        page.render_description_section(&mut body)?;
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            page.render_options_section(&mut body)?;
        }
        // The command's own sections become subsections of its section here.
        let body = String::from_utf8_lossy(&body).replace("\n.SH ", "\n.SS ");
        let body = body
            .strip_prefix(".SH ")
            .map_or(body.clone(), |b| format!(".SS {b}"));
        w.write_all(body.as_bytes())?;
    }
    man.render_version_section(w)
}

/// `text` safe as a roff text line (a leading dot or quote would be a request).
fn roff_text(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_has_examples_and_every_flag_has_help() {
        let mut cli = super::Cli::command();
        cli.build();
        for command in cli.get_subcommands().filter(|c| c.get_name() != "help") {
            let name = command.get_name();
            let after = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.starts_with("Examples:\n"),
                "wssd {name} --help shows no examples"
            );
            assert!(
                after.contains(&format!("wssd {name}")),
                "wssd {name}: {after}"
            );
            assert!(
                command.get_about().is_some(),
                "wssd {name} has no description"
            );
            for arg in command.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "wssd {name}: {} has no help text",
                    arg.get_id()
                );
            }
        }
        for arg in cli.get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.get_id() == "help" || arg.get_id() == "version"
            );
        }
    }
}
