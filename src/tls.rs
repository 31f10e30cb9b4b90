//! The TLS policy, in one place: which crypto provider, protocol versions, cipher suites
//! and ALPN protocols wssd speaks, as server and as the `probe` client.
//!
//! Policy: TLS 1.2 and 1.3 only; ECDHE key exchange and AEAD ciphers only (AES-GCM and
//! ChaCha20-Poly1305), so every connection has forward secrecy. The certificate is not
//! part of the `ServerConfig`: it comes from the resolver on every handshake, which is
//! what lets a swap leave sessions, tickets and established connections alone.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self as provider_impl, cipher_suite};
use std::path::{Path, PathBuf};

use pki_types::CertificateDer;
use pki_types::pem::PemObject;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};

use crate::config::{ClientAuth, TlsConfig, TlsProfile};
use rustls::{ServerConfig, SupportedCipherSuite};

/// ALPN for WebSocket over HTTP/1.1 (RFC 6455 upgrades need HTTP/1.1).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol of the tls-alpn-01 challenge (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The suites wssd allows, strongest first: all three TLS 1.3 suites, then TLS 1.2 ECDHE
/// with AES-GCM or ChaCha20-Poly1305. No CBC, no RSA key exchange, no SHA-1 MACs.
static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The one crypto provider wssd uses (aws-lc-rs, with the suites above).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                cipher_suites: CIPHER_SUITES.to_vec(),
                ..provider_impl::default_provider()
            })
        })
        .clone()
}

/// Installs [`provider`] as the process default, so that any library building its own
/// rustls config (the ACME client) finds exactly one. Safe to call more than once.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls.client_ca_file {}: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// The listener's TLS configuration around a certificate resolver.
///
/// * `profile`: `intermediate` offers TLS 1.2 and 1.3, `modern` only TLS 1.3.
/// * Session resumption with stateless tickets whose keys rotate every six hours (and a
///   server-side session cache for TLS 1.2 clients without ticket support).
/// * With `client_ca_file`, client certificates are verified against it: required, or
///   verified only when offered (`client_auth = "optional"`).
/// * Certificate compression (RFC 8879) with brotli and zlib.
/// * ALPN `h2` (with `http2`) and `http/1.1`.
/// * With `acme_tls`, the listener also answers tls-alpn-01 validation (ALPN
///   `acme-tls/1`, RFC 8737).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    tls: &TlsConfig,
    acme_tls: bool,
    http2: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.profile {
        TlsProfile::Intermediate => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsProfile::Modern => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, tls.client_auth)?),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.ticketer = provider_impl::Ticketer::new()?;
    // Certificate compression (RFC 8879; brotli and zlib, the crate's defaults) for TLS 1.3
    // clients that offer it. Each chain is compressed once, at the slow setting, and
    // cached; rustls's default cache holds 4 compressions, which a few certificates
    // times two algorithms would overrun, and a miss compresses inside the handshake.
    // 64 entries cover 32 certificates and cost at most a few hundred KiB.
    config.cert_compression_cache = Arc::new(rustls::compress::CompressionCache::new(64));
    // h2 first: a client that speaks both prefers it (RFC 7301 lets the server choose;
    // rustls takes the server's order).
    config.alpn_protocols = if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
    } else {
        vec![ALPN_HTTP11.to_vec()]
    };
    if acme_tls {
        config.alpn_protocols.push(ALPN_ACME_TLS.to_vec());
    }
    Ok(Arc::new(config))
}

/// Adds every certificate of the PEM CA bundle at `path` to `roots` (the listener's
/// `client_ca_file`, `[acme] ca_file`, `probe --ca`). The error is the reason alone
/// (unreadable, no certificate in it, not a usable trust anchor); callers name the file.
pub fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    let bytes = crate::cert::read::read_pem_file(path).map_err(|e| match e {
        // The caller names the file.
        crate::cert::read::ReadError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn client_verifier(
    path: &Path,
    auth: Option<ClientAuth>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    add_pem_roots(&mut roots, path).map_err(bad)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if auth == Some(ClientAuth::Optional) {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| bad(e.to_string()))
}
