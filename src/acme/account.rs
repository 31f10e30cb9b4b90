//! The ACME account: created on first use (with `contact` and agreement to the CA's
//! terms), then stored under `data_dir` and reused on every later run, so wssd never
//! piles up accounts at the CA. One account per directory URL: pointing wssd at another
//! CA makes another account rather than sending this one's key there.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::AcmeError;
use super::http::AcmeHttp;
use crate::cert::store::{self, KEY_MODE, PRIVATE_DIR_MODE};
use crate::config::AcmeConfig;

/// What is stored: the directory it belongs to, and instant-acme's credentials (the
/// account key, PKCS#8, and the account URL).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Where the account for `directory` lives.
pub fn account_path(data_dir: &Path, directory: &str) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
    let short: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    data_dir.join("acme").join(format!("account-{short}.json"))
}

/// Every account file stored under `data_dir` (one per directory URL), for the check of
/// their modes.
pub fn account_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("acme")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .map(|e| e.path())
        .collect()
}

/// Where a fleet keeps the one ACME account all its replicas use, per directory URL:
/// `offer` stores one unless the fleet has one already.
pub trait SharedAccounts: Send + Sync {
    /// The fleet's account for `directory` (as stored), if it has one.
    fn get<'a>(&'a self, directory: &'a str) -> AccountFuture<'a, Result<Option<Vec<u8>>, String>>;
    /// Stores `account` for `directory` unless the fleet has one; returns the fleet's
    /// account afterwards (this one, or the one another replica stored first).
    fn offer<'a>(
        &'a self,
        directory: &'a str,
        account: &'a [u8],
    ) -> AccountFuture<'a, Result<Vec<u8>, String>>;
}

