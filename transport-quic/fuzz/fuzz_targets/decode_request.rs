//! Feeds arbitrary bytes to the request decoder (what the proxy reads from anyone).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_quic::codec::{Limits, RequestDecoder};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_request: 1 << 16,
        ..Limits::default()
    };
    let mut dec = RequestDecoder::new(limits);
    dec.feed(data);
    let first = dec.next_request();
    let end = dec.finish();
    if first.is_err() {
        assert!(end.is_err());
    }
});
