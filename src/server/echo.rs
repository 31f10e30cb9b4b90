//! The built-in echo service, used when no `upstream` is configured (the zero-config dev
//! mode, smoke tests, `wssd probe --send`): every text or binary message comes back
//! unchanged; pings are answered with pongs; a close is returned with the same code and
//! reason, and then wssd closes the connection.
//!
//! The echo streams, frame by frame, as the relay does: each frame's header is rewritten
//! (unmasked, as server frames are) and its payload unmasked and written back as it
//! arrives, so a message is never held whole. A connection holds one 16 KiB buffer
//! whatever the message size, and a client that sends and does not read is slowed by
//! TCP backpressure instead of filling wssd's memory (a buffering echo held twice each
//! message: 20 clients sending 16 MiB each took 640 MB). Fragments come back as the
//! fragments they were. The frame rules are checked (masking, opcodes, control frames,
//! fragmentation, `max_message_size`); text is not checked for UTF-8, as the bytes are
//! returned as they came and the client judges them.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::frame::{
    CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_TEXT, close_frame,
};
use super::http::{Request, SecurityHeaders};
use super::upgrade::Upgrade;
use crate::config::ListenerConfig;

const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const CLOSE_GOING_AWAY: u16 = 1001;
/// The first byte of a pong and of a close: FIN and the opcode.
const FIN_PONG: u8 = 0x8A;
const FIN_CLOSE: u8 = 0x88;
/// wssd's keepalive ping: unmasked, payload "wssd".
const PING: &[u8] = &[0x89, 0x04, b'w', b's', b's', b'd'];
/// 16 KiB.
const BUFFER: usize = 16_384;
/// How long a client gets to answer wssd's close, and to take the last bytes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The headers of the 101 for an echo connection (besides `Upgrade` and `Connection`).
pub fn switching_protocols(
    upgrade: &Upgrade,
    request: &Request,
    security: &SecurityHeaders,
) -> http::HeaderMap {
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let mut headers = http::HeaderMap::with_capacity(8);
    if let Ok(accept) = http::HeaderValue::try_from(accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = chosen_protocol(request) {
        headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    for (name, value) in security.headers() {
        headers.append(name, value.clone());
    }
    headers
}

/// The subprotocol the echo agrees to: the client's first. An echo speaks every
/// protocol, and a browser that asks for one fails the connection when none is chosen.
pub fn chosen_protocol(request: &Request) -> Option<http::HeaderValue> {
    let first = request.tokens("sec-websocket-protocol").next()?;
    http::HeaderValue::from_str(first).ok()
}

/// Where [`Echoer::feed`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// All input consumed; carry on.
    More,
    /// The client's close was echoed: the connection is over.
    Closed,
    /// The client broke a rule: close with this code.
    Violation(u16),
}

/// The echo's frame state: pure, no I/O, so it is tested on bytes alone.
#[derive(Debug)]
pub struct Echoer {
    header: [u8; 14],
    header_len: usize,
    opcode: u8,
    payload_left: u64,
    mask: [u8; 4],
    offset: usize,
    /// A control frame's payload, gathered (at most 125 bytes) to answer it whole.
    control: Vec<u8>,
    /// Inside a fragmented data message.
    fragmented: bool,
    message_len: u64,
    limit: u64,
    /// Complete data messages echoed.
    pub messages: u64,
}

impl Echoer {
    pub fn new(limit: u64) -> Echoer {
        Echoer {
            header: [0; 14],
            header_len: 0,
            opcode: 0,
            payload_left: 0,
            mask: [0; 4],
            offset: 0,
            control: Vec::new(),
            fragmented: false,
            message_len: 0,
            limit,
            messages: 0,
        }
    }

    /// Between two frames (so wssd may put a frame of its own on the wire)?
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Walks the client's bytes, appending what goes back to `out` (never more bytes
    /// than came in).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Step {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(data.len() as u64) as usize;
                let (payload, rest) = data.split_at(take);
                data = rest;
                self.payload_left -= take as u64;
                let unmasked = payload.iter().map(|b| {
                    let b = b ^ self.mask[self.offset % 4];
                    self.offset += 1;
                    b
                });
                if self.opcode >= OP_CLOSE {
                    self.control.extend(unmasked);
                } else {
                    out.extend(unmasked);
                }
                if self.payload_left == 0
                    && self.opcode >= OP_CLOSE
                    && let Some(step) = self.answer_control(out)
                {
                    return step;
                }
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len < self.header_needed() {
                continue;
            }
            self.header_len = 0;
            if let Some(step) = self.start_frame(out) {
                return step;
            }
        }
        Step::More
    }

    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if self.header[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// A complete header is in `self.header`: check it, and write the header going back.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        let (first, second) = (self.header[0], self.header[1]);
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        let (len, at) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let protocol_error = Some(Step::Violation(CLOSE_PROTOCOL_ERROR));
        // No extension is negotiated, so no RSV bit may be set; clients must mask.
        if first & 0x70 != 0 || second & 0x80 == 0 {
            return protocol_error;
        }
        self.mask.copy_from_slice(&self.header[at..at + 4]);
        self.offset = 0;
        self.opcode = opcode;
        self.payload_left = len;
        match opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_CONTINUATION) != self.fragmented {
                    return protocol_error;
                }
                self.message_len = if opcode == OP_CONTINUATION {
                    self.message_len.saturating_add(len)
                } else {
                    len
                };
                if self.message_len > self.limit {
                    return Some(Step::Violation(CLOSE_TOO_BIG));
                }
                self.fragmented = !fin;
                if fin {
                    self.messages += 1;
                }
                out.push(first);
                push_length(out, len);
                None
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return protocol_error;
                }
                self.control.clear();
                if len == 0 {
                    return self.answer_control(out);
                }
                None
            }
            _ => protocol_error,
        }
    }

    /// A whole control frame has arrived: a ping gets its pong, a close its echo.
    fn answer_control(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        match self.opcode {
            OP_PING => {
                out.push(FIN_PONG);
                out.push(self.control.len() as u8);
                out.extend_from_slice(&self.control);
                None
            }
            OP_CLOSE => {
                // A close carries nothing, or a code and a reason (RFC 6455 §5.5.1).
                if self.control.len() == 1 {
                    return Some(Step::Violation(CLOSE_PROTOCOL_ERROR));
                }
                out.push(FIN_CLOSE);
                out.push(self.control.len() as u8);
                out.extend_from_slice(&self.control);
                Some(Step::Closed)
            }
            _ => None,
        }
    }
}