pub type AccountFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Loads the stored account for the configured CA, or creates and stores one. In a
/// fleet (`shared`), the fleet's account wins over this machine's: one account for every
/// replica, so rate limits and the CA's records count the fleet once.
pub async fn load_or_create(
    config: &AcmeConfig,
    data_dir: &Path,
    http: &AcmeHttp,
    shared: Option<&dyn SharedAccounts>,
) -> Result<Account, AcmeError> {
    let path = account_path(data_dir, &config.directory);
    let engine = |reason: String| AcmeError::Account {
        reason: format!("the fleet's account in the engine: {reason}"),
    };
    if let Some(shared) = shared
        && let Some(json) = shared.get(&config.directory).await.map_err(engine)?
    {
        return adopt_fleet_account(config, &path, http, &json).await;
    }
    let (stored, created) = match read_local(config, &path)? {
        Some(stored) => (stored, false),
        None => (create(config, &path, http).await?, true),
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::AccountFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if created {
        store::write_atomic(&path, &json, KEY_MODE)?;
    }
    if let Some(shared) = shared {
        let fleet = shared
            .offer(&config.directory, &json)
            .await
            .map_err(engine)?;
        if fleet != json {
            // Another replica stored its account first (both were new): use that one.
            return adopt_fleet_account(config, &path, http, &fleet).await;
        }
    }
    let account = open(stored, &path, http, &config.directory).await?;
    if created {
        info!(account = account.id(), directory = %config.directory, file = %path.display(), "created an ACME account");
    } else {
        info!(account = account.id(), directory = %config.directory, "using the stored ACME account");
    }
    Ok(account)
}

/// Uses the fleet's account, and keeps a copy in this machine's account file.
async fn adopt_fleet_account(
    config: &AcmeConfig,
    path: &Path,
    http: &AcmeHttp,
    json: &[u8],
) -> Result<Account, AcmeError> {
    let stored = parse(json, path, &config.directory)?;
    if std::fs::read(path).ok().as_deref() != Some(json) {
        if let Some(dir) = path.parent() {
            store::ensure_dir(dir, PRIVATE_DIR_MODE)?;
        }
        store::write_atomic(path, json, KEY_MODE)?;
    }
    let account = open(stored, path, http, &config.directory).await?;
    info!(account = account.id(), directory = %config.directory, "using the fleet's ACME account");
    Ok(account)
}

fn parse(json: &[u8], path: &Path, directory: &str) -> Result<StoredAccount, AcmeError> {
    let stored: StoredAccount =
        serde_json::from_slice(json).map_err(|e| AcmeError::AccountFile {
            path: path.to_path_buf(),
            reason: format!("not a wssd account file ({e}); move it away to create a new account"),
        })?;
    if stored.directory != directory {
        return Err(AcmeError::AccountFile {
            path: path.to_path_buf(),
            reason: format!("it belongs to {}, not {}", stored.directory, directory),
        });
    }
    Ok(stored)
}

/// This machine's account for the configured CA; `None` when there is none yet.
fn read_local(config: &AcmeConfig, path: &Path) -> Result<Option<StoredAccount>, AcmeError> {
    match std::fs::read(path) {
        Ok(json) => parse(&json, path, &config.directory).map(Some),
        // Only a missing file means "no account yet": anything else must not be replaced.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AcmeError::AccountFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

async fn open(
    stored: StoredAccount,
    path: &Path,
    http: &AcmeHttp,
    directory: &str,
) -> Result<Account, AcmeError> {
    Account::builder_with_http(Box::new(http.clone()))
        .from_credentials(stored.credentials)
        .await
        .map_err(|e| match e {
            instant_acme::Error::KeyRejected | instant_acme::Error::Crypto => {
                AcmeError::AccountFile {
                    path: path.to_path_buf(),
                    reason: "its account key is unusable; move it away to create a new account"
                        .into(),
                }
            }
            other => AcmeError::from_acme(other, directory, None),
        })
}

/// A new account at the CA (not stored yet).
async fn create(
    config: &AcmeConfig,
    path: &Path,
    http: &AcmeHttp,
) -> Result<StoredAccount, AcmeError> {
    // Make sure the account can be stored before creating it at the CA.
    if let Some(dir) = path.parent() {
        store::ensure_dir(dir, PRIVATE_DIR_MODE)?;
    }
    let eab = match (&config.eab_kid, &config.eab_hmac_key) {
        (Some(kid), Some(hmac)) => {
            Some(ExternalAccountKey::new(kid.clone(), &decode_hmac(&hmac.0)?))
        }
        _ => None,
    };
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (_, credentials) = retry_bad_nonce!(
        Account::builder_with_http(Box::new(http.clone()))
            .create(&new, config.directory.clone(), eab.as_ref())
            .await
    )
    .map_err(|e| {
        let e = AcmeError::from_acme(e, &config.directory, None);
        match (&e, eab.is_some()) {
            (AcmeError::Problem { .. }, true) => AcmeError::Account {
                reason: format!("{e} (check eab_kid and eab_hmac_key)"),
            },
            _ => e,
        }
    })?;
    Ok(StoredAccount {
        directory: config.directory.clone(),
        credentials,
    })
}

/// EAB HMAC keys are handed out base64url-encoded (some CAs pad, some use the standard
/// alphabet); accept all of those.
fn decode_hmac(text: &str) -> Result<Vec<u8>, AcmeError> {
    use base64::Engine;
    let cleaned = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cleaned)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned))
        .map_err(|_| AcmeError::Account {
            reason: "acme.eab_hmac_key is not base64url (as the CA gives it)".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_per_directory() {
        let a = account_path(
            Path::new("/d"),
            "https://acme-v02.api.letsencrypt.org/directory",
        );
        let b = account_path(
            Path::new("/d"),
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        );
        assert_ne!(a, b);
        assert!(a.starts_with("/d/acme"));
    }

    #[test]
    fn hmac_keys_in_either_alphabet() {
        let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
        assert_eq!(decode_hmac(key).unwrap().len(), 48);
        assert!(decode_hmac("not base64!").is_err());
    }
}
