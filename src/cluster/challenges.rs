//! The fleet's shared http-01 answers ([`EngineTokens`]): the replica that places an
//! order stores each answer under `wssd/<name>/challenges/http01/<token>` before it tells
//! the CA to validate, and any replica's responder reads it from there when the CA's
//! request reaches it. A read goes to the engine itself, so an answer is visible to every
//! replica as soon as the write has returned. Each answer has a lease of its own, so the
//! answers of a replica that died mid-order go by themselves.

use std::sync::Arc;
use std::time::Duration;

use super::fleet::Fleet;
use crate::acme::challenge::{SharedTokens, TokenFuture};

/// How long a stored answer lives at most (an order's validation takes seconds).
const ANSWER_TTL: Duration = Duration::from_secs(600);

pub struct EngineTokens(pub Arc<Fleet>);

impl EngineTokens {
    fn key(&self, token: &str) -> String {
        format!("{}challenges/http01/{token}", self.0.prefix)
    }
}

impl SharedTokens for EngineTokens {
    fn put<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> TokenFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let fleet = &self.0;
            let lease = fleet
                .engine(fleet.etcd.grant(ANSWER_TTL).await)
                .map_err(|e| e.to_string())?;
            fleet
                .engine(
                    fleet
                        .etcd
                        .put(
                            self.key(token).as_bytes(),
                            key_authorization.as_bytes(),
                            lease,
                        )
                        .await,
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn get<'a>(&'a self, token: &'a str) -> TokenFuture<'a, Option<String>> {
        Box::pin(async move {
            let fleet = &self.0;
            let (kv, _) = fleet
                .engine(fleet.etcd.get(self.key(token).as_bytes()).await)
                .ok()?;
            String::from_utf8(kv?.value).ok()
        })
    }

    fn clear<'a>(&'a self, token: &'a str) -> TokenFuture<'a, ()> {
        Box::pin(async move {
            let fleet = &self.0;
            let _ = fleet.engine(fleet.etcd.delete(self.key(token).as_bytes()).await);
        })
    }
}