fn push_length(out: &mut Vec<u8>, len: u64) {
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// How an echo connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed (handshake or TCP).
    Client,
    /// wssd closed with this code (drain, idle timeout, a broken rule).
    Wssd(u16),
    /// The client stopped reading for `idle_timeout`.
    Stalled,
}

/// Echoes on an upgraded connection (its 101 sent) until the client closes or `drain`
/// fires (then it closes with 1001 and waits briefly for the client's reply).
pub async fn serve<S>(
    mut stream: S,
    early: &[u8],
    settings: &ListenerConfig,
    drain: &CancellationToken,
) -> std::io::Result<(Ended, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut echoer = Echoer::new(settings.max_message_size);
    let ended = echo_loop(
        &mut stream,
        early,
        &mut echoer,
        settings.idle_timeout,
        drain,
    )
    .await;
    // End TLS properly (close_notify), so the client sees a clean end, not a truncation.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    if let Ok(Ended::Wssd(_)) = ended {
        // Read what the client still sends, so that closing does not reset the
        // connection before the client has read wssd's close.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    ended.map(|e| (e, echoer.messages))
}

async fn echo_loop<S>(
    stream: &mut S,
    early: &[u8],
    echoer: &mut Echoer,
    idle_timeout: Duration,
    drain: &CancellationToken,
) -> std::io::Result<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(BUFFER);
    // What the client sent together with its request comes first.
    if let Some(ended) = echo_chunk(stream, echoer, early, &mut out, idle_timeout).await? {
        return Ok(ended);
    }
    let mut buf = vec![0u8; BUFFER];
    let mut pinged = false;
    loop {
        let read = tokio::select! {
            _ = drain.cancelled() => {
                return close(stream, echoer, CLOSE_GOING_AWAY, "going away").await;
            }
            read = tokio::time::timeout(idle_timeout / 2, stream.read(&mut buf)) => read,
        };
        let n = match read {
            // Half of idle_timeout of silence: a ping, which a live client answers.
            Err(_) if !pinged => {
                pinged = true;
                if echoer.at_boundary() && !send(stream, PING, idle_timeout).await? {
                    return Ok(Ended::Stalled);
                }
                continue;
            }
            Err(_) => return close(stream, echoer, CLOSE_GOING_AWAY, "idle timeout").await,
            Ok(Ok(0)) => return Ok(Ended::Client),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        pinged = false;
        if let Some(ended) = echo_chunk(stream, echoer, &buf[..n], &mut out, idle_timeout).await? {
            return Ok(ended);
        }
    }
}

