//! Feeds arbitrary bytes to the one-frame reply decoder (trace acknowledgements, ranks),
//! in chunks of a size the input picks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_quic::codec::{Limits, ReplyDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_header: 1 << 20,
        ..Limits::default()
    };
    let mut dec = ReplyDecoder::new(limits);
    for piece in rest.chunks(usize::from(chunk).max(1)) {
        dec.feed(piece);
        if dec.next_reply().is_err() {
            // A failed decoder must keep failing.
            assert!(dec.next_reply().is_err());
            assert!(dec.finish().is_err());
            return;
        }
    }
    let _ = dec.finish();
});
