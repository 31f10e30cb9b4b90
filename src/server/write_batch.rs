//! The TLS stream of an HTTP/2 connection, with its writes gathered into one system call
//! per turn of the connection's task instead of one per response.
//!
//! The h2 crate flushes its transport before it encodes a frame that follows a DATA
//! payload of 256 bytes or more (it hands the payload to a vectored write instead of
//! copying it), and tokio-rustls writes to the socket on every write. So every proxied
//! response of 256 bytes or more was a `writev` of its own, however many responses were
//! ready at once. Here a write only encrypts into rustls's send buffer, and a flush is
//! put off: the task is woken, and the bytes go out in one `writev` the next time the
//! connection is polled, after the other tasks that were ready have run (often more
//! responses for the same connection).
//!
//! The next poll of h2's connection always starts with a read (it reads until the
//! transport has nothing more, then writes), and that read sends what was put off. A
//! shutdown, a full send buffer, or a second flush with nothing written since the first,
//! sends at once.

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// A server TLS stream whose flushes wait for the next read (see the module docs).
pub struct BatchedTls<IO> {
    tls: Box<TlsStream<IO>>,
    /// A flush was asked for and put off: what rustls holds goes out before the next read.
    flush_pending: bool,
    /// Something was written since the flush was put off.
    written: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> BatchedTls<IO> {
    pub fn new(tls: Box<TlsStream<IO>>) -> BatchedTls<IO> {
        BatchedTls {
            tls,
            flush_pending: false,
            written: false,
        }
    }

    /// Sends what rustls holds, as tokio-rustls's flush does.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.tls).poll_flush(cx);
        if result.is_ready() {
            self.flush_pending = false;
        }
        result
    }

    /// Encrypts into rustls's send buffer; when that is full, sends it first.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let written = write(&mut self.tls.get_mut().1.writer())?;
        if written > 0 {
            self.written = true;
            return Poll::Ready(Ok(written));
        }
        // Nothing taken: the send buffer is at its limit (or the write was empty).
        std::task::ready!(self.poll_send(cx))?;
        Poll::Ready(write(&mut self.tls.get_mut().1.writer()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for BatchedTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flush_pending {
            // A full socket leaves it pending, with the task registered for when it can
            // take more; reading goes on meanwhile.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for BatchedTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_write_with(cx, |w| w.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        self.get_mut()
            .poll_write_with(cx, |w| w.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.get_ref().1.wants_write() {
            this.flush_pending = false;
            return Poll::Ready(Ok(()));
        }
        if this.flush_pending && !this.written {
            // Nothing new since the flush that was put off: this one is not put off
            // again.
            return this.poll_send(cx);
        }
        this.flush_pending = true;
        this.written = false;
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(()))
    }

    /// tokio-rustls's shutdown queues the close_notify behind what rustls holds and sends
    /// it all.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flush_pending = false;
        Pin::new(&mut this.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// The server's end of the transport, counting the writes that reach it (the system
    /// calls, on a socket).
    struct Counted {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    /// A finished TLS 1.3 handshake over an in-memory pipe: the server's stream (on a
    /// counted transport) and the client's.
    async fn pair() -> (Box<TlsStream<Counted>>, Client, Arc<AtomicUsize>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = key.cert.der().clone();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (c, s) = tokio::io::duplex(1 << 16);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            inner: s,
            writes: writes.clone(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = pki_types::ServerName::try_from("localhost").unwrap();
        let (s, c) = tokio::join!(acceptor.accept(counted), connector.connect(name, c));
        (Box::new(s.unwrap()), c.unwrap(), writes)
    }

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// What h2 does with five responses of 1 KiB ready at once: a write and a flush for
    /// each, then (on the task's next turn) a read.
    fn five_responses<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, cx: &mut Context<'_>) {
        for i in 0..5u8 {
            let body = [b'a' + i; 1024];
            assert!(matches!(
                Pin::new(&mut *stream).poll_write(cx, &body),
                Poll::Ready(Ok(1024))
            ));
            assert!(matches!(
                Pin::new(&mut *stream).poll_flush(cx),
                Poll::Ready(Ok(()))
            ));
        }
    }

    async fn read_exactly(client: &mut Client, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        client.read_exact(&mut got).await.unwrap();
        got
    }

    fn expected() -> Vec<u8> {
        (0..5u8).flat_map(|i| [b'a' + i; 1024]).collect()
    }

    #[tokio::test]
    async fn five_flushed_responses_go_out_in_one_write_at_the_next_read() {
        // tokio-rustls alone writes to the transport at every write.
        let (mut plain, mut client, writes) = pair().await;
        writes.store(0, Ordering::SeqCst);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = flag.clone().into();
        let mut cx = Context::from_waker(&waker);
        five_responses(&mut plain, &mut cx);
        assert_eq!(writes.load(Ordering::SeqCst), 5);
        assert_eq!(read_exactly(&mut client, 5 * 1024).await, expected());

        let (tls, mut client, writes) = pair().await;
        let mut batched = BatchedTls::new(tls);
        writes.store(0, Ordering::SeqCst);
        five_responses(&mut batched, &mut cx);
        assert_eq!(writes.load(Ordering::SeqCst), 0, "nothing sent yet");
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the task is woken to send it"
        );
        let mut buf = [0u8; 16];
        let mut read = ReadBuf::new(&mut buf);
        assert!(
            Pin::new(&mut batched)
                .poll_read(&mut cx, &mut read)
                .is_pending()
        );
        assert_eq!(writes.load(Ordering::SeqCst), 1, "all five in one write");
        assert_eq!(read_exactly(&mut client, 5 * 1024).await, expected());
    }

    #[tokio::test]
    async fn a_put_off_flush_is_sent_by_a_second_flush_or_the_shutdown() {
        let (tls, mut client, writes) = pair().await;
        let mut batched = BatchedTls::new(tls);
        writes.store(0, Ordering::SeqCst);
        batched.write_all(b"one").await.unwrap();
        batched.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::SeqCst), 0);
        // A second flush with nothing written since: sent.
        batched.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        assert_eq!(read_exactly(&mut client, 3).await, b"one");

        batched.write_all(b"two").await.unwrap();
        batched.flush().await.unwrap();
        batched.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"two", "sent before the close_notify");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_send_buffer_waits_for_the_reader() {
        let (tls, mut client, _) = pair().await;
        let mut batched = BatchedTls::new(tls);
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            batched.write_all(&sent).await.unwrap();
            batched.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrive intact and in order");
    }
}
