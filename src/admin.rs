//! The admin server on `[admin] bind` (plain HTTP; keep it on loopback or a private
//! network): what orchestrators and monitoring ask a running wssd.
//!
//! * `GET /healthz`: 200 while the process runs (liveness).
//! * `GET /readyz`: 200 when the listener is bound and every certificate is loaded and
//!   within its validity (and, with `readyz_checks_upstream`, every upstream, the
//!   listener's and each route's, accepts a TCP connection); otherwise 503 with the reasons, one per line (readiness).
//! * `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]).
//! * `GET` or `POST /drain` (with `[admin] drain_endpoint = true`): the drain SIGTERM
//!   starts (the listener closed, close 1001 to every client, up to `drain_timeout`), but
//!   the process lives on until SIGTERM. The answer comes once the drain is over, so a
//!   Kubernetes `preStop` hook on the app's container holds the app's SIGTERM until
//!   wssd's clients have been told to go: with wssd as a native sidecar, that SIGTERM
//!   would otherwise come first, and an app that exits without closing its WebSockets
//!   leaves their clients with close 1011.
//!
//! It starts before anything else in `wssd run`, so `/readyz` answers 503 while
//! certificates are still being provisioned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cert::inspect::rfc3339;
use crate::config::Upstream;
use crate::metrics::Metrics;
use crate::reload::reloader::Reloader;
use crate::server::body::Body;
use crate::server::http::{self, Request, SecurityHeaders};

/// What the admin endpoints look at.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// Set once the WSS listener is bound.
    pub listening: AtomicBool,
    /// Checked by `/readyz` when configured: the listener's and every route's.
    pub upstreams: Vec<Upstream>,
    /// `/drain`, when `[admin] drain_endpoint` allows it.
    pub drain: Option<DrainControl>,
}

/// The listener's drain as `/drain` sees it.
pub struct DrainControl {
    /// Cancelled to start the drain (SIGTERM cancels it too).
    pub start: CancellationToken,
    /// Cancelled by the agent once the listener has drained.
    pub done: CancellationToken,
}

impl Admin {
    /// Why wssd is not ready, if it is not.
    pub async fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.drain.as_ref().is_some_and(|d| d.start.is_cancelled()) {
            reasons.push("draining (/drain): the WSS listener is closed".to_string());
        }
        if !self.listening.load(Ordering::Relaxed) {
            reasons.push("the WSS listener is not bound yet".to_string());
        }
        let now = SystemTime::now();
        for (index, (config, served)) in self
            .reloader
            .certificates()
            .iter()
            .zip(self.reloader.served())
            .enumerate()
        {
            let domains = config.domain_list();
            match served {
                None => reasons.push(format!("certificate[{index}] ({domains}): not loaded yet")),
                Some(s) if now > s.not_after => reasons.push(format!(
                    "certificate[{index}] ({domains}): expired at {}",
                    rfc3339(s.not_after)
                )),
                Some(s) if now < s.not_before => reasons.push(format!(
                    "certificate[{index}] ({domains}): not valid before {}",
                    rfc3339(s.not_before)
                )),
                Some(_) => {}
            }
        }
        for up in &self.upstreams {
            let connect = TcpStream::connect((up.host.as_str(), up.port));
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => reasons.push(format!("upstream {up}: {e}")),
                Err(_) => reasons.push(format!("upstream {up}: no connection within 1s")),
            }
        }
        reasons
    }
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    http::serve_plain(listener, shutdown, "admin", move |req| {
        let admin = admin.clone();
        async move { respond(&admin, &req).await }
    })
    .await
}

async fn respond(admin: &Admin, req: &Request) -> hyper::Response<Body> {
    let security = SecurityHeaders::default();
    let path = req.target.split('?').next().unwrap_or("");
    if let ("/drain", Some(drain)) = (path, &admin.drain) {
        return answer_drain(drain, req, &security).await;
    }
    if req.method != "GET" && req.method != "HEAD" {
        return http::response(405, &[("Allow", "GET, HEAD")], "Use GET.\n", &security);
    }
    let (status, content_type, body) = match path {
        "/healthz" => (200, "text/plain; charset=utf-8", "ok\n".to_string()),
        "/readyz" => {
            let reasons = admin.not_ready().await;
            if reasons.is_empty() {
                (200, "text/plain; charset=utf-8", "ready\n".to_string())
            } else {
                (
                    503,
                    "text/plain; charset=utf-8",
                    format!("not ready:\n{}\n", reasons.join("\n")),
                )
            }
        }
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            admin.metrics.render(),
        ),
        _ => {
            return http::response(404, &[], "Try /healthz, /readyz or /metrics.\n", &security);
        }
    };
    http::typed_response(status, &[], content_type, body.into(), &security)
}

/// Starts the drain (or joins one under way) and answers once it is over. GET is taken
/// as well as POST because a Kubernetes `httpGet` hook can only GET; the endpoint is off
/// unless the config turns it on.
async fn answer_drain(
    drain: &DrainControl,
    req: &Request,
    security: &SecurityHeaders,
) -> hyper::Response<Body> {
    if !matches!(req.method.as_str(), "GET" | "POST") {
        return http::response(405, &[("Allow", "GET, POST")], "Use POST.\n", security);
    }
    if !drain.start.is_cancelled() {
        info!("/drain: draining; the process keeps running until SIGTERM");
        drain.start.cancel();
    }
    drain.done.cancelled().await;
    http::response(
        200,
        &[],
        "drained: the WSS listener is closed and its connections have ended\n",
        security,
    )
}
