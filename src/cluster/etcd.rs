//! The etcd client of fleet mode, over etcd's own JSON API (the gRPC gateway that every
//! etcd 3.4+ serves on its client port, `/v3/...`): key-value reads and writes,
//! transactions with revision compares, leases, and watches that resume from a revision.
//!
//! Why not a gRPC client crate: the gateway is part of etcd's documented API, the calls
//! wssd makes are a handful of JSON requests on the hyper client it already has, and a
//! gRPC stack (tonic, prost, and `protoc` at build time) would add minutes to a build on
//! two cores for no behaviour wssd needs.
//!
//! Keys and values are bytes, base64 in the JSON; 64-bit numbers (revisions, lease ids)
//! travel as strings, and zero values are left out of the answers. Endpoints are tried in
//! turn: a failed call moves on to the next one.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::errors::error_chain;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long one call may take before the next endpoint is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read (a certificate record is a few KiB).
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} answered {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("etcd's answer cannot be read: {0}")]
    Answer(String),
    #[error("etcd client setup: {0}")]
    Setup(String),
}

/// TLS to the engine: the CA its certificate chains to, and a client certificate.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls<'a> {
    pub ca_file: Option<&'a Path>,
    pub cert_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
}

/// One stored key.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's `create_revision` is this (0: the key does not exist).
    Created(Vec<u8>, i64),
    /// The key's `mod_revision` is this.
    Modified(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Get(Vec<u8>),
    Delete(Vec<u8>),
}

/// What a transaction did: whether its compares held, the store's revision after it, and
/// the keys its `Get`s read (in order, flattened).
#[derive(Debug, Clone)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    pub read: Vec<Kv>,
}

/// One change a watch saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Put(Kv),
    /// The key was deleted (or its lease expired), at this revision.
    Delete {
        key: Vec<u8>,
        mod_revision: i64,
    },
}

/// What the next message of a watch brought.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage {
    Events(Vec<Event>),
    /// The revision asked for has been compacted away: read everything again from this
    /// revision on (the watch has ended).
    Compacted(i64),
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An etcd client; cheap to share.
pub struct Etcd {
    client: Client<Connector, Full<Bytes>>,
    endpoints: Vec<String>,
    /// The endpoint to try first: the last one that answered.
    current: AtomicUsize,
}

impl Etcd {
    /// A client for `endpoints` (`http://host:port` or `https://host:port`).
    pub fn new(endpoints: &[String], tls: &EtcdTls<'_>) -> Result<Etcd, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Setup("no endpoints".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        match tls.ca_file {
            Some(path) => crate::tls::add_pem_roots(&mut roots, path)
                .map_err(|reason| EtcdError::Setup(format!("{}: {reason}", path.display())))?,
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| EtcdError::Setup(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (tls.cert_file, tls.key_file) {
            (Some(cert), Some(key)) => {
                let read = |p: &Path| {
                    crate::cert::read::read_pem_file(p).map_err(|e| EtcdError::Setup(e.to_string()))
                };
                let chain = crate::cert::pair::parse_chain(&read(cert)?, cert)
                    .map_err(|e| EtcdError::Setup(e.to_string()))?;
                let key_der = {
                    use pki_types::pem::PemObject;
                    pki_types::PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| {
                        EtcdError::Setup(format!("{}: no private key", key.display()))
                    })?
                };
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| EtcdError::Setup(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Etcd {
            client,
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
        })
    }

    /// Sends `body` to `path` on the endpoints in turn; the answer of the first that
    /// gives one.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for n in 0..self.endpoints.len() {
            let i = (start + n) % self.endpoints.len();
            match self.call_one(&self.endpoints[i], path, body).await {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                // An answer is an answer: another endpoint of the same cluster says the same.
                Err(e @ (EtcdError::Refused { .. } | EtcdError::Answer(_))) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Setup("no endpoints".into())))
    }

