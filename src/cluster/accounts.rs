//! The fleet's one ACME account per CA ([`EngineAccounts`]): under
//! `wssd/<name>/accounts/<directory digest>`, sealed with the fleet key (it holds the
//! account's private key), created only if absent. The first replica that needs an
//! account stores its own (or the one on its disk); every other replica uses that one,
//! so the CA sees one account for the fleet, whose rate limits count the fleet once.

use std::sync::Arc;

use super::etcd::{Compare, Op};
use super::fleet::Fleet;
use crate::acme::account::{AccountFuture, SharedAccounts};

pub struct EngineAccounts(pub Arc<Fleet>);

impl EngineAccounts {
    fn key(&self, directory: &str) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
        let short: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}accounts/{short}", self.0.prefix)
    }

    fn open(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, String> {
        let sealed = std::str::from_utf8(value).map_err(|_| "not a sealed value".to_string())?;
        self.0
            .key
            .open(key, sealed)
            .map_err(|e| format!("{key}: {e}"))
    }
}

impl SharedAccounts for EngineAccounts {
    fn get<'a>(&'a self, directory: &'a str) -> AccountFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            let fleet = &self.0;
            let key = self.key(directory);
            let (kv, _) = fleet
                .engine(fleet.etcd.get(key.as_bytes()).await)
                .map_err(|e| e.to_string())?;
            kv.map(|kv| self.open(&key, &kv.value)).transpose()
        })
    }

    fn offer<'a>(
        &'a self,
        directory: &'a str,
        account: &'a [u8],
    ) -> AccountFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let fleet = &self.0;
            let key = self.key(directory);
            let sealed = fleet.key.seal(&key, account).map_err(|e| e.to_string())?;
            let txn = fleet
                .engine(
                    fleet
                        .etcd
                        .txn(
                            &[Compare::Created(key.clone().into_bytes(), 0)],
                            &[Op::Put {
                                key: key.clone().into_bytes(),
                                value: sealed.into_bytes(),
                                lease: 0,
                            }],
                            &[Op::Get(key.clone().into_bytes())],
                        )
                        .await,
                )
                .map_err(|e| e.to_string())?;
            if txn.succeeded {
                return Ok(account.to_vec());
            }
            match txn.read.first() {
                Some(kv) => self.open(&key, &kv.value),
                None => Err(format!("{key}: neither stored nor found")),
            }
        })
    }
}
