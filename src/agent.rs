//! `wssd run`: wiring the pieces together in data-flow order and living until a signal.
//!
//! 1. provision what wssd issues itself (dev-CA certificates) and load every pair;
//!    a certificate that cannot be loaded at start-up is a start-up error;
//! 2. start the reload task and the file watcher;
//! 3. bind the listener and serve;
//! 4. SIGHUP reloads every certificate; SIGTERM/SIGINT drain and return.
//!
//! Signal handlers are installed first, so a signal that arrives during start-up is
//! handled rather than killing the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acme::Acme;
use crate::acme::challenge::{AlpnAnswers, Http01Tokens, Solver, serve_http01};
use crate::admin::{Admin, DrainControl};
use crate::cert::pair::PairError;
use crate::config::{Challenge, Config, Source, Upstream};
use crate::metrics::Metrics;
use crate::provision::driver::{self, HookRun, Issuer, Slot};
use crate::provision::store::{LocalDir, Store};
use crate::reload::reloader::Reloader;
use crate::reload::watch::{self, WatchError};
use crate::server::{self, Server};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("certificate[{index}] ({domains}): {reason}")]
    Provision {
        index: usize,
        domains: String,
        reason: String,
    },
    #[error("certificate[{index}] ({domains}) cannot be served: {source}")]
    Certificate {
        index: usize,
        domains: String,
        source: PairError,
    },
    #[error("ACME: {0}")]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// `what`: the address and what set it ("[admin] bind = ADDR", "--listen ADDR").
    #[error("{what}: cannot listen: {source}{}", bind_hint(*listener, source))]
    Bind {
        what: String,
        /// The WSS listener's address (the hint names the ways to choose another).
        listener: bool,
        source: std::io::Error,
    },
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot serve connections: {0}")]
    Serve(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl AgentError {
    /// A failed bind of the address that `key` sets.
    fn bind(key: &'static str, addr: SocketAddr, source: std::io::Error) -> AgentError {
        AgentError::Bind {
            what: format!("{key} = {addr}"),
            listener: false,
            source,
        }
    }

    /// A failed bind of one of the WSS listener's addresses, named as it was chosen.
    fn listener_bind(config: &Config, addr: SocketAddr, source: std::io::Error) -> AgentError {
        AgentError::Bind {
            what: config.listener.bind_origin.describe(addr),
            listener: true,
            source,
        }
    }
}

fn bind_hint(listener: bool, e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse if listener => {
            " (another process, perhaps another wssd, is using that address; `wssd run --listen ADDR` or [listener] bind picks another)"
        }
        std::io::ErrorKind::AddrInUse => {
            " (another process, perhaps another wssd, is using that address)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need CAP_NET_BIND_SERVICE; see docs/sidecar.md#ports-below-1024)"
        }
        _ => "",
    }
}

