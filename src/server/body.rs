//! The bodies on the listener: of every response, the upstream's streamed
//! ([`UpstreamBody`]) or one wssd made whole; of a request forwarded upstream, the
//! client's, limited to the route's `max_body_size`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};

use super::pool::Lease;

/// The body of every response on the listener.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// The body of a request forwarded to the upstream: the client's, limited.
pub type RequestBody = Limited<Incoming>;

/// A response body from the upstream, streamed; its connection goes back to the pool
/// once the body is done with (read to its end, or dropped).
pub struct UpstreamBody {
    body: Incoming,
    _lease: Lease<RequestBody>,
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl UpstreamBody {
    pub fn new(body: Incoming, lease: Lease<RequestBody>) -> UpstreamBody {
        UpstreamBody {
            body,
            _lease: lease,
        }
    }
}