/// Echoes one chunk of the client's bytes; `Some` when the connection is over.
async fn echo_chunk<S: AsyncWrite + Unpin>(
    stream: &mut S,
    echoer: &mut Echoer,
    chunk: &[u8],
    out: &mut Vec<u8>,
    idle_timeout: Duration,
) -> std::io::Result<Option<Ended>> {
    out.clear();
    let step = echoer.feed(chunk, out);
    if !send(stream, out, idle_timeout).await? {
        return Ok(Some(Ended::Stalled));
    }
    match step {
        Step::More => Ok(None),
        Step::Closed => Ok(Some(Ended::Client)),
        Step::Violation(code) => {
            let reason = if code == CLOSE_TOO_BIG {
                "message too big"
            } else {
                "protocol error"
            };
            // The offending header was not echoed, so the output is between frames.
            send(stream, &close_frame(code, reason, false), idle_timeout).await?;
            Ok(Some(Ended::Wssd(code)))
        }
    }
}

/// Writes `bytes`; `false` when the client took none of it for `idle_timeout` (it stopped
/// reading and must not hold the connection forever).
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    idle_timeout: Duration,
) -> std::io::Result<bool> {
    if bytes.is_empty() {
        return Ok(true);
    }
    match tokio::time::timeout(idle_timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(written) => written.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// wssd closes with `code`: at a frame boundary a close frame goes out and the client's
/// reply is awaited briefly (frames still in flight are walked, not echoed);
/// mid-frame, only the connection ends.
async fn close<S>(
    stream: &mut S,
    echoer: &mut Echoer,
    code: u16,
    reason: &str,
) -> std::io::Result<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !echoer.at_boundary() {
        return Ok(Ended::Wssd(code));
    }
    if !send(stream, &close_frame(code, reason, false), CLOSE_WAIT).await? {
        return Ok(Ended::Stalled);
    }
    // Until the client's reply: frames still in flight are walked, not echoed again.
    let mut buf = vec![0u8; 4096];
    let mut ignored = Vec::new();
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            ignored.clear();
            if n == 0 || echoer.feed(&buf[..n], &mut ignored) != Step::More {
                return Ok::<(), std::io::Error>(());
            }
        }
    })
    .await;
    Ok(Ended::Wssd(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        let len = payload.len() as u64;
        let mut header = Vec::new();
        push_length(&mut header, len);
        header[0] |= 0x80;
        f.extend(header);
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn unmasked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        push_length(&mut f, payload.len() as u64);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_come_back_unmasked_in_any_chunking() {
        let big = vec![7u8; 70_000];
        let mut input = masked(0x81, b"hello");
        input.extend(masked(0x02, &big[..300]));
        input.extend(masked(0x89, b"ping"));
        input.extend(masked(0x80, &big));
        input.extend(masked(0x8a, b"pong ignored"));
        let mut want = unmasked(0x81, b"hello");
        want.extend(unmasked(0x02, &big[..300]));
        want.extend(unmasked(0x8a, b"ping"));
        want.extend(unmasked(0x80, &big));
        for size in [1, 2, 3, 5, 7, 64, 1000, input.len()] {
            let mut e = Echoer::new(1 << 20);
            let mut out = Vec::new();
            let mut fed = 0;
            for chunk in input.chunks(size) {
                assert_eq!(e.feed(chunk, &mut out), Step::More);
                fed += chunk.len();
                assert!(out.len() <= fed, "never more out than in");
            }
            assert_eq!(out, want, "chunk size {size}");
            assert_eq!(e.messages, 2);
            assert!(e.at_boundary());
        }
    }

    #[test]
    fn the_101_accepts_the_key_with_the_security_headers() {
        let upgrade = Upgrade {
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
        };
        let request = Request::parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let headers = switching_protocols(&upgrade, &request, &SecurityHeaders::default());
        // RFC 6455 §1.3's example key and answer.
        assert_eq!(
            headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "sec-websocket-accept",
                "strict-transport-security",
                "content-security-policy",
                "x-frame-options",
                "x-content-type-options",
                "referrer-policy"
            ]
        );
    }

    #[test]
    fn the_echo_agrees_to_the_first_subprotocol_offered() {
        let upgrade = Upgrade { key: "k".into() };
        let request = Request::parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n",
        )
        .unwrap();
        let headers = switching_protocols(&upgrade, &request, &SecurityHeaders::default());
        assert_eq!(headers["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn lengths_take_the_shortest_form_and_control_frames_reach_125_bytes() {
        for (len, want) in [
            (125u64, vec![125u8]),
            (126, vec![126, 0, 126]),
            (65_535, vec![126, 0xff, 0xff]),
            (65_536, vec![127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            push_length(&mut out, len);
            assert_eq!(out, want, "{len}");
        }
        // A ping of 125 bytes, the most a control frame carries, gets its pong.
        let mut e = Echoer::new(1000);
        let mut out = Vec::new();
        assert_eq!(e.feed(&masked(0x89, &[7u8; 125]), &mut out), Step::More);
        let mut pong = vec![0x8a, 125];
        pong.extend([7u8; 125]);
        assert_eq!(out, pong);
        let mut e = Echoer::new(1000);
        assert_eq!(
            e.feed(&masked(0x89, &[7u8; 126]), &mut Vec::new()),
            Step::Violation(CLOSE_PROTOCOL_ERROR)
        );
        // A close is echoed with FIN and its opcode.
        let mut e = Echoer::new(1000);
        let mut out = Vec::new();
        assert_eq!(e.feed(&masked(0x88, &[0x03, 0xe8]), &mut out), Step::Closed);
        assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn between_frames_only_when_no_header_or_payload_is_pending() {
        let mut e = Echoer::new(100);
        assert!(e.at_boundary());
        let frame = masked(0x81, b"hello");
        let mut out = Vec::new();
        e.feed(&frame[..1], &mut out);
        assert!(!e.at_boundary(), "mid-header");
        e.feed(&frame[1..8], &mut out);
        assert!(!e.at_boundary(), "mid-payload");
        e.feed(&frame[8..], &mut out);
        assert!(e.at_boundary());
    }

    #[test]
    fn a_close_is_echoed_and_ends_the_connection() {
        let mut e = Echoer::new(100);
        let mut out = Vec::new();
        let mut close = vec![0x0f, 0xa1];
        close.extend_from_slice(b"bye");
        assert_eq!(e.feed(&masked(0x88, &close), &mut out), Step::Closed);
        assert_eq!(out, unmasked(0x88, &close));
        let mut out = Vec::new();
        assert_eq!(
            Echoer::new(100).feed(&masked(0x88, b""), &mut out),
            Step::Closed
        );
        assert_eq!(out, [0x88, 0]);
    }

    #[test]
    fn broken_rules_are_violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked(0x81, b"hi"), CLOSE_PROTOCOL_ERROR),
            (masked(0xc1, b"hi"), CLOSE_PROTOCOL_ERROR),
            (masked(0x83, b"x"), CLOSE_PROTOCOL_ERROR),
            (masked(0x8b, b""), CLOSE_PROTOCOL_ERROR),
            (masked(0x09, b"frag ping"), CLOSE_PROTOCOL_ERROR),
            (masked(0x89, &[0u8; 126]), CLOSE_PROTOCOL_ERROR),
            (masked(0x80, b"continuation first"), CLOSE_PROTOCOL_ERROR),
            (
                [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
                CLOSE_PROTOCOL_ERROR,
            ),
            (masked(0x88, b"x"), CLOSE_PROTOCOL_ERROR),
            (masked(0x82, &[0u8; 101]), CLOSE_TOO_BIG),
            (
                [masked(0x02, &[0u8; 60]), masked(0x80, &[0u8; 41])].concat(),
                CLOSE_TOO_BIG,
            ),
        ];
        for (input, code) in cases {
            let mut out = Vec::new();
            assert_eq!(
                Echoer::new(100).feed(&input, &mut out),
                Step::Violation(code),
                "{input:02x?}"
            );
        }
        // Exactly at the limit is fine.
        let mut out = Vec::new();
        assert_eq!(
            Echoer::new(100).feed(&masked(0x82, &[0u8; 100]), &mut out),
            Step::More
        );
    }
}
