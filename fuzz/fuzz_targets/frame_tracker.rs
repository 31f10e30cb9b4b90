//! The relay's frame tracker on arbitrary bytes cut into arbitrary chunks: offsets it
//! reports stay inside the chunk, and it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::server::frame::{Advance, FrameTracker};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut tracker = FrameTracker::new(u64::from(control) * 97);
    let chunk = usize::from(control % 31) + 1;
    for (i, piece) in rest.chunks(chunk).enumerate() {
        match tracker.advance(piece, i % 3 == 0) {
            Advance::Consumed => {}
            Advance::Boundary(at) => assert!(at <= piece.len()),
            Advance::Violation { header_at, resume_at, .. } => {
                assert!(resume_at <= piece.len());
                if let Some(at) = header_at {
                    assert!(at < resume_at);
                }
            }
        }
    }
});