    async fn call_one(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let unreachable = |reason: String| EtcdError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let request = post(endpoint, path, body).map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, EtcdError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable("no answer in time".into()))??;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| EtcdError::Answer(format!("{path}: {e}")))?;
        if !status.is_success() {
            return Err(EtcdError::Refused {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                message: value["message"]
                    .as_str()
                    .or(value["error"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        Ok(value)
    }

    /// The key, and the store's revision at the read.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<Kv>, i64), EtcdError> {
        let answer = self
            .call("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        let mut kvs = kvs(&answer["kvs"])?;
        Ok((kvs.pop(), revision(&answer)))
    }

    /// Every key under `prefix`, and the store's revision at the read.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }),
            )
            .await?;
        Ok((kvs(&answer["kvs"])?, revision(&answer)))
    }

    /// Writes the key (attached to `lease` unless it is 0); the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", &body).await?;
        Ok(revision(&answer))
    }

    pub async fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .await
            .map(|_| ())
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/deleterange",
            &json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) }),
        )
        .await
        .map(|_| ())
    }

    /// Runs `success` if every compare holds, `failure` otherwise, atomically.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Created(key, rev) => json!({
                    "key": b64(key), "target": "CREATE", "result": "EQUAL",
                    "create_revision": rev.to_string(),
                }),
                Compare::Modified(key, rev) => json!({
                    "key": b64(key), "target": "MOD", "result": "EQUAL",
                    "mod_revision": rev.to_string(),
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        let mut put = json!({ "key": b64(key), "value": b64(value) });
                        if *lease != 0 {
                            put["lease"] = json!(lease.to_string());
                        }
                        json!({ "request_put": put })
                    }
                    Op::Get(key) => json!({ "request_range": { "key": b64(key) } }),
                    Op::Delete(key) => json!({ "request_delete_range": { "key": b64(key) } }),
                })
                .collect()
        };
        let answer = self
            .call(
                "/v3/kv/txn",
                &json!({ "compare": compare, "success": ops(success), "failure": ops(failure) }),
            )
            .await?;
        let mut read = Vec::new();
        for response in answer["responses"].as_array().into_iter().flatten() {
            read.extend(kvs(&response["response_range"]["kvs"])?);
        }
        Ok(TxnResult {
            succeeded: answer["succeeded"].as_bool().unwrap_or(false),
            revision: revision(&answer),
            read,
        })
    }

    /// A lease of `ttl` (etcd rounds it up to whole seconds, at least its minimum).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = ttl.as_secs().max(1) + u64::from(ttl.subsec_nanos() > 0);
        let answer = self
            .call("/v3/lease/grant", &json!({ "TTL": secs.to_string() }))
            .await?;
        int(&answer["ID"]).filter(|id| *id != 0).ok_or_else(|| {
            EtcdError::Answer(format!(
                "lease grant without an ID: {}",
                answer["error"].as_str().unwrap_or_default()
            ))
        })
    }

    /// Refreshes `lease`: the time it has left, or `None` when it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))
            .await?;
        // The gateway streams keep-alive answers; one request gives one `result`.
        let ttl = int(&answer["result"]["TTL"]).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    /// Ends `lease` now: the keys attached to it go.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .await
            .map(|_| ())
    }

    /// Watches every key under `prefix`, from `start_revision` (the revision after the
    /// last one seen) on.
    pub async fn watch(&self, prefix: &[u8], start_revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(prefix),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for n in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[(start + n) % self.endpoints.len()];
            let unreachable = |reason: String| EtcdError::Unreachable {
                endpoint: endpoint.clone(),
                reason,
            };
            let request =
                post(endpoint, "/v3/watch", &body).map_err(|e| unreachable(e.to_string()))?;
            match tokio::time::timeout(CALL_TIMEOUT, self.client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {
                    return Ok(Watch {
                        body: response.into_body(),
                        buffer: Vec::new(),
                    });
                }
                Ok(Ok(response)) => {
                    return Err(EtcdError::Refused {
                        endpoint: endpoint.clone(),
                        status: response.status().as_u16(),
                        message: "watch refused".into(),
                    });
                }
                Ok(Err(e)) => last = Some(unreachable(error_chain(&e))),
                Err(_) => last = Some(unreachable("no answer in time".into())),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Setup("no endpoints".into())))
    }
}

