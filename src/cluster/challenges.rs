//! The fleet's shared challenge answers, so that any replica answers the CA whichever
//! replica placed the order ([`EngineTokens`], [`EngineAlpn`]).
//!
//! - http-01 ([`EngineTokens`]): the answer is stored under
//!   `wssd/<name>/challenges/http01/<token>` before the CA is told to validate, and any
//!   replica's responder reads it from there when the CA's request reaches it. A read
//!   goes to the engine itself, so the answer is visible to every replica as soon as the
//!   write has returned.
//! - tls-alpn-01 ([`EngineAlpn`]): a handshake cannot wait for the engine, so every
//!   replica must hold the challenge certificate in its resolver before the CA looks.
//!   The holder stores the name and the key authorization's digest under
//!   `challenges/alpn/<sni>`; every replica's follower ([`super::sync`]) makes the
//!   certificate from them, serves it, and acknowledges under
//!   `challenges/alpn-acks/<sni>/<replica>`; the holder tells the CA to validate once
//!   every live member has ([`super::members::wait_for_all`]). Nothing secret travels:
//!   each replica makes its own key for the challenge certificate.
//!
//! Each answer has a lease of its own, so the answers of a replica that died mid-order
//! go by themselves.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::Identifier;
use serde::{Deserialize, Serialize};

use super::fleet::Fleet;
use crate::acme::challenge::{SharedAlpn, SharedTokens, TokenFuture};

/// How long a stored answer lives at most (an order's validation takes seconds).
const ANSWER_TTL: Duration = Duration::from_secs(600);

/// Writes `value` under `key` on a lease of [`ANSWER_TTL`]; the revision of the write.
async fn put_answer(fleet: &Fleet, key: &str, value: &[u8]) -> Result<i64, String> {
    let lease = fleet
        .engine(fleet.etcd.grant(ANSWER_TTL).await)
        .map_err(|e| e.to_string())?;
    fleet
        .engine(fleet.etcd.put(key.as_bytes(), value, lease).await)
        .map_err(|e| e.to_string())
}

/// The most engine reads the http-01 responder makes at once for tokens it does not
/// hold: the CA makes a few requests per order, and anyone can send requests for made-up
/// tokens, which must not turn into a flood of engine reads.
const LOOKUPS: usize = 8;

pub struct EngineTokens {
    fleet: Arc<Fleet>,
    lookups: tokio::sync::Semaphore,
}

impl EngineTokens {
    pub fn new(fleet: Arc<Fleet>) -> EngineTokens {
        EngineTokens {
            fleet,
            lookups: tokio::sync::Semaphore::new(LOOKUPS),
        }
    }

    fn key(&self, token: &str) -> String {
        format!("{}challenges/http01/{token}", self.fleet.prefix)
    }
}

/// Whether `token` can be an ACME token (RFC 8555 §8.1: base64url, 128 bits or more; CAs
/// use 43 characters): anything else is not worth an engine read.
fn plausible_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SharedTokens for EngineTokens {
    fn put<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> TokenFuture<'a, Result<(), String>> {
        Box::pin(async move {
            put_answer(&self.fleet, &self.key(token), key_authorization.as_bytes())
                .await
                .map(|_| ())
        })
    }

    fn get<'a>(&'a self, token: &'a str) -> TokenFuture<'a, Option<String>> {
        Box::pin(async move {
            if !plausible_token(token) {
                return None;
            }
            // Busy with others: this one is answered 404, and the CA retries.
            let _permit = self.lookups.try_acquire().ok()?;
            let fleet = &self.fleet;
            let (kv, _) = fleet
                .engine(fleet.etcd.get(self.key(token).as_bytes()).await)
                .ok()?;
            String::from_utf8(kv?.value).ok()
        })
    }

    fn clear<'a>(&'a self, token: &'a str) -> TokenFuture<'a, ()> {
        Box::pin(async move {
            let fleet = &self.fleet;
            let _ = fleet.engine(fleet.etcd.delete(self.key(token).as_bytes()).await);
        })
    }
}

