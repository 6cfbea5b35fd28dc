//! starlightd's header-to-tree path on arbitrary bytes: the bytes are a Header
//! frame's body; what decodes goes through the worker's header checks
//! (`CheckedHeader`) and, if it passes, becomes the in-memory tree of an image
//! (`ImageFs::new`). Nothing on the way may panic.
//!
//! Random bytes almost never carry a manifest whose SHA-256 is the header's
//! digest, so each decoded header is also tried "repaired" (digest, media type
//! and layer digests made right): the fuzzer then reaches the table of
//! contents, the part a hostile proxy controls.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use starlight_worker::header_check::CheckedHeader;
use starlight_worker::imagefs::ImageFs;
use starlight_worker::store::Store;
use starlight_worker::waiters::ContentWaiters;
use transport_quic::codec::{preamble, FrameKind, Limits, ResponseDecoder};
use transport_quic::{Digest, Event, Header};

fn store() -> Arc<Store> {
    static STORE: OnceLock<(tempfile::TempDir, Arc<Store>)> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let store = Arc::new(Store::open(dir.path().join("store")).expect("a store"));
            (dir, store)
        })
        .1
        .clone()
}

fn tree(header: Header) {
    let Ok(checked) = CheckedHeader::new(header) else {
        return;
    };
    let waiters = Arc::new(ContentWaiters::new());
    if let Ok(fs) = ImageFs::new(&checked, store(), waiters, Duration::from_secs(1)) {
        drop(fs);
    }
}

fn repaired(mut h: Header) -> Header {
    h.manifest_digest = Digest::of(&h.manifest).to_string();
    h.manifest_media_type = "application/vnd.oci.image.manifest.v1+json".into();
    for (i, l) in h.layers.iter_mut().enumerate() {
        *l = Digest::of(&i.to_le_bytes()).to_string();
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    let mut frame = preamble().to_vec();
    frame.push(FrameKind::Header.code());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(data);
    // Small limits keep each run's memory low; the bounds logic is the same.
    let limits = Limits {
        max_header: 1 << 20,
        max_toc_entries: 1 << 16,
        ..Limits::default()
    };
    let mut dec = ResponseDecoder::new(limits);
    dec.feed(&frame);
    let Ok(Some(Event::Header(header))) = dec.next_event() else {
        return;
    };
    tree(header.clone());
    tree(repaired(header));
});
