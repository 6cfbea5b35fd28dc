//! Feeds arbitrary bytes to the response decoder, in chunks of a size the input picks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_quic::codec::{Limits, ResponseDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    // Small limits keep each run's memory low; the bounds logic is the same.
    let limits = Limits {
        max_header: 1 << 20,
        max_data_frame: 1 << 12,
        ..Limits::default()
    };
    let mut dec = ResponseDecoder::new(limits);
    for piece in rest.chunks(usize::from(chunk).max(1)) {
        dec.feed(piece);
        loop {
            match dec.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    // A failed decoder must keep failing.
                    assert!(dec.next_event().is_err());
                    assert!(dec.finish().is_err());
                    return;
                }
            }
        }
        assert!(dec.buffered() <= rest.len());
    }
    let _ = dec.finish();
});
