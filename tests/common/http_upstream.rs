//! A plain HTTP/1.1 upstream for the pass-through tests, served with hyper: it records
//! every request head and counts its TCP connections, and answers by path:
//!
//! * `/hello`: 200 `hello` (with `X-Upstream`, a CSP of its own, and a hop-by-hop
//!   `Connection: X-Hop` + `X-Hop` that must not reach the client);
//! * `/echo`: the request body back, with its length in `X-Body-Length`;
//! * `/count`: reads the body as it comes, counting it in [`HttpUpstream::received`],
//!   and answers its length at the end;
//! * `/slow`: `first\n`, then `last\n` once the test says so ([`HttpUpstream::release`]);
//! * `/sse`: `text/event-stream`, one event, then another once released;
//! * `/etag`: 304 when `If-None-Match` matches, else 200 with the ETag;
//! * `/hang`: never answers;
//! * anything else: 404 from the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Body bytes `/count` has read so far.
    pub received: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<RecordedHead>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Debug)]
pub struct RecordedHead {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl RecordedHead {
    /// The values of header `name`.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl HttpUpstream {
    pub async fn start() -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let received = Arc::new(AtomicUsize::new(0));
        let (count, seen, gate, bytes) = (
            connections.clone(),
            heads.clone(),
            release.clone(),
            received.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, gate, bytes) = (seen.clone(), gate.clone(), bytes.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, seen.clone(), gate.clone(), bytes.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpUpstream {
            addr,
            connections,
            received,
            heads,
            release,
            task,
        }
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<RecordedHead> {
        self.heads.lock().unwrap().clone()
    }

    /// Lets `/slow` and `/sse` send their last part.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(text: impl Into<Bytes>) -> BoxBody {
    http_body_util::Full::new(text.into()).boxed()
}

/// A body of `first`, then `last` once `gate` is notified.
fn two_parts(first: &'static str, last: &'static str, gate: Arc<Notify>) -> BoxBody {
    let stream = futures_util::stream::once(async move { Ok(Frame::data(Bytes::from(first))) })
        .chain(futures_util::stream::once(async move {
            gate.notified().await;
            Ok(Frame::data(Bytes::from(last)))
        }));
    BodyExt::boxed(StreamBody::new(stream))
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<RecordedHead>>>,
    gate: Arc<Notify>,
    received: Arc<AtomicUsize>,
) -> Result<Response<BoxBody>, Infallible> {
    seen.lock().unwrap().push(RecordedHead {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let path = req.uri().path().to_string();
    let response = match path.as_str() {
        "/hello" => Response::builder()
            .header("X-Upstream", "1")
            .header("Content-Security-Policy", "default-src 'self'")
            .header("Connection", "X-Hop")
            .header("X-Hop", "hop-by-hop")
            .header("Content-Type", "text/plain")
            .body(full("hello")),
        "/echo" => {
            // Streams the body back as it arrives; the length is a trailer of sorts, so
            // it is counted here, whole, only for the header of the answer.
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::builder()
                .header("X-Body-Length", body.len().to_string())
                .body(full(body))
        }
        "/count" => {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    received.fetch_add(data.len(), Ordering::SeqCst);
                }
            }
            Response::builder().body(full(total.to_string()))
        }
        "/slow" => Response::builder()
            .header("Content-Type", "text/plain")
            .body(two_parts("first\n", "last\n", gate)),
        "/sse" => Response::builder()
            .header("Content-Type", "text/event-stream")
            .header("Cache-Control", "no-cache")
            .body(two_parts("data: one\n\n", "data: two\n\n", gate)),
        "/etag" => {
            let matches = req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == b"\"v1\"");
            if matches {
                Response::builder()
                    .status(304)
                    .header("ETag", "\"v1\"")
                    .body(full(""))
            } else {
                Response::builder()
                    .header("ETag", "\"v1\"")
                    .body(full("version 1"))
            }
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => Response::builder().status(404).body(full("no such page")),
    };
    Ok(response.unwrap())
}
