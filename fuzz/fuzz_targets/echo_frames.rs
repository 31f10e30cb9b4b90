//! The echo's frame walker on arbitrary client bytes cut into arbitrary chunks: it never
//! panics, never writes more than it was given (so a connection's memory stays bounded),
//! and stops at the first close or broken rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssd::server::echo::{Echoer, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut echoer = Echoer::new(u64::from(control) * 131);
    let chunk = usize::from(control % 37) + 1;
    let mut out = Vec::new();
    let mut fed = 0;
    for piece in rest.chunks(chunk) {
        let step = echoer.feed(piece, &mut out);
        fed += piece.len();
        assert!(out.len() <= fed, "{} bytes out for {fed} in", out.len());
        if step != Step::More {
            return;
        }
    }
});
