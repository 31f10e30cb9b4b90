//! Keep-alive HTTP/1.1 connections to an upstream, for plain requests
//! ([`super::forward`]): one pool per connection worker and upstream.
//!
//! A connection is driven by a task on the worker that opened it and is only handed to
//! requests of that worker, so a request and its upstream connection never cross
//! threads. A request takes an idle connection that is ready for one (the newest first,
//! so that the ones left over after a burst age out), or opens one; the connection goes
//! back when the response body is done with ([`Lease`]'s drop), unless it was closed. At
//! most [`MAX_IDLE`] idle connections are kept, each for at most [`IDLE_TIMEOUT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::config::Upstream;

/// Idle connections kept per worker and upstream.
pub const MAX_IDLE: usize = 64;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {upstream} timed out")]
    Timeout { upstream: String },
    #[error("cannot connect to {upstream}: {source}")]
    Io {
        upstream: String,
        source: std::io::Error,
    },
    #[error("the new connection was closed at once")]
    Closed,
    #[error("HTTP/1.1 with {upstream} failed: {source}")]
    Handshake {
        upstream: String,
        source: hyper::Error,
    },
}

/// The idle connections of one worker to one upstream, for requests with bodies of type
/// `B` (the client's, limited, in [`super::forward`]).
pub struct Pool<B> {
    upstream: Upstream,
    idle: Mutex<Vec<Idle<B>>>,
    /// Whether the task that closes connections idle for too long runs.
    sweeping: AtomicBool,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// A connection in use by one request; back to its pool when dropped.
pub struct Lease<B> {
    sender: Option<http1::SendRequest<B>>,
    pool: Arc<Pool<B>>,
}

impl<B> Lease<B> {
    pub fn sender(&mut self) -> Option<&mut http1::SendRequest<B>> {
        self.sender.as_mut()
    }
}

impl<B> Drop for Lease<B> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

impl<B> Pool<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(upstream: Upstream) -> Arc<Pool<B>> {
        Arc::new(Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        })
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The newest idle connection that is ready for a request. Closed ones met on the
    /// way are dropped; busy ones (still reading the last response's end) stay. (Expired
    /// ones are the sweeper's: see [`sweep`].)
    pub fn checkout(self: &Arc<Self>) -> Option<Lease<B>> {
        let mut idle = self.idle.lock().ok()?;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() {
                idle.swap_remove(i);
            } else if entry.sender.is_ready() {
                let entry = idle.swap_remove(i);
                return Some(self.lease(entry.sender));
            }
        }
        None
    }

    /// Opens a connection, within `timeout`.
    pub async fn connect(self: &Arc<Self>, timeout: Duration) -> Result<Lease<B>, ConnectError> {
        let upstream = &self.upstream;
        let stream = tokio::time::timeout(
            timeout,
            TcpStream::connect((upstream.host.as_str(), upstream.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            upstream: upstream.to_string(),
        })?
        .map_err(|source| ConnectError::Io {
            upstream: upstream.to_string(),
            source,
        })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                upstream: upstream.to_string(),
                source,
            })?;
        // The connection's task ends when the upstream closes it, or when every sender
        // is gone (the pool dropped it) and it is idle.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        Ok(self.lease(sender))
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<B>) -> Lease<B> {
        Lease {
            sender: Some(sender),
            pool: self.clone(),
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

impl<B> Pool<B> {
    fn put(&self, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= MAX_IDLE {
            // The oldest goes: the newest are the ones taken next.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops the idle connections that are closed or older than [`IDLE_TIMEOUT`]; their
    /// tasks then close them.
    fn expire(&self, now: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|e| !e.sender.is_closed() && now.duration_since(e.since) <= IDLE_TIMEOUT);
        }
    }
}

/// Closes idle connections that outlived [`IDLE_TIMEOUT`] while no request came to take
/// them, until the pool is gone.
async fn sweep<B>(pool: Weak<Pool<B>>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 4).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamScheme;
    use bytes::Bytes;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers every request on a connection with a 200, and counts
    /// its connections.
    async fn upstream() -> (Upstream, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if socket.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        let upstream = Upstream {
            host: "127.0.0.1".into(),
            port,
            scheme: UpstreamScheme::Http,
        };
        (upstream, accepted)
    }

    #[tokio::test]
    async fn a_returned_connection_is_used_again_and_a_leased_one_is_not() {
        let (upstream, accepted) = upstream().await;
        let pool = Pool::<Empty<Bytes>>::new(upstream);
        assert!(
            pool.checkout().is_none(),
            "an empty pool has nothing to lend"
        );
        let mut first = pool.connect(Duration::from_secs(5)).await.unwrap();
        first.sender().unwrap().ready().await.unwrap();
        // While `first` is out, a second request needs a connection of its own.
        assert!(pool.checkout().is_none());
        let second = pool.connect(Duration::from_secs(5)).await.unwrap();
        drop(first);
        drop(second);
        assert_eq!(pool.idle_count(), 2);
        let mut again = pool.checkout().expect("an idle connection");
        assert_eq!(pool.idle_count(), 1);
        let sender = again.sender().unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(get()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "no third connection");
    }

    fn get() -> hyper::Request<Empty<Bytes>> {
        hyper::Request::get("/").body(Empty::new()).unwrap()
    }

    #[tokio::test]
    async fn closed_and_expired_connections_are_not_lent() {
        let (upstream, _) = upstream().await;
        let pool = Pool::<Empty<Bytes>>::new(upstream);
        let lease = pool.connect(Duration::from_secs(5)).await.unwrap();
        drop(lease);
        assert_eq!(pool.idle_count(), 1);
        pool.expire(Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(pool.idle_count(), 0, "an expired connection is dropped");
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn at_most_max_idle_are_kept() {
        let (upstream, _) = upstream().await;
        let pool = Pool::<Empty<Bytes>>::new(upstream);
        let mut leases = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            leases.push(pool.connect(Duration::from_secs(5)).await.unwrap());
        }
        drop(leases);
        assert_eq!(pool.idle_count(), MAX_IDLE);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pool = Pool::<Empty<Bytes>>::new(Upstream {
            host: "127.0.0.1".into(),
            port,
            scheme: UpstreamScheme::Http,
        });
        let err = pool.connect(Duration::from_secs(5)).await.err().unwrap();
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
    }
}