/// Runs the agent until SIGTERM/SIGINT. `on_ready` is called once the listener is bound
/// and every certificate is loaded, with the bound address.
pub async fn run(
    config: Config,
    on_ready: impl FnOnce(SocketAddr, &Config),
) -> Result<(), AgentError> {
    crate::tls::install_default_provider();
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;

    for (index, cert) in config.certificates.iter().enumerate().skip(1) {
        if let Some(ip) = cert
            .domains
            .iter()
            .find(|d| matches!(d, crate::config::Domain::Ip(_)))
        {
            warn!(
                certificate = index,
                %ip,
                "clients connecting to an IP address send no SNI and get certificate[0]; list IP addresses in the first certificate"
            );
        }
    }
    if let Some(problem) = crate::preflight::check(&config).into_iter().next() {
        return Err(AgentError::Preflight(problem));
    }
    let mut metrics = Metrics::default();
    if config.cluster.is_some() {
        metrics.enable_cluster();
    }
    let metrics = Arc::new(metrics);
    let reloader = Arc::new(Reloader::new(config.certificates.clone(), metrics.clone()));
    let shutdown = CancellationToken::new();
    // The listener's drain: SIGTERM starts it with everything else's shutdown; `/drain`
    // starts it alone.
    let drain = shutdown.child_token();
    let drained = CancellationToken::new();
    // The admin server first: /readyz says 503 while the rest starts.
    let admin = match &config.admin {
        None => None,
        Some(admin_config) => {
            let listener = TcpListener::bind(admin_config.bind)
                .await
                .map_err(|source| AgentError::bind("[admin] bind", admin_config.bind, source))?;
            let admin = Arc::new(Admin {
                metrics: metrics.clone(),
                reloader: reloader.clone(),
                listening: AtomicBool::new(false),
                upstreams: if admin_config.readyz_checks_upstream {
                    let listener = &config.listener;
                    let mut all: Vec<Upstream> = listener.upstream.iter().cloned().collect();
                    for route in &listener.routes {
                        if !all.contains(&route.upstream) {
                            all.push(route.upstream.clone());
                        }
                    }
                    all
                } else {
                    Vec::new()
                },
                drain: admin_config.drain_endpoint.then(|| DrainControl {
                    start: drain.clone(),
                    done: drained.clone(),
                }),
            });
            let bound = listener
                .local_addr()
                .map_err(|source| AgentError::bind("[admin] bind", admin_config.bind, source))?;
            info!(addr = %bound, "admin server listening (/healthz, /readyz, /metrics)");
            tokio::spawn(crate::admin::serve(
                listener,
                admin.clone(),
                shutdown.clone(),
            ));
            Some(admin)
        }
    };
    let fleet = match &config.cluster {
        Some(cluster) => Some(crate::cluster::join(cluster, metrics.clone())?),
        None => None,
    };
    let acme = start_acme(&config, &reloader, fleet.as_ref(), &shutdown).await?;
    let store: Arc<dyn Store> = match &fleet {
        Some(fleet) => {
            // What the fleet has first: a replica joining it serves the fleet's pair
            // rather than issuing its own. An engine that is down is no reason not to
            // start: what is on disk serves.
            if let Err(e) = crate::cluster::sync::sync_once(fleet, &config.certificates, None).await
            {
                warn!(error = %e, "the fleet's engine cannot be reached at start-up; serving the certificates on disk");
            }
            Arc::new(crate::cluster::store::FleetStore {
                fleet: fleet.clone(),
                certificates: config.certificates.clone(),
            })
        }
        None => Arc::new(LocalDir),
    };
    let dev_ca = Issuer::DevCa {
        ca_dir: config.ca_dir.clone(),
    };
    for (index, cert) in config.certificates.iter().enumerate() {
        let domains = cert.domain_list();
        match cert.source {
            Source::Acme => {
                // Ordered once the listener is up (tls-alpn-01 is answered by it).
                if let Err(e) = reloader.reload(index, "startup") {
                    info!(certificate = index, %domains, reason = %e, "no valid certificate yet; it will be ordered");
                }
                // Its directory is watched from the start, so it must exist.
                if let Some(dir) = cert
                    .cert_file
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    crate::cert::store::ensure_dir(dir, crate::cert::store::PRIVATE_DIR_MODE)
                        .map_err(|e| AgentError::Provision {
                            index,
                            domains: domains.clone(),
                            reason: e.to_string(),
                        })?;
                }
                continue;
            }
            // Issued now when missing or due: the listener serves it from the start.
            Source::Selfsigned => {
                let ensured =
                    driver::ensure(index, cert, &dev_ca, &*store, HookRun::Background).await;
                match ensured {
                    Ok(_) => {}
                    // A valid pair on disk serves while its renewal waits (a fleet's
                    // engine that is down, say); the renewal loop tries again.
                    Err(f) if store.current(cert).is_some() => {
                        warn!(certificate = index, %domains, error = %f, "cannot renew at start-up; serving the certificate on disk");
                    }
                    Err(f) => {
                        return Err(AgentError::Provision {
                            index,
                            domains: domains.clone(),
                            reason: f.message,
                        });
                    }
                }
            }
            Source::Files => {}
        }
        reloader
            .reload(index, "startup")
            .map_err(|source| AgentError::Certificate {
                index,
                domains,
                source,
            })?;
    }

    let reload = watch::spawn(reloader.clone(), config.watch, shutdown.clone())?;
    // A change between the first load and the watcher's start would go unseen: look again.
    reload.reload_all("startup");
    if let Some(fleet) = &fleet {
        tokio::spawn(crate::cluster::sync::run(
            fleet.clone(),
            config.certificates.clone(),
            reload.clone(),
            reloader.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::cluster::members::run(
            fleet.clone(),
            reloader.clone(),
            shutdown.clone(),
        ));
    }
    let acme_tls = config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == Challenge::TlsAlpn01)
        && acme.is_some();
    let tls = crate::tls::server_config(
        reloader.resolver(),
        &config.tls,
        acme_tls,
        config.listener.http2,
    )?;
    let listener = TcpListener::bind(config.listener.bind)
        .await
        .map_err(|source| AgentError::listener_bind(&config, config.listener.bind, source))?;
    let addr = listener
        .local_addr()
        .map_err(|source| AgentError::listener_bind(&config, config.listener.bind, source))?;
    let mut listeners = vec![listener];
    for also in &config.listener.also_bind {
        let also = SocketAddr::new(also.ip(), addr.port());
        match TcpListener::bind(also).await {
            Ok(listener) => {
                info!(addr = %also, "also listening");
                listeners.push(listener);
            }
            // EAFNOSUPPORT and EADDRNOTAVAIL: no IPv6 (or no such address) on this host.
            Err(e)
                if e.raw_os_error() == Some(97)
                    || e.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                info!(addr = %also, error = %e, "skipped: this host has no such address");
            }
            Err(source) => {
                return Err(AgentError::listener_bind(&config, also, source));
            }
        }
    }
    if let Some(admin) = &admin {
        admin.listening.store(true, Ordering::Relaxed);
    }

    for (index, cert) in config.certificates.iter().enumerate() {
        let issuer = match (cert.source, &acme) {
            (Source::Selfsigned, _) => dev_ca.clone(),
            (Source::Acme, Some(acme)) => Issuer::Acme {
                acme: acme.clone(),
                responders: None,
            },
            _ => continue,
        };
        tokio::spawn(driver::run(Slot {
            index,
            cert: cert.clone(),
            issuer,
            store: store.clone(),
            reload: reload.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        }));
    }

    let server = Arc::new(Server::new(
        tls,
        config.listener.clone(),
        metrics.clone(),
        reloader.resolver(),
    ));
    let settings = &config.listener;
    let mode = match (&settings.upstream, settings.routes.len()) {
        (Some(up), 0) => format!("proxy to {up}"),
        (Some(up), n) => format!("{n} route(s), other paths proxied to {up}"),
        (None, 0) => "built-in echo".to_string(),
        (None, n) => format!("{n} route(s), other paths 404"),
    };
    info!(%addr, %mode, workers = config.listener.workers, "listening");
    on_ready(addr, &config);

    // systemd (Type=notify): ready once the listener is bound and certificates loaded.
    notify(&[sd_notify::NotifyState::Ready]);
    let signals = {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = sighup.recv() => {
                        info!("SIGHUP: reloading certificates");
                        let mut reloading = vec![sd_notify::NotifyState::Reloading];
                        reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                        notify(&reloading);
                        reload.reload_all_and_wait("SIGHUP").await;
                        notify(&[sd_notify::NotifyState::Ready]);
                    }
                    _ = sigterm.recv() => { info!("SIGTERM: draining"); break; }
                    _ = sigint.recv() => { info!("SIGINT: draining"); break; }
                }
            }
            notify(&[sd_notify::NotifyState::Stopping]);
            shutdown.cancel();
        }
    };
    tokio::spawn(signals);
    server::serve_all(listeners, server, drain)
        .await
        .map_err(AgentError::Serve)?;
    drained.cancel();
    if !shutdown.is_cancelled() {
        info!("drained (/drain); stopping on SIGTERM");
        shutdown.cancelled().await;
    }
    info!("stopped");
    Ok(())
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) how things stand; elsewhere a
/// no-op.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// The ACME client, when any certificate comes from ACME, with its challenge solver
/// running: the http-01 responder bound, or the resolver ready for tls-alpn-01.
async fn start_acme(
    config: &Config,
    reloader: &Reloader,
    fleet: Option<&Arc<crate::cluster::fleet::Fleet>>,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Acme>>, AgentError> {
    let Some(acme_config) = &config.acme else {
        return Ok(None);
    };
    if !config.certificates.iter().any(|c| c.source == Source::Acme) {
        return Ok(None);
    }
    // In a fleet, any replica answers any replica's orders.
    let shared = fleet.map(crate::cluster::acme_shares);
    let accounts = shared.as_ref().map(|s| s.accounts.clone());
    let solver = match acme_config.challenge {
        Challenge::Http01 => {
            let bind = acme_config.http01_bind;
            let listener = TcpListener::bind(bind)
                .await
                .map_err(|source| AgentError::bind("[acme] http01_bind", bind, source))?;
            let tokens = match &shared {
                Some(shared) => Http01Tokens::shared(shared.tokens.clone()),
                None => Http01Tokens::default(),
            };
            let bound = listener.local_addr().unwrap_or(bind);
            info!(addr = %bound, "http-01 responder listening");
            tokio::spawn(serve_http01(
                listener,
                tokens.clone(),
                config.listener.bind.port(),
                shutdown.clone(),
            ));
            Solver::Http01(tokens)
        }
        Challenge::TlsAlpn01 => Solver::TlsAlpn01(AlpnAnswers::new(
            reloader.resolver(),
            shared.map(|s| s.alpn),
        )),
        Challenge::Dns01 => match &acme_config.dns01_hook {
            Some(hook) => Solver::Dns01(hook.clone()),
            None => return Ok(None),
        },
    };
    Ok(Some(Acme::new(
        acme_config.clone(),
        config.data_dir.clone(),
        solver,
        accounts,
    )?))
}
