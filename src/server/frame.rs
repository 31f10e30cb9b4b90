//! WebSocket frame boundaries in a byte stream, found without copying or decoding it.
//!
//! The relay passes frames through as they are (see `relay`); this tracker reads just
//! the frame headers as bytes go by (RFC 6455 §5.2: 2 bytes, an extended length of 2
//! or 8, a 4-byte mask key) and skips payloads by count. That is enough to know where a
//! frame ends (so wssd can inject a close frame between two frames), to see a close
//! frame go by, to count messages, and to enforce the message size limit. Pure state,
//! no I/O: unit-tested here.

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;

/// Where [`FrameTracker::advance`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// All the data was consumed (possibly ending mid-frame).
    Consumed,
    /// A frame boundary was reached after this many bytes (asked for by `stop_at_boundary`).
    Boundary(usize),
    /// A close frame starts after this many bytes (asked for by [`FrameTracker::stop_before_close`]).
    BeforeClose(usize),
    /// A frame header breaks a rule wssd enforces: `code` is the close code to answer
    /// with (1009 message too big, 1002 protocol error). `header_at` is the offset of that
    /// header's first byte in the data, or `None` if it began in an earlier chunk;
    /// `resume_at` is where the data after the header starts.
    Violation {
        code: u16,
        header_at: Option<usize>,
        resume_at: usize,
    },
}

/// Close code for a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a frame no endpoint may send.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// The largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

#[derive(Debug, Clone)]
pub struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
    message_len: u64,
    limit: u64,
    /// Still checking frames (until the first violation).
    strict: bool,
    /// Stop at the boundary before a close frame instead of passing it.
    before_close: bool,
    /// A close frame has gone by.
    pub close_seen: bool,
    /// Complete data messages that have gone by.
    pub messages: u64,
}

impl FrameTracker {
    /// A tracker that reports messages larger than `limit` bytes.
    pub fn new(limit: u64) -> FrameTracker {
        FrameTracker {
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            message_len: 0,
            limit,
            strict: true,
            before_close: false,
            close_seen: false,
            messages: 0,
        }
    }

    /// From now on, [`advance`](Self::advance) stops before a close frame's first byte
    /// (with [`Advance::BeforeClose`]), so that the caller can put its own close there.
    pub fn stop_before_close(&mut self) {
        self.before_close = true;
    }

    /// Stops judging frames (no more violations); boundaries are still found.
    pub fn relax(&mut self) {
        self.strict = false;
        self.limit = u64::MAX;
    }

    /// Between two frames?
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Walks `data`, updating the state.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> Advance {
        let mut i = 0;
        loop {
            if stop_at_boundary && self.at_boundary() {
                return Advance::Boundary(i);
            }
            if i == data.len() {
                return Advance::Consumed;
            }
            if self.before_close && self.at_boundary() && data[i] & 0x0f == OP_CLOSE {
                return Advance::BeforeClose(i);
            }
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= take;
                i += take as usize;
                continue;
            }
            let header_at = i.checked_sub(self.header_len);
            self.header[self.header_len] = data[i];
            self.header_len += 1;
            i += 1;
            if self.header_len < self.header_needed() {
                continue;
            }
            let (fin, opcode, payload_len) = self.parse_header();
            self.header_len = 0;
            self.payload_left = payload_len;
            let violation = match opcode {
                OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                    self.message_len = self.message_len.saturating_add(payload_len);
                    if fin && self.message_len <= self.limit {
                        self.messages += 1;
                        self.message_len = 0;
                    }
                    (self.message_len > self.limit).then_some(CLOSE_TOO_BIG)
                }
                0x8..=0xA if self.strict && (payload_len > MAX_CONTROL_PAYLOAD || !fin) => {
                    Some(CLOSE_PROTOCOL_ERROR)
                }
                OP_CLOSE => {
                    self.close_seen = true;
                    None
                }
                0x9 | 0xA => None,
                _ if self.strict => Some(CLOSE_PROTOCOL_ERROR),
                _ => None,
            };
            if let Some(code) = violation {
                // Report once; what follows is only walked for frame boundaries.
                self.limit = u64::MAX;
                self.message_len = 0;
                self.strict = false;
                return Advance::Violation {
                    code,
                    header_at,
                    resume_at: i,
                };
            }
        }
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
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn parse_header(&self) -> (bool, u8, u64) {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0f;
        let len = match self.header[1] & 0x7f {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        (fin, opcode, len)
    }
}

