//! The relay's frame tracker on arbitrary bytes cut into arbitrary chunks: offsets it
//! reports stay inside the chunk (and a close found where it says), and it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::server::frame::{Advance, FrameTracker};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut tracker = FrameTracker::new(u64::from(control) * 97);
    if control & 0x80 != 0 {
        tracker.stop_before_close();
    }
    let chunk = usize::from(control % 31) + 1;
    for (i, piece) in rest.chunks(chunk).enumerate() {
        match tracker.advance(piece, i % 3 == 0) {
            Advance::Consumed => {}
            Advance::Boundary(at) => assert!(at <= piece.len()),
            // The relay stops there and puts its own close in the frame's place.
            Advance::BeforeClose(at) => {
                assert!(at < piece.len() && piece[at] & 0x0f == 0x8);
                return;
            }
            Advance::Violation { header_at, resume_at, .. } => {
                assert!(resume_at <= piece.len());
                if let Some(at) = header_at {
                    assert!(at < resume_at);
                }
            }
        }
    }
});
