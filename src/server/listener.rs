//! Accepting connections, one task each, and the graceful drain.
//!
//! The accept loop takes a bound `TcpListener` (tests bind `127.0.0.1:0`) and refuses,
//! before any TLS work, a connection over `max_connections` or over the per-IP limits
//! ([`super::limits`]); each admitted connection gets a task. Shutdown is one mechanism:
//! the `shutdown` token. When it fires the loop stops accepting and drops the listening
//! socket; every connection task sees the same token (it is their drain signal), sends
//! close 1001 and ends; `serve` waits for them up to `drain_timeout` and returns.
//!
//! The TLS handshake must finish within `handshake_timeout` (tokio-rustls has no timeout
//! of its own); after it, [`super::connection`] serves HTTP, where each request head gets
//! `handshake_timeout` too, so slowloris in either layer is cut.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::connection;
use super::limits::{DescriptorReserve, IpPermit};
use super::service::Connection;
use super::state::Server;
use super::workers::{Assigned, Workers};

/// Serves until `shutdown` fires, then drains (up to `drain_timeout`) and returns. Fails
/// only when the connection workers cannot be started or the listening socket cannot be
/// used by them.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_all(vec![listener], server, shutdown).await
}

/// [`serve`] on several listening sockets at once (the dev mode's 127.0.0.1 and ::1),
/// one accept loop each, sharing the workers, limits and drain.
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    server: Arc<Server>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let workers = Arc::new(Workers::start(server.settings.workers)?);
    let tasks = TaskTracker::new();
    // Should this future be dropped rather than shut down, the accept loops stop too, and
    // with them the workers (they hold them).
    let stop_accepting = shutdown.child_token();
    let _stop_accepting_on_drop = stop_accepting.clone().drop_guard();
    let mut accepting = Vec::with_capacity(listeners.len());
    for listener in listeners {
        // The accept loop runs on the first worker: a connection it keeps costs no
        // hand-over, and one it hands to another worker costs that worker's wake-up and
        // moving the socket's registration (two epoll_ctl calls).
        let listener = listener.into_std()?;
        accepting.push(workers.first().spawn(accept_loop(
            listener,
            server.clone(),
            (stop_accepting.clone(), shutdown.clone()),
            workers.clone(),
            tasks.clone(),
        )));
    }
    for loop_ in accepting {
        loop_.await.map_err(std::io::Error::other)??;
    }
    tasks.close();
    let open = tasks.len();
    info!(connections = open, timeout = ?server.settings.drain_timeout, "draining");
    if tokio::time::timeout(server.settings.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tasks.len(),
            "drain timeout reached; closing the rest"
        );
    }
    // Dropping the workers here ends what is left.
    drop(workers);
    Ok(())
}

/// Accepts until `stop` fires, then drops the listening socket. Each admitted connection
/// is handed to the least loaded worker, with `drain` as its signal to close.
async fn accept_loop(
    listener: std::net::TcpListener,
    server: Arc<Server>,
    (stop, drain): (CancellationToken, CancellationToken),
    workers: Arc<Workers>,
    tasks: TaskTracker,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let acceptor = TlsAcceptor::from(server.tls.clone());
    let mut reserve = DescriptorReserve::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Err(e) if DescriptorReserve::is_exhaustion(&e) => {
                if reserve.should_warn() {
                    warn!(error = %e, "out of file descriptors; shedding connections (raise LimitNOFILE / ulimit -n, or lower max_connections)");
                }
                if reserve.shed(&listener).await {
                    server.metrics.connection_refused();
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                continue;
            }
            // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d; it is the
            // IPv4 address in logs, limits and X-Forwarded-For.
            Ok((stream, peer)) => (
                stream,
                SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            ),
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = server.slots.clone().try_acquire_owned() else {
            server.metrics.connection_refused();
            debug!(%peer, "max_connections reached; connection refused");
            continue;
        };
        let ip_permit = match server.ip_limits.admit(peer.ip(), std::time::Instant::now()) {
            Ok(p) => p,
            Err(refusal) => {
                server.metrics.connection_refused();
                debug!(%peer, ?refusal, "per-IP limit reached; connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Assigned {
            index,
            handle: runtime,
            load,
        } = workers.assign();
        let server = server.clone();
        let acceptor = acceptor.clone();
        let drain = drain.clone();
        let connection = move |stream: TcpStream| async move {
            let _load = load;
            debug!(%peer, worker = index, "connection on a worker");
            handle(
                stream,
                peer,
                index,
                acceptor,
                server,
                drain,
                (permit, ip_permit),
            )
            .await;
        };
        if index == 0 {
            tasks.spawn(connection(stream));
            continue;
        }
        // Registered again with the other worker's reactor, so that its events reach
        // that worker's thread directly.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        tasks.spawn_on(
            async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    connection(stream).await;
                }
            },
            &runtime,
        );
    }
}

