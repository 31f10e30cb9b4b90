//! The fleet's encryption key (`[cluster] encryption_key_file`): the private keys the
//! replicas share through the engine are stored sealed with it (AES-256-GCM), so that
//! whoever reads the engine (a backup, a snapshot, another tenant of the etcd) learns
//! nothing of them.
//!
//! The file holds 32 random bytes in base64 (`openssl rand -base64 32`), surrounding
//! whitespace allowed; it is a secret like the keys it protects (mode 0600). A sealed
//! value is `v1:` and the base64 of a 12-byte random nonce, the ciphertext and the
//! 16-byte tag. The associated data names what the value is (the certificate's key in
//! the engine), so a sealed key cannot be moved to another certificate unnoticed.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const PREFIX: &str = "v1:";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("a sealed value cannot be opened: {0}")]
    Open(&'static str),
    #[error("cannot seal: the crypto library refused")]
    Seal,
}

/// The fleet's key, ready to seal and open.
pub struct ClusterKey {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey { .. }")
    }
}

impl ClusterKey {
    /// Reads the key file. Its contents never appear in an error.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let file_error = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = crate::cert::read::read_pem_file(path).map_err(|e| file_error(e.to_string()))?;
        ClusterKey::from_text(&text).map_err(file_error)
    }

    /// The key from the file's text: 32 bytes in base64.
    pub fn from_text(text: &[u8]) -> Result<ClusterKey, String> {
        let text = std::str::from_utf8(text).map_err(|_| {
            "is not text; it should hold 32 random bytes in base64 (openssl rand -base64 32)"
                .to_string()
        })?;
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            "is not base64; it should hold 32 random bytes in base64 (openssl rand -base64 32)"
                .to_string()
        })?;
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "holds {} bytes, not {KEY_LEN}; make one with `openssl rand -base64 32`",
                bytes.len()
            ));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| "is not a usable AES-256 key".to_string())?;
        Ok(ClusterKey { key })
    }

    /// `plaintext` sealed, bound to `context` (what the value is).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, KeyError> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| KeyError::Seal)?;
        let mut out = nonce.as_ref().to_vec();
        out.extend_from_slice(&in_out);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// A value [`ClusterKey::seal`] made for the same `context` with the same key.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or(KeyError::Open("not a sealed value of this version"))?;
        let mut bytes = STANDARD
            .decode(body)
            .map_err(|_| KeyError::Open("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(KeyError::Open("too short"));
        }
        let mut in_out = bytes.split_off(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&bytes).map_err(|_| KeyError::Open("bad nonce"))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| {
                KeyError::Open("wrong key, wrong certificate, or altered (every replica needs the same encryption_key_file)")
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    fn key(text: &str) -> ClusterKey {
        ClusterKey::from_text(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_context_only() {
        let k = key(KEY);
        let sealed = k.seal("certs/a.example", b"private key").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("private"));
        assert_eq!(k.open("certs/a.example", &sealed).unwrap(), b"private key");
        assert!(
            k.open("certs/b.example", &sealed).is_err(),
            "moved to another certificate"
        );
        let other = key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert!(
            other.open("certs/a.example", &sealed).is_err(),
            "another fleet's key"
        );
        // A fresh nonce every time: the same plaintext never seals the same.
        assert_ne!(sealed, k.seal("certs/a.example", b"private key").unwrap());
    }

    #[test]
    fn an_altered_or_malformed_value_is_refused() {
        let k = key(KEY);
        let sealed = k.seal("c", b"secret").unwrap();
        let mut raw = STANDARD.decode(&sealed[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = format!("v1:{}", STANDARD.encode(raw));
        assert!(k.open("c", &altered).is_err());
        for bad in ["", "v1:", "v1:!!", "v2:AAAA", "v1:AAAA"] {
            assert!(k.open("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_file_is_32_bytes_of_base64() {
        assert!(ClusterKey::from_text(format!("  {KEY}\n").as_bytes()).is_ok());
        let short = ClusterKey::from_text(b"AAAA").unwrap_err();
        assert!(short.contains("holds 3 bytes, not 32"), "{short}");
        let junk = ClusterKey::from_text(b"not base64 at all!").unwrap_err();
        assert!(junk.contains("openssl rand -base64 32"), "{junk}");
        assert!(ClusterKey::from_text(&[0xff, 0xfe]).is_err());
    }
}
