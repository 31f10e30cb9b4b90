//! The relay: after both 101s, WebSocket frames pass between client and upstream.
//!
//! Frames pass through as they are, the way nginx and HAProxy relay an upgraded
//! connection: a client's frames arrive masked, as the upstream expects, and the
//! upstream's arrive unmasked, as the client expects, so nothing is decoded, unmasked,
//! validated or re-encoded here, and the upstream sees exactly what the client sent
//! (extensions such as permessage-deflate included). Each direction is one loop: read
//! a chunk, let the [`FrameTracker`] walk its frame headers, write the chunk on.
//!
//! wssd still speaks up when it must close a connection itself. For drain on SIGTERM and
//! `idle_timeout` it starts a normal closing handshake: both loops are told through
//! `Shared::request_close`, each finishes the frame in flight, injects a close frame at
//! the boundary (masked towards the upstream), and stops forwarding; the client's close
//! reply ends the connection. A frame that breaks a rule wssd enforces (a message over
//! `max_message_size`, a control frame over 125 bytes, a reserved opcode) *fails* the
//! connection (RFC 6455 §7.1.7): close frames with 1009 or 1002, then wssd closes the TCP
//! connections itself, waiting for no reply. When the client broke the rule, the upstream
//! is told first, and what it had already sent still reaches the client, up to the
//! upstream's close reply (for at most [`FAIL_GRACE`]); in that reply's place the client
//! gets wssd's close. So the client sees what a direct connection would show.
//!
//! A closing handshake a peer started is left to the peers: once the client has sent a
//! close, an upstream that then drops TCP ends the connection without a 1011 from wssd;
//! once the upstream has sent a close, the rest of the client's bytes are passed on (or
//! discarded) without being judged.
//!
//! Measured before choosing (release build, 50 connections echoing through wssd to a
//! local upstream, wssd's user+sys CPU per round trip, 2 cores shared with the client):
//! pass-through 12.7 µs at 64 B and 20.4 µs at 16 KiB; decoding and re-encoding every
//! message with tokio-tungstenite on both sides 17.6 µs and 33.6 µs, with ~15% lower
//! throughput at 64 B. The benchmark suite (`bench/`) measures the relay against nginx and HAProxy.
//!
//! What the relay carried reaches `wssd_relay_bytes_total` and `wssd_relay_messages_total`
//! while the connection is open: each pump adds its unreported counts when a chunk goes
//! by at least [`REPORT_EVERY`] after its last report, and at the end. A chunk already
//! reads the clock (for `idle_timeout`), so this costs a comparison per chunk and two
//! shared counter updates per direction every few seconds, not a shared write per chunk.
//!
//! Both directions run in the connection's own task (no extra spawn), each with one
//! fixed buffer; the write of a chunk completes before the next read, so a slow reader
//! on one side slows the other side's sender (TCP backpressure), and memory stays flat.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::frame::{Advance, CLOSE_TOO_BIG, FrameTracker, close_frame};
use crate::metrics::Metrics;

/// Each direction's read buffer starts small, so an idle connection costs little (1 KiB
/// instead of 4 KiB took wssd from ~20 to ~14 KiB per idle connection at 9,000 of them),
/// and doubles whenever a read fills it, up to a size where a 16 KiB message plus its
/// frame header moves in one read and one write (measured: 16 KiB buffers cost ~25% more
/// CPU per 16 KiB message than 64 KiB ones, as each message took two reads and two
/// writes). A busy connection reaches 64 KiB after six full reads.
const CHUNK_START: usize = 1024;
const CHUNK_MAX: usize = 64 * 1024;
/// After one side has gone, how long the other may take to finish.
const LINGER: Duration = Duration::from_secs(5);
/// When the client broke a rule: how long the upstream's frames (and its close reply to
/// wssd's close) may still reach the client before wssd closes the client itself.
pub const FAIL_GRACE: Duration = Duration::from_secs(1);
/// After failing a connection: how long the client's remaining bytes (the rest of an
/// oversize message, say) are read and discarded, so that closing the socket does not
/// reset the connection before the client has read wssd's close frame.
const DISCARD: Duration = Duration::from_secs(2);