/// A tls-alpn-01 answer as the engine holds it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlpnAnswer {
    /// `dns:NAME` or `ip:ADDRESS`.
    pub identifier: String,
    /// The SHA-256 of the key authorization, in hex.
    pub digest: String,
}

impl AlpnAnswer {
    pub fn new(identifier: &Identifier, digest: &[u8]) -> Result<AlpnAnswer, String> {
        let identifier = match identifier {
            Identifier::Dns(name) => format!("dns:{name}"),
            Identifier::Ip(ip) => format!("ip:{ip}"),
            other => return Err(format!("cannot validate identifier {other:?}")),
        };
        Ok(AlpnAnswer {
            identifier,
            digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// The identifier and digest back.
    pub fn parts(&self) -> Option<(Identifier, Vec<u8>)> {
        let identifier = match self.identifier.split_once(':')? {
            ("dns", name) => Identifier::Dns(name.to_string()),
            ("ip", ip) => Identifier::Ip(ip.parse::<IpAddr>().ok()?),
            _ => return None,
        };
        let hex = self.digest.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let digest = hex
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some((identifier, digest))
    }
}

pub struct EngineAlpn(pub Arc<Fleet>);

/// Where the answer for `sni` is kept.
pub fn alpn_key(fleet: &Fleet, sni: &str) -> String {
    format!("{}challenges/alpn/{sni}", fleet.prefix)
}

/// Where the replicas acknowledge the answer for `sni`.
pub fn alpn_acks(fleet: &Fleet, sni: &str) -> String {
    format!("{}challenges/alpn-acks/{sni}/", fleet.prefix)
}

impl SharedAlpn for EngineAlpn {
    fn put<'a>(
        &'a self,
        sni: &'a str,
        identifier: &'a Identifier,
        digest: &'a [u8],
    ) -> TokenFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let fleet = &self.0;
            let answer = AlpnAnswer::new(identifier, digest)?;
            let value = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
            let revision = put_answer(fleet, &alpn_key(fleet, sni), &value).await?;
            // A member that is alive acknowledges within moments; one that is paused or
            // cut off leaves the list once its lease lapses.
            let wait = fleet.lease_ttl + Duration::from_secs(1);
            super::members::wait_for_all(fleet, &alpn_acks(fleet, sni), revision, wait).await;
            Ok(())
        })
    }

    fn clear<'a>(&'a self, sni: &'a str) -> TokenFuture<'a, ()> {
        Box::pin(async move {
            let fleet = &self.0;
            let _ = fleet.engine(fleet.etcd.delete(alpn_key(fleet, sni).as_bytes()).await);
            let _ = fleet.engine(
                fleet
                    .etcd
                    .delete_prefix(alpn_acks(fleet, sni).as_bytes())
                    .await,
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_shaped_names_are_looked_up() {
        assert!(plausible_token(
            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
        ));
        for made_up in [
            "",
            "abc",
            "../../etc/passwd",
            "a%2Fb-long-enough-token",
            &"a".repeat(129),
            "token with spaces in it",
        ] {
            assert!(!plausible_token(made_up), "{made_up:?}");
        }
    }

    #[test]
    fn an_alpn_answer_reads_back_as_written() {
        let digest: Vec<u8> = (0..32).collect();
        for identifier in [
            Identifier::Dns("a.example".into()),
            Identifier::Ip("2001:db8::1".parse().unwrap()),
        ] {
            let answer = AlpnAnswer::new(&identifier, &digest).unwrap();
            let json = serde_json::to_string(&answer).unwrap();
            let back: AlpnAnswer = serde_json::from_str(&json).unwrap();
            assert_eq!(back.parts(), Some((identifier, digest.clone())));
        }
        let short = AlpnAnswer {
            identifier: "dns:a.example".into(),
            digest: "00ff".into(),
        };
        assert_eq!(short.parts(), None, "a digest is 32 bytes");
        let odd = AlpnAnswer {
            identifier: "uri:x".into(),
            digest: "00".repeat(32),
        };
        assert_eq!(odd.parts(), None);
    }
}