/// A close frame with `code` and `reason`, masked when it goes to a server (the
/// upstream) as RFC 6455 requires of clients, unmasked towards a client.
pub fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = vec![0x80 | OP_CLOSE, payload.len() as u8];
    if masked {
        let mut key = [0u8; 4];
        // A predictable mask would still be a valid frame; the RNG does not fail on Linux.
        let _ = aws_lc_rs::rand::fill(&mut key);
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(&payload);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(mask_bit | len as u8);
        } else if len < 65536 {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn counts_messages_in_any_chunking() {
        let mut stream = frame(true, OP_TEXT, 5, true);
        stream.extend(frame(false, OP_BINARY, 300, true));
        stream.extend(frame(true, 0x9, 4, true)); // ping between fragments
        stream.extend(frame(true, OP_CONTINUATION, 70_000, true));
        stream.extend(frame(true, OP_CLOSE, 2, true));
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut t = FrameTracker::new(u64::MAX);
            for piece in stream.chunks(chunk) {
                assert_eq!(t.advance(piece, false), Advance::Consumed);
            }
            assert_eq!(t.messages, 2, "chunk size {chunk}");
            assert!(t.close_seen);
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn stops_at_the_next_boundary() {
        let mut stream = frame(true, OP_TEXT, 10, false);
        let first = stream.len();
        stream.extend(frame(true, OP_TEXT, 10, false));
        let mut t = FrameTracker::new(u64::MAX);
        assert_eq!(t.advance(&stream[..3], false), Advance::Consumed);
        assert!(!t.at_boundary());
        assert_eq!(t.advance(&stream[3..], true), Advance::Boundary(first - 3));
        assert_eq!(t.advance(&[], true), Advance::Boundary(0));
    }

    #[test]
    fn oversize_message_is_caught_at_its_header() {
        let mut stream = frame(true, OP_TEXT, 10, true);
        let second = stream.len();
        stream.extend(frame(false, OP_BINARY, 60, true));
        stream.extend(frame(true, OP_CONTINUATION, 60, true));
        let third = second + 2 + 4 + 60;
        stream.extend(frame(true, OP_CLOSE, 2, true));
        let mut t = FrameTracker::new(100);
        assert_eq!(
            t.advance(&stream, false),
            Advance::Violation {
                code: CLOSE_TOO_BIG,
                header_at: Some(third),
                resume_at: third + 6
            }
        );
        // After a violation the tracker keeps its place: the close after the frame is seen.
        assert_eq!(t.advance(&stream[third + 6..], false), Advance::Consumed);
        assert!(t.close_seen);
        assert_eq!(t.messages, 1);

        let mut t = FrameTracker::new(100);
        t.advance(&stream[..third + 1], false);
        assert_eq!(
            t.advance(&stream[third + 1..], false),
            Advance::Violation {
                code: CLOSE_TOO_BIG,
                header_at: None,
                resume_at: 5
            }
        );
    }

    #[test]
    fn oversize_control_frames_and_reserved_opcodes_are_protocol_errors() {
        let mut t = FrameTracker::new(u64::MAX);
        let ping = frame(true, 0x9, 126, true);
        assert!(matches!(
            t.advance(&ping, false),
            Advance::Violation {
                code: CLOSE_PROTOCOL_ERROR,
                ..
            }
        ));
        let mut t = FrameTracker::new(u64::MAX);
        let fragmented_close = frame(false, OP_CLOSE, 2, true);
        assert!(matches!(
            t.advance(&fragmented_close, false),
            Advance::Violation {
                code: CLOSE_PROTOCOL_ERROR,
                ..
            }
        ));
        let mut t = FrameTracker::new(u64::MAX);
        assert!(matches!(
            t.advance(&frame(true, 0x3, 1, true), false),
            Advance::Violation {
                code: CLOSE_PROTOCOL_ERROR,
                ..
            }
        ));
        let mut t = FrameTracker::new(u64::MAX);
        assert_eq!(
            t.advance(&frame(true, 0x9, 125, true), false),
            Advance::Consumed
        );
    }

    #[test]
    fn a_message_exactly_at_the_limit_passes_in_any_fragmentation() {
        let mut stream = frame(false, OP_TEXT, 100, true);
        stream.extend(frame(true, OP_CONTINUATION, 0, true));
        stream.extend(frame(false, OP_BINARY, 60, true));
        stream.extend(frame(true, OP_CONTINUATION, 40, true));
        let mut t = FrameTracker::new(100);
        assert_eq!(t.advance(&stream, false), Advance::Consumed);
        assert_eq!(t.messages, 2);
        let mut over = frame(false, OP_TEXT, 100, true);
        over.extend(frame(true, OP_CONTINUATION, 1, true));
        assert!(matches!(
            FrameTracker::new(100).advance(&over, false),
            Advance::Violation {
                code: CLOSE_TOO_BIG,
                ..
            }
        ));
    }

    #[test]
    fn a_relaxed_tracker_judges_nothing_but_still_finds_frames() {
        let mut stream = frame(true, 0x9, 126, true); // an oversize ping
        stream.extend(frame(true, 0x3, 1, true)); // a reserved opcode
        stream.extend(frame(true, OP_BINARY, 200, true)); // over the limit
        stream.extend(frame(true, OP_CLOSE, 2, true));
        let mut t = FrameTracker::new(100);
        t.relax();
        assert_eq!(t.advance(&stream, false), Advance::Consumed);
        assert!(t.close_seen && t.at_boundary());
        assert_eq!(t.messages, 1);
    }

    #[test]
    fn stops_before_a_close_frame_when_asked() {
        let mut stream = frame(true, OP_TEXT, 10, false);
        let close_at = stream.len();
        stream.extend(frame(true, OP_CLOSE, 2, false));
        let mut t = FrameTracker::new(u64::MAX);
        t.stop_before_close();
        assert_eq!(t.advance(&stream[..3], false), Advance::Consumed);
        assert_eq!(
            t.advance(&stream[3..], false),
            Advance::BeforeClose(close_at - 3)
        );
        assert!(!t.close_seen);
        let mut t = FrameTracker::new(u64::MAX);
        assert_eq!(t.advance(&stream, false), Advance::Consumed);
        assert!(t.close_seen, "without the request, the close passes");
    }

    #[test]
    fn close_frames_parse_back() {
        let f = close_frame(1001, "going away", false);
        assert_eq!(&f[..4], &[0x88, 12, 0x03, 0xE9]);
        assert_eq!(&f[4..], b"going away");
        let m = close_frame(1009, "too big", true);
        assert_eq!(m[1], 0x80 | 9);
        let key = &m[2..6];
        let unmasked: Vec<u8> = m[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(&unmasked[..2], &1009u16.to_be_bytes());
    }
}