/// How often a busy pump adds its counts to the metrics (see the module docs).
const REPORT_EVERY: Duration = Duration::from_secs(5);

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// wssd's keepalive ping to the client: unmasked, payload "wssd".
const PING: &[u8] = &[0x89, 0x04, b'w', b's', b's', b'd'];

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_size: u64,
    pub idle_timeout: Duration,
}

/// What the relay saw, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    pub messages_up: u64,
    pub messages_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The close code wssd sent itself, if it closed the connection.
    pub closed_by_wssd: Option<u16>,
}

/// State the two directions share. Everything runs in the connection's one task, so a
/// signal is a flag plus a wake-up of that task, after which every pump looks at the
/// flags again (atomics only because the task must be `Send`). A pump waiting for data
/// then checks two flags per poll instead of registering with a `Notify` or a
/// `CancellationToken` per read (their locks were ~3% of the relay's CPU per message).
struct Shared {
    /// wssd closes the connection (drain, idle timeout, a limit broken).
    closing: AtomicBool,
    /// wssd fails the connection: no close reply is waited for.
    failing: AtomicBool,
    /// The client broke a rule; the upstream has been told, the client is told when the
    /// upstream's close reply comes, or after [`FAIL_GRACE`].
    client_failed: AtomicBool,
    /// A close frame from the client has gone by (the client started or answered a
    /// closing handshake).
    client_closed: AtomicBool,
    /// A close frame from the upstream has gone by.
    upstream_closed: AtomicBool,
    /// The upstream-to-client pump is to send the client a ping (keepalive).
    ping: AtomicBool,
    code: AtomicU16,
    reason: std::sync::OnceLock<&'static str>,
    started: Instant,
    last_activity_ms: AtomicU64,
}

