//! TLS certificate compression (RFC 8879) on the listener: a TLS 1.3 client that offers
//! brotli or zlib receives a compressed Certificate message, so fewer bytes, and still
//! verifies the chain and completes a WebSocket echo. Measured as the bytes the server
//! sends during the handshake, against the same client offering no compression.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use common::edge::*;
use pki_types::ServerName;
use rustls::compress::CertDecompressor;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that counts the bytes read from it.
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .fetch_add(buf.filled().len() - before, Ordering::SeqCst);
        polled
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The bytes wssd sent for one TLS 1.3 handshake (to the client's Finished), with the
/// client offering `decompressors`; the connection then carries a WebSocket echo, to
/// show the chain was read and verified.
async fn handshake_bytes(s: &Setup, decompressors: Vec<&'static dyn CertDecompressor>) -> usize {
    let mut config = (*s.client()).clone();
    config.cert_decompressors = decompressors;
    // Every handshake a full one: no session ticket to skip the certificate.
    config.resumption = rustls::client::Resumption::disabled();
    let read = Arc::new(AtomicUsize::new(0));
    let tcp = TcpStream::connect(s.wssd.addr).await.unwrap();
    let counting = Counting {
        inner: tcp,
        read: read.clone(),
    };
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), counting)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let bytes = read.load(Ordering::SeqCst);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut tls, &mut head)
        .await
        .unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_offer_brotli_or_zlib_get_a_smaller_handshake() {
    // The built-in echo; the chain is the leaf and the test CA (wssd serves both).
    let s = Setup::start("", "");
    let plain = handshake_bytes(&s, vec![]).await;
    let brotli = handshake_bytes(&s, vec![rustls::compress::BROTLI_DECOMPRESSOR]).await;
    let zlib = handshake_bytes(&s, vec![rustls::compress::ZLIB_DECOMPRESSOR]).await;
    let both = handshake_bytes(&s, rustls::compress::default_cert_decompressors().to_vec()).await;
    eprintln!(
        "server handshake bytes: uncompressed {plain}, brotli {brotli}, zlib {zlib}, both {both}"
    );
    // Two P-256 certificates are ~1 KiB of DER, of which names, OIDs and the issuer's
    // repeated DN compress; the signatures and keys do not. A tenth is a safe floor.
    assert!(brotli * 10 < plain * 9, "brotli {brotli} vs {plain}");
    assert!(zlib * 10 < plain * 9, "zlib {zlib} vs {plain}");
    assert!(
        both <= brotli.max(zlib),
        "both {both}: one of the two was chosen"
    );
    // Certificate size decides this; one more uncompressed handshake is as large as the first.
    let again = handshake_bytes(&s, vec![]).await;
    assert!(again.abs_diff(plain) < 16, "{again} vs {plain}");
}
