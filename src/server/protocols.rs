//! The HTTP/1.1 and HTTP/2 settings of the listener's connections (hyper's builders):
//! head limits, timeouts, and HTTP/2's stream, flow-control and flood limits.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::http::{MAX_HEAD, MAX_HEADERS};

/// hyper's own head limits: above wssd's (which answer 431 with the security headers),
/// so that they only stop what is far over them.
const HYPER_MAX_HEADERS: usize = MAX_HEADERS * 4;
const HYPER_MAX_HEAD: usize = MAX_HEAD * 4;

/// The HTTP/1.1 settings of every connection of a listener. Header names go out in title
/// case (`Strict-Transport-Security`), as nginx and wssd before hyper wrote them: HTTP
/// does not care, some clients' header parsing does.
pub fn http1_builder(head_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD)
        .title_case_headers(true)
        .keep_alive(true);
    builder
}

/// The HTTP/2 settings of every connection of a listener: extended CONNECT for
/// WebSockets (RFC 8441), and limits against the known floods. h2 itself refuses a
/// CONTINUATION flood (a header block over `max_header_list_size` ends the connection,
/// CVE-2024-27316) and answers SETTINGS and PING frames without queueing them.
pub fn http2_builder(head_timeout: Duration) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): streams the client resets before wssd has
        // answered them count here, and more than this many at once end the connection
        // with GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
        .max_header_list_size(HYPER_MAX_HEAD as u32)
        // What a client may send before wssd reads it: at most 1 MiB per connection in
        // all, 256 KiB per stream; and at most 64 KiB queued per stream towards a client.
        .initial_connection_window_size(1 << 20)
        .initial_stream_window_size(256 << 10)
        .max_send_buf_size(64 << 10)
        // A connection that goes quiet is closed after a ping goes unanswered.
        .keep_alive_interval(Some(head_timeout.max(Duration::from_secs(10)) * 3))
        .keep_alive_timeout(head_timeout.max(Duration::from_secs(10)));
    builder
}

/// Concurrent streams on one HTTP/2 connection (requests and WebSockets).
const H2_MAX_STREAMS: u32 = 128;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_ERROR_RESETS: usize = 256;