/// One connection, from the TLS handshake to the end of the relay.
///
/// A task is allocated once, at the size of its future's largest state, and an idle
/// connection keeps that allocation for as long as it stays open. So the phases before the
/// relay (handshake, request, upstream connect) run as boxed futures of their own, freed
/// when they finish, and the TLS stream is boxed: measured in a release build, the task
/// went from 11.4 KiB to 2.3 KiB, and wssd's memory per idle connection from ~27 KiB to
/// ~20 KiB (before the relay's smaller first buffers; see `relay::CHUNK_START`).
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    acceptor: TlsAcceptor,
    server: Arc<Server>,
    drain: CancellationToken,
    _permits: (OwnedSemaphorePermit, IpPermit),
) {
    let mut active = server.metrics.connection_opened();
    let accepted_at = Instant::now();
    let settings = &server.settings;
    let deadline = Instant::now() + settings.handshake_timeout;

    let Some(mut tls) = Box::pin(tls_handshake(
        stream, peer, &acceptor, &server, &drain, deadline,
    ))
    .await
    else {
        return;
    };
    server
        .metrics
        .handshake_done(accepted_at.elapsed().as_secs_f64());
    if let Some(slot) = server.resolver.slot_for(tls.get_ref().1.server_name()) {
        active.served_by(slot);
    }
    // A tls-alpn-01 validation is complete once the handshake is: nothing more to say.
    if tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_ACME_TLS) {
        debug!(%peer, "answered a tls-alpn-01 validation");
        let _ = tls.shutdown().await;
        return;
    }
    // The verified client certificate (mTLS), described for the upstream.
    let client_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| client_identity(leaf));

    let conn = Arc::new(Connection {
        server: server.clone(),
        peer,
        address: std::sync::OnceLock::new(),
        worker,
        client_identity,
        drain,
        next: std::sync::Mutex::new(None),
    });
    connection::serve(tls, conn).await;
}

/// The client certificate as the upstream sees it, in the form Envoy made common for
/// `X-Forwarded-Client-Cert`: `Hash=<SHA-256 of the DER>;Subject="<DN>";DNS=<name>...`.
fn client_identity(leaf: &[u8]) -> String {
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut value = format!("Hash={hash}");
    if let Ok(summary) = crate::cert::inspect::CertSummary::from_der(leaf) {
        let subject: String = summary
            .subject
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '"' { '\'' } else { c })
            .collect();
        value.push_str(&format!(";Subject=\"{subject}\""));
        for name in &summary.dns_names {
            if name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
            {
                value.push_str(&format!(";DNS={name}"));
            }
        }
    }
    value
}

/// The TLS handshake, within `deadline`; the stream comes back boxed (see [`handle`]).
async fn tls_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    server: &Server,
    drain: &CancellationToken,
    deadline: Instant,
) -> Option<Box<TlsStream<TcpStream>>> {
    let accepted = tokio::select! {
        _ = drain.cancelled() => return None,
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
    };
    match accepted {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            server.metrics.handshake_failed();
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            server.metrics.handshake_failed();
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
