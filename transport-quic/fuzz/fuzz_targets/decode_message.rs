//! Feeds arbitrary bytes to the decoder of client streams of any kind (bundle request,
//! trace upload, ranks query): what the proxy reads from anyone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport_quic::codec::{Limits, MessageDecoder};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_request: 1 << 16,
        ..Limits::default()
    };
    let mut dec = MessageDecoder::new(limits);
    dec.feed(data);
    let first = dec.next_message();
    let end = dec.finish();
    if first.is_err() {
        assert!(end.is_err());
        assert!(dec.next_message().is_err());
    }
});