/// An open watch: its messages, as etcd streams them.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next message with events (or the compaction that ended the watch); `None`
    /// when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        loop {
            if let Some(message) = self.take_message()? {
                match parse_watch(&message)? {
                    Some(m) => return Ok(Some(m)),
                    None => continue,
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(EtcdError::Answer(format!("watch stream: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                        if self.buffer.len() > MAX_ANSWER {
                            return Err(EtcdError::Answer("watch message too large".into()));
                        }
                    }
                }
            }
        }
    }

    /// The first whole JSON value in the buffer, taken out of it.
    fn take_message(&mut self) -> Result<Option<Value>, EtcdError> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let used = stream.byte_offset();
                self.buffer.drain(..used);
                Ok(Some(value))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            None => Ok(None),
            Some(Err(e)) => Err(EtcdError::Answer(format!("watch stream: {e}"))),
        }
    }
}

/// A watch message: its events, a compaction, or nothing of interest (`created`, progress).
fn parse_watch(message: &Value) -> Result<Option<WatchMessage>, EtcdError> {
    if let Some(error) = message.get("error") {
        return Err(EtcdError::Answer(format!("watch: {error}")));
    }
    let result = &message["result"];
    if let Some(compacted) = int(&result["compact_revision"]).filter(|r| *r > 0) {
        return Ok(Some(WatchMessage::Compacted(compacted)));
    }
    let Some(events) = result["events"].as_array() else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let kv = kv(&event["kv"])?;
        out.push(if event["type"].as_str() == Some("DELETE") {
            Event::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            }
        } else {
            Event::Put(kv)
        });
    }
    Ok(Some(WatchMessage::Events(out)))
}

/// A JSON request for `path` on `endpoint`.
fn post(
    endpoint: &str,
    path: &str,
    body: &Value,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    hyper::Request::post(format!("{endpoint}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The end of the range of keys that start with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

/// A 64-bit number as the gateway writes it: a string (or, leniently, a number).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn revision(answer: &Value) -> i64 {
    int(&answer["header"]["revision"]).unwrap_or(0)
}

fn kvs(v: &Value) -> Result<Vec<Kv>, EtcdError> {
    v.as_array().into_iter().flatten().map(kv).collect()
}

fn kv(v: &Value) -> Result<Kv, EtcdError> {
    let bytes = |field: &str| -> Result<Vec<u8>, EtcdError> {
        match v[field].as_str() {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s)
                .map_err(|e| EtcdError::Answer(format!("{field}: {e}"))),
        }
    };
    Ok(Kv {
        key: bytes("key")?,
        value: bytes("value")?,
        create_revision: int(&v["create_revision"]).unwrap_or(0),
        mod_revision: int(&v["mod_revision"]).unwrap_or(0),
        lease: int(&v["lease"]).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn watch_messages_read_as_events_compactions_or_nothing() {
        let put = json!({"result": {"header": {"revision": "9"}, "events": [
            {"kv": {"key": b64(b"k"), "value": b64(b"v"), "create_revision": "3", "mod_revision": "9", "version": "2"}},
            {"type": "DELETE", "kv": {"key": b64(b"gone"), "mod_revision": "9"}}
        ]}});
        assert_eq!(
            parse_watch(&put).unwrap(),
            Some(WatchMessage::Events(vec![
                Event::Put(Kv {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    create_revision: 3,
                    mod_revision: 9,
                    lease: 0
                }),
                Event::Delete {
                    key: b"gone".to_vec(),
                    mod_revision: 9
                }
            ]))
        );
        let created = json!({"result": {"header": {"revision": "9"}, "created": true}});
        assert_eq!(parse_watch(&created).unwrap(), None);
        let compacted =
            json!({"result": {"header": {}, "compact_revision": "40", "canceled": true}});
        assert_eq!(
            parse_watch(&compacted).unwrap(),
            Some(WatchMessage::Compacted(40))
        );
        assert!(parse_watch(&json!({"error": {"message": "x"}})).is_err());
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        assert_eq!(
            int(&json!("7587862042385624599")),
            Some(7587862042385624599)
        );
        assert_eq!(int(&json!(12)), Some(12));
        assert_eq!(int(&json!(null)), None);
        assert_eq!(int(&json!("x")), None);
    }
}