impl Shared {
    /// Asks both pumps to close at their next frame boundary. The caller must then
    /// [`repoll`], so that a pump waiting for data sees the request.
    fn request_close(&self, code: u16, reason: &'static str) {
        if self.reason.set(reason).is_ok() {
            self.code.store(code, Ordering::Relaxed);
        }
        self.closing.store(true, Ordering::Relaxed);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Fails the connection with `code`: both pumps close at their next boundary and wait
    /// for no reply.
    fn fail(&self, code: u16, reason: &'static str) {
        self.failing.store(true, Ordering::Relaxed);
        self.request_close(code, reason);
    }

    /// The client broke a rule: the Up pump tells the upstream now, the client hears of it
    /// in place of the upstream's close reply, or after the grace period ([`fail_grace`]).
    fn client_failed(&self, code: u16, reason: &'static str) {
        if self.reason.set(reason).is_ok() {
            self.code.store(code, Ordering::Relaxed);
        }
        self.failing.store(true, Ordering::Relaxed);
        self.client_failed.store(true, Ordering::Relaxed);
    }

    /// Notes activity now; returns the milliseconds since the relay started.
    fn touch(&self) -> u64 {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
        ms
    }

    fn close_frame(&self, masked: bool) -> Vec<u8> {
        let code = self.code.load(Ordering::Relaxed);
        close_frame(
            code,
            self.reason.get().copied().unwrap_or("going away"),
            masked,
        )
    }
}

/// Has the connection's task polled again once the current poll is over, so that the
/// pumps see a flag just set in [`Shared`].
async fn repoll() {
    std::future::poll_fn(|cx| {
        cx.waker().wake_by_ref();
        Poll::Ready(())
    })
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → upstream: frames are masked; wssd's injected close must be masked too.
    Up,
    /// Upstream → client.
    Down,
}

/// Relays until both sides are done. `client_early` and `upstream_early` are bytes each
/// side sent right after its HTTP head (already read with it); they are frames too.
pub async fn relay<C, U>(
    client: C,
    client_early: &[u8],
    upstream: U,
    upstream_early: &[u8],
    limits: Limits,
    drain: &CancellationToken,
    metrics: &Metrics,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Shared {
        closing: AtomicBool::new(false),
        failing: AtomicBool::new(false),
        client_failed: AtomicBool::new(false),
        client_closed: AtomicBool::new(false),
        upstream_closed: AtomicBool::new(false),
        ping: AtomicBool::new(false),
        code: AtomicU16::new(CLOSE_GOING_AWAY),
        reason: std::sync::OnceLock::new(),
        started: Instant::now(),
        last_activity_ms: AtomicU64::new(0),
    };
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let mut up_pump = Pump::new(Direction::Up, limits.max_message_size);
    let mut down_pump = Pump::new(Direction::Down, limits.max_message_size);
    {
        let up = up_pump.run(&mut client_rd, &mut up_wr, client_early, &shared, metrics);
        // The grace timer runs with the Down pump, so that it keeps running whichever
        // side finished first.
        let down = async {
            tokio::select! {
                r = down_pump.run(&mut up_rd, &mut client_wr, upstream_early, &shared, metrics) => r,
                () = fail_grace(&shared) => Ok(()),
            }
        };
        let idle = idle_watch(&shared, limits.idle_timeout);
        let drained = async {
            drain.cancelled().await;
            shared.request_close(CLOSE_GOING_AWAY, "going away");
            repoll().await;
            std::future::pending::<()>().await
        };
        tokio::pin!(up, down, idle, drained);
        // When one direction ends cleanly, the other gets a moment to finish (the
        // peer's close reply, its EOF); when one fails, the connection is over.
        // Once wssd has asked for a close, the peers get LINGER to finish it, however
        // they behave (a client that stopped reading leaves a write pending forever).
        let close_deadline = async {
            // Woken with the pumps: whoever sets the flag also calls repoll().
            std::future::poll_fn(|_| {
                if shared.is_closing() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            tokio::time::sleep(LINGER).await;
        };
        tokio::select! {
            r = &mut up => if r.is_ok() { let _ = tokio::time::timeout(LINGER, &mut down).await; },
            r = &mut down => if r.is_ok() { let _ = tokio::time::timeout(LINGER, &mut up).await; },
            _ = &mut idle => {}
            _ = &mut drained => {}
            _ = close_deadline => {}
        }
    }
    // Close both sides for real: TLS close_notify to the client, FIN to the upstream.
    let _ = tokio::time::timeout(Duration::from_secs(1), client_wr.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), up_wr.shutdown()).await;
    if shared.is_failing() {
        discard(&mut client_rd).await;
    }
    up_pump.report(metrics);
    down_pump.report(metrics);
    RelayStats {
        messages_up: up_pump.tracker.messages,
        messages_down: down_pump.tracker.messages,
        bytes_up: up_pump.bytes,
        bytes_down: down_pump.bytes,
        closed_by_wssd: shared
            .is_closing()
            .then(|| shared.code.load(Ordering::Relaxed)),
    }
}

/// Reads and drops what the client still sends, until it closes or [`DISCARD`] passes.
async fn discard<R: AsyncRead + Unpin>(client: &mut R) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(DISCARD, async {
        while let Ok(n) = tokio::io::AsyncReadExt::read(client, &mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// After the client broke a rule: once [`FAIL_GRACE`] has passed without the upstream's
/// close reply, fails the connection towards the client too. Never returns.
async fn fail_grace(shared: &Shared) {
    std::future::poll_fn(|_| {
        if shared.client_failed.load(Ordering::Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    tokio::time::sleep(FAIL_GRACE).await;
    shared.closing.store(true, Ordering::Relaxed);
    repoll().await;
    std::future::pending::<()>().await
}

/// Asks for a close when neither side has sent anything for `idle`.
/// Keeps an eye on silence: after half of `idle` without traffic either way, the client
/// gets a ping (a live client answers with a pong, which counts as traffic); after all of
/// `idle`, the connection is closed with 1001.
async fn idle_watch(shared: &Shared, idle: Duration) {
    let mut pinged_at = None;
    loop {
        let last = Duration::from_millis(shared.last_activity_ms.load(Ordering::Relaxed));
        let deadline = shared.started + last + idle;
        let ping_at = shared.started + last + idle / 2;
        let now = Instant::now();
        if now >= deadline {
            shared.request_close(CLOSE_GOING_AWAY, "idle timeout");
            repoll().await;
            // Leave the close to the pumps; this future is done.
            std::future::pending::<()>().await;
        }
        let next = if pinged_at == Some(last) {
            deadline
        } else if now >= ping_at {
            shared.ping.store(true, Ordering::Relaxed);
            repoll().await;
            pinged_at = Some(last);
            deadline
        } else {
            ping_at
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

struct Pump {
    direction: Direction,
    tracker: FrameTracker,
    bytes: u64,
    /// What the metrics have of `bytes` and the tracker's messages, and when (ms since the
    /// relay started) they got it.
    reported: (u64, u64, u64),
    /// Close requested: stop at the next frame boundary.
    closing: bool,
    /// wssd's close frame has been written; what follows is discarded.
    injected: bool,
    /// A keepalive ping waits for the next frame boundary.
    pending_ping: bool,
}

/// What woke a pump waiting for data.
enum Event {
    Close,
    Ping,
    Read(std::io::Result<usize>),
}

/// What to do after a chunk.
enum Flow {
    Continue,
    Done,
}

impl Pump {
    /// Adds what this direction carried since its last report to the metrics.
    fn report(&mut self, metrics: &Metrics) {
        let (bytes, messages, _) = self.reported;
        let messages_now = self.tracker.messages;
        metrics.relayed(
            self.direction == Direction::Up,
            self.bytes - bytes,
            messages_now - messages,
        );
        self.reported.0 = self.bytes;
        self.reported.1 = messages_now;
    }

    fn new(direction: Direction, limit: u64) -> Pump {
        Pump {
            direction,
            tracker: FrameTracker::new(limit),
            bytes: 0,
            reported: (0, 0, 0),
            closing: false,
            injected: false,
            pending_ping: false,
        }
    }

    async fn run<R, W>(
        &mut self,
        src: &mut R,
        dst: &mut W,
        early: &[u8],
        shared: &Shared,
        metrics: &Metrics,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if !early.is_empty() && matches!(self.forward(early, dst, shared).await?, Flow::Done) {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK_START];
        loop {
            let read = match self.next_event(src, &mut buf, shared).await {
                Event::Close => {
                    self.closing = true;
                    // The upstream's own close already went to the client: nothing to add.
                    if self.direction == Direction::Down && self.tracker.close_seen {
                        return Ok(());
                    }
                    if self.tracker.at_boundary() {
                        self.inject(dst, shared).await?;
                        if self.direction == Direction::Down || shared.is_failing() {
                            return Ok(());
                        }
                    }
                    continue;
                }
                Event::Ping => {
                    if self.tracker.at_boundary() {
                        self.write(dst, PING).await?;
                    } else {
                        self.pending_ping = true;
                    }
                    continue;
                }
                Event::Read(read) => read,
            };
            let n = match read {
                Ok(0) => 0,
                Ok(n) => n,
                Err(e) => {
                    self.peer_gone(dst, shared).await;
                    return Err(e);
                }
            };
            if n == 0 {
                self.peer_gone(dst, shared).await;
                return Ok(());
            }
            let now_ms = shared.touch();
            if let Flow::Done = self.forward(&buf[..n], dst, shared).await? {
                return Ok(());
            }
            if now_ms >= self.reported.2 + REPORT_EVERY.as_millis() as u64 {
                self.report(metrics);
                self.reported.2 = now_ms;
            }
            if self.tracker.close_seen {
                let flag = match self.direction {
                    Direction::Up => &shared.client_closed,
                    Direction::Down => &shared.upstream_closed,
                };
                flag.store(true, Ordering::Relaxed);
            }
            if n == buf.len() && buf.len() < CHUNK_MAX {
                buf.resize(buf.len() * 2, 0);
            }
        }
    }

    /// Waits for data from `src`, or for a close or ping request in `shared`.
    async fn next_event<R: AsyncRead + Unpin>(
        &self,
        src: &mut R,
        buf: &mut [u8],
        shared: &Shared,
    ) -> Event {
        std::future::poll_fn(|cx| {
            if !self.closing && shared.is_closing() {
                return Poll::Ready(Event::Close);
            }
            if self.direction == Direction::Down
                && !self.closing
                && shared.ping.swap(false, Ordering::Relaxed)
            {
                return Poll::Ready(Event::Ping);
            }
            let mut read = ReadBuf::new(buf);
            Pin::new(&mut *src)
                .poll_read(cx, &mut read)
                .map(|r| Event::Read(r.map(|()| read.filled().len())))
        })
        .await
    }

    /// The source ended (EOF or error). If it left without a closing handshake and we
    /// are between frames, tell the other side in WebSocket terms rather than just cutting
    /// the connection: 1011 to the client when the upstream went away, 1001 to the
    /// upstream when the client did. Then end our half.
    async fn peer_gone<W: AsyncWrite + Unpin>(&mut self, dst: &mut W, shared: &Shared) {
        if !self.injected && !self.tracker.close_seen && self.tracker.at_boundary() {
            let frame = match self.direction {
                // wssd failed the client's connection and the upstream left instead of
                // answering: the client hears wssd's close.
                Direction::Down if shared.is_failing() => Some(shared.close_frame(false)),
                // The client started closing; the upstream ending TCP is its answer.
                Direction::Down if shared.client_closed.load(Ordering::Relaxed) => None,
                Direction::Down => Some(close_frame(
                    CLOSE_INTERNAL_ERROR,
                    "upstream went away",
                    false,
                )),
                Direction::Up if shared.upstream_closed.load(Ordering::Relaxed) => None,
                Direction::Up => Some(close_frame(CLOSE_GOING_AWAY, "client went away", true)),
            };
            if let Some(frame) = frame {
                let _ = dst.write_all(&frame).await;
                let _ = dst.flush().await;
                self.injected = true;
            }
        }
        let _ = dst.shutdown().await;
    }

    async fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        mut chunk: &[u8],
        dst: &mut W,
        shared: &Shared,
    ) -> std::io::Result<Flow> {
        // Once the upstream has sent its close, the client's bytes are no longer judged:
        // the handshake is the upstream's, and a client replying mid-frame is not wssd's
        // to fail.
        if self.direction == Direction::Up && shared.upstream_closed.load(Ordering::Relaxed) {
            self.tracker.relax();
        }
        // The client broke a rule and must hear wssd's close code: the upstream's frames
        // still pass, its close frame (its reply to wssd's) is replaced by wssd's own.
        if self.direction == Direction::Down && shared.client_failed.load(Ordering::Relaxed) {
            self.tracker.stop_before_close();
        }
        loop {
            if self.injected {
                return Ok(self.after_injection(chunk, shared));
            }
            match self
                .tracker
                .advance(chunk, self.closing || self.pending_ping)
            {
                Advance::Consumed => {
                    self.write(dst, chunk).await?;
                    return Ok(Flow::Continue);
                }
                Advance::BeforeClose(at) => {
                    self.write(dst, &chunk[..at]).await?;
                    self.inject(dst, shared).await?;
                    return Ok(Flow::Done);
                }
                Advance::Boundary(at) => {
                    self.write(dst, &chunk[..at]).await?;
                    if self.closing {
                        self.inject(dst, shared).await?;
                    } else {
                        self.write(dst, PING).await?;
                        self.pending_ping = false;
                    }
                    chunk = &chunk[at..];
                }
                Advance::Violation {
                    code,
                    header_at,
                    resume_at,
                } => {
                    let reason = if code == CLOSE_TOO_BIG {
                        "message too big"
                    } else {
                        "protocol error"
                    };
                    match self.direction {
                        Direction::Up => shared.client_failed(code, reason),
                        Direction::Down => shared.fail(code, reason),
                    }
                    repoll().await;
                    self.closing = true;
                    if let Some(at) = header_at {
                        self.write(dst, &chunk[..at]).await?;
                        self.inject(dst, shared).await?;
                    } else {
                        // Part of the offending frame's header already went out; the peer
                        // gets no close frame, only the end of the connection.
                        self.injected = true;
                    }
                    return Ok(self.after_injection(&chunk[resume_at..], shared));
                }
            }
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        dst.write_all(bytes).await?;
        dst.flush().await?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    async fn inject<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        shared: &Shared,
    ) -> std::io::Result<()> {
        let frame = shared.close_frame(self.direction == Direction::Up);
        dst.write_all(&frame).await?;
        dst.flush().await?;
        self.injected = true;
        // From here on, a close from the source is the reply to ours.
        self.tracker.close_seen = false;
        Ok(())
    }

    /// After wssd's close: towards the client we are done; from the client we wait for
    /// its close reply, unless wssd is failing the connection.
    fn after_injection(&mut self, rest: &[u8], shared: &Shared) -> Flow {
        if self.direction == Direction::Down || shared.is_failing() {
            return Flow::Done;
        }
        let _ = self.tracker.advance(rest, false);
        if self.tracker.close_seen {
            Flow::Done
        } else {
            Flow::Continue
        }
    }
}
