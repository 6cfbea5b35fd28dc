//! Codec tests: round trips, every bound, every malformed stream.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn entry(path: &str, layer: u32, source: Source) -> TocEntry {
    TocEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        size: 0,
        link: None,
        devmajor: 0,
        devminor: 0,
        xattrs: Vec::new(),
        sha256: None,
        layer,
        source,
    }
}

fn payload(len: u64) -> PayloadInfo {
    PayloadInfo {
        sha256: [0; 32],
        compression: PayloadCompression::Gzip,
        compressed_len: len,
        size: 0,
    }
}

fn header_with(lens: &[u64]) -> Header {
    Header {
        manifest_digest: "sha256:00".into(),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest: b"{}".to_vec(),
        config: Vec::new(),
        layers: vec!["sha256:aa".into()],
        image_layers: vec![0],
        toc: vec![
            entry(
                "a",
                0,
                if lens.is_empty() {
                    Source::Held
                } else {
                    Source::Payload(0)
                },
            ),
            entry("b", 0, Source::NoContent),
        ],
        payloads: lens.iter().map(|&l| payload(l)).collect(),
        layer_tocs: Vec::new(),
    }
}

/// A complete, valid response stream.
fn bundle(header: &Header, bodies: &[Vec<u8>], limits: Limits) -> Vec<u8> {
    let mut enc = ResponseEncoder::new(limits);
    let mut out = BytesMut::new();
    enc.header(header, &mut out).unwrap();
    for (i, body) in bodies.iter().enumerate() {
        enc.begin_payload(i as u32, &mut out).unwrap();
        enc.data(body, &mut out).unwrap();
        enc.end_payload(i as u32, &mut out).unwrap();
    }
    let totals = enc.totals();
    enc.end(&totals, &mut out).unwrap();
    out.to_vec()
}

fn bodies_for(lens: &[u64]) -> Vec<Vec<u8>> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| (0..l).map(|j| (j as u8).wrapping_add(i as u8)).collect())
        .collect()
}

/// Feeds `bytes` split at `cuts`, drains events, then checks the end of stream.
fn decode_chunked(
    bytes: &[u8],
    cuts: &[usize],
    limits: Limits,
) -> Result<Vec<Event>, ProtocolError> {
    let mut dec = ResponseDecoder::new(limits);
    let mut events = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    points.sort_unstable();
    points.push(bytes.len());
    let mut start = 0;
    for p in points {
        dec.feed(&bytes[start..p]);
        start = p;
        while let Some(ev) = dec.next_event()? {
            events.push(ev);
        }
    }
    dec.finish()?;
    Ok(events)
}

fn decode(bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    decode_chunked(bytes, &[], Limits::default())
}

fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind.code()];
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn with_preamble(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = preamble().to_vec();
    for f in frames {
        v.extend_from_slice(f);
    }
    v
}

fn header_frame(h: &Header) -> Vec<u8> {
    frame(FrameKind::Header, &postcard::to_stdvec(h).unwrap())
}

#[test]
fn zero_values_and_empty_vectors_survive() {
    let header = Header {
        manifest_digest: String::new(),
        manifest_media_type: String::new(),
        manifest: Vec::new(),
        config: Vec::new(),
        layers: vec![String::new()],
        image_layers: vec![0],
        toc: vec![entry("", 0, Source::Payload(0))],
        payloads: vec![payload(0)],
        layer_tocs: vec![vec![crate::commit::LayerEntry::new("", EntryKind::Dir, 0)]],
    };
    let bytes = bundle(&header, &[Vec::new()], Limits::default());
    let events = decode(&bytes).unwrap();
    assert_eq!(
        events,
        vec![
            Event::Header(header),
            Event::PayloadBegin { index: 0 },
            Event::PayloadEnd { index: 0 },
            Event::End(End {
                payloads: 1,
                bytes: 0
            }),
        ]
    );

    let req = Request {
        token: String::new(),
        image: "sha256:0".into(),
        platform: None,
        held_images: Vec::new(),
        held_payloads: vec![[0; 32]],
        unordered: false,
    };
    let bytes = RequestEncoder::default().encode(&req).unwrap();
    let mut dec = RequestDecoder::default();
    dec.feed(&bytes);
    assert_eq!(dec.next_request().unwrap(), Some(req));
    assert_eq!(dec.next_request().unwrap(), None);
    dec.finish().unwrap();
}

#[test]
fn empty_bundle_round_trips() {
    let mut h = header_with(&[]);
    h.toc = vec![entry("d", 0, Source::Held)];
    let events = decode(&bundle(&h, &[], Limits::default())).unwrap();
    assert_eq!(events, vec![Event::Header(h), Event::End(End::default())]);
}

#[test]
fn data_frames_are_split_and_zero_copy() {
    let limits = Limits {
        max_data_frame: 10,
        ..Limits::default()
    };
    let h = header_with(&[25]);
    let bodies = bodies_for(&[25]);
    let bytes = bundle(&h, &bodies, limits);
    let events = decode_chunked(&bytes, &[], limits).unwrap();
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::PayloadData { data, .. } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![10, 10, 5]);
}

#[test]
fn wrong_magic_and_version_are_refused() {
    let mut dec = ResponseDecoder::default();
    dec.feed(b"HTTP/1.1 200 OK");
    let err = dec.next_event().unwrap_err();
    assert!(matches!(err, ProtocolError::BadMagic { .. }), "{err}");
    // A decoder that failed keeps failing.
    assert!(matches!(dec.next_event(), Err(ProtocolError::Failed(_))));
    assert!(dec.finish().is_err());

    // Refused from the first wrong byte, before six bytes arrive.
    let mut dec = ResponseDecoder::default();
    dec.feed(b"SX");
    assert!(dec.next_event().is_err());

    let mut bytes = bundle(&header_with(&[]), &[], Limits::default());
    bytes[4] = 7;
    bytes[5] = 0;
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol version 7 is not supported (this build speaks 2 to 4)"
    );

    let mut dec = RequestDecoder::default();
    dec.feed(&bytes);
    assert!(matches!(
        dec.next_request(),
        Err(ProtocolError::UnsupportedVersion { version: 7 })
    ));
}

#[test]
fn every_truncation_is_reported_never_success() {
    let h = header_with(&[3, 0, 5]);
    let bytes = bundle(&h, &bodies_for(&[3, 0, 5]), Limits::default());
    for cut in 0..bytes.len() {
        let err = decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
    assert!(decode(&bytes).is_ok());
    let err = decode(&bytes[..bytes.len() - 1]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream truncated: it ended while expecting the End frame"
    );
}

#[test]
fn request_truncation_and_trailing_bytes() {
    let req = Request {
        token: "t".into(),
        image: "img".into(),
        ..Request::default()
    };
    let bytes = RequestEncoder::default().encode(&req).unwrap();
    for cut in 0..bytes.len() {
        let mut dec = RequestDecoder::default();
        dec.feed(&bytes[..cut]);
        assert_eq!(dec.next_request().unwrap(), None);
        assert!(matches!(dec.finish(), Err(ProtocolError::Truncated { .. })));
    }
    let mut dec = RequestDecoder::default();
    dec.feed(&bytes);
    dec.feed(b"x");
    assert!(dec.next_request().unwrap().is_some());
    assert!(matches!(
        dec.next_request(),
        Err(ProtocolError::TrailingData { .. })
    ));

    // A response frame is not a request.
    let mut dec = RequestDecoder::default();
    dec.feed(&with_preamble(&[frame(FrameKind::End, &[0, 0])]));
    assert!(matches!(
        dec.next_request(),
        Err(ProtocolError::UnexpectedFrame { .. })
    ));
}

#[test]
fn payload_overrun_is_refused() {
    let h = header_with(&[3]);
    let bytes = with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
        frame(FrameKind::PayloadData, &[1, 2]),
        frame(FrameKind::PayloadData, &[3, 4]),
    ]);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::PayloadOverrun {
            index: 0,
            expected: 3,
            got: 4
        }
    );
    // Refused from the frame header alone, before the data is buffered.
    let mut dec = ResponseDecoder::default();
    dec.feed(&bytes[..bytes.len() - 2]);
    let mut result = Ok(None);
    for _ in 0..4 {
        result = dec.next_event();
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(ProtocolError::PayloadOverrun { .. })));
}

#[test]
fn payload_underrun_is_refused() {
    let h = header_with(&[3]);
    let bytes = with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
        frame(FrameKind::PayloadData, &[1, 2]),
        frame(FrameKind::PayloadEnd, &0u32.to_le_bytes()),
    ]);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "payload 0 is short: 2 bytes, header says 3"
    );
}

#[test]
fn payloads_out_of_order_are_refused() {
    let h = header_with(&[1, 1]);
    let bytes = with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &1u32.to_le_bytes()),
    ]);
    assert_eq!(
        decode(&bytes).unwrap_err(),
        ProtocolError::PayloadOutOfOrder {
            got: 1,
            expected: 0
        }
    );
    // PayloadEnd naming another payload.
    let bytes = with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
        frame(FrameKind::PayloadData, &[1]),
        frame(FrameKind::PayloadEnd, &1u32.to_le_bytes()),
    ]);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        ProtocolError::PayloadOutOfOrder { .. }
    ));
    // Data outside a payload, a payload beyond the table, a second header.
    for frames in [
        vec![header_frame(&h), frame(FrameKind::PayloadData, &[1])],
        vec![frame(FrameKind::PayloadBegin, &0u32.to_le_bytes())],
        vec![header_frame(&h), header_frame(&h)],
    ] {
        assert!(matches!(
            decode(&with_preamble(&frames)).unwrap_err(),
            ProtocolError::UnexpectedFrame { .. }
        ));
    }
    let h0 = header_with(&[]);
    let bytes = with_preamble(&[
        header_frame(&h0),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
    ]);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        ProtocolError::UnexpectedFrame { .. }
    ));
}

#[test]
fn end_must_match_counts() {
    let h = header_with(&[2]);
    let end = |payloads, bytes| {
        frame(
            FrameKind::End,
            &postcard::to_stdvec(&End { payloads, bytes }).unwrap(),
        )
    };
    let body = [
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
        frame(FrameKind::PayloadData, &[1, 2]),
        frame(FrameKind::PayloadEnd, &0u32.to_le_bytes()),
    ];
    let mut ok = body.to_vec();
    ok.push(end(1, 2));
    assert!(decode(&with_preamble(&ok)).is_ok());
    for (p, b) in [(2, 2), (1, 3), (0, 0)] {
        let mut bad = body.to_vec();
        bad.push(end(p, b));
        assert!(matches!(
            decode(&with_preamble(&bad)).unwrap_err(),
            ProtocolError::EndMismatch { .. }
        ));
    }
    // End before every payload was sent.
    let bad = with_preamble(&[header_frame(&h), end(0, 0)]);
    assert!(matches!(
        decode(&bad).unwrap_err(),
        ProtocolError::EndMismatch { .. }
    ));
}

#[test]
fn garbage_after_end_or_error_is_refused() {
    let h = header_with(&[1]);
    let good = bundle(&h, &bodies_for(&[1]), Limits::default());
    for garbage in [&b"x"[..], &[6, 0, 0, 0, 0], &good[6..]] {
        let mut bytes = good.clone();
        bytes.extend_from_slice(garbage);
        assert!(matches!(
            decode(&bytes).unwrap_err(),
            ProtocolError::TrailingData { .. }
        ));
    }
    let err_frame = ErrorFrame {
        code: ErrorCode::NotFound,
        message: "no such image".into(),
    };
    let mut enc = ResponseEncoder::default();
    let mut out = BytesMut::new();
    enc.error(&err_frame, &mut out).unwrap();
    assert_eq!(decode(&out).unwrap(), vec![Event::Error(err_frame.clone())]);
    out.extend_from_slice(b"zz");
    assert!(matches!(
        decode(&out).unwrap_err(),
        ProtocolError::TrailingData { .. }
    ));
}

#[test]
fn error_mid_body_ends_the_stream() {
    let h = header_with(&[4]);
    let e = ErrorFrame {
        code: ErrorCode::Upstream,
        message: "registry went away".into(),
    };
    let mut enc = ResponseEncoder::default();
    let mut out = BytesMut::new();
    enc.header(&h, &mut out).unwrap();
    enc.begin_payload(0, &mut out).unwrap();
    enc.data(&[1, 2], &mut out).unwrap();
    enc.error(&e, &mut out).unwrap();
    assert!(enc.is_done());
    assert!(enc.data(&[3], &mut BytesMut::new()).is_err());
    let events = decode(&out).unwrap();
    assert_eq!(events.last(), Some(&Event::Error(e)));
}

#[test]
fn unknown_frame_type_is_refused() {
    let bytes = with_preamble(&[vec![99, 0, 0, 0, 0]]);
    assert_eq!(
        decode(&bytes).unwrap_err(),
        ProtocolError::UnknownFrameType(99)
    );
}

#[test]
fn malformed_messages_are_refused() {
    // A header frame whose body is not a header.
    let bytes = with_preamble(&[frame(FrameKind::Header, &[0xff; 3])]);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        ProtocolError::Malformed { .. }
    ));
    // A valid header followed by extra bytes inside the same frame.
    let mut body = postcard::to_stdvec(&header_with(&[])).unwrap();
    body.push(0);
    let bytes = with_preamble(&[frame(FrameKind::Header, &body)]);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        ProtocolError::Malformed { .. }
    ));
    // A PayloadBegin with a short index.
    let bytes = with_preamble(&[
        header_frame(&header_with(&[1])),
        frame(FrameKind::PayloadBegin, &[0, 0]),
    ]);
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        ProtocolError::Malformed { .. }
    ));
}

#[test]
fn header_references_are_checked() {
    let mut h = header_with(&[1]);
    h.toc.push(entry("c", 0, Source::Payload(1)));
    let err = decode(&with_preamble(&[header_frame(&h)])).unwrap_err();
    assert!(matches!(err, ProtocolError::InvalidHeader(_)), "{err}");

    let mut h = header_with(&[1]);
    h.toc.push(entry("c", 1, Source::NoContent));
    assert!(matches!(
        decode(&with_preamble(&[header_frame(&h)])).unwrap_err(),
        ProtocolError::InvalidHeader(_)
    ));

    let mut h = header_with(&[1]);
    h.image_layers = vec![0, 1];
    assert!(matches!(
        decode(&with_preamble(&[header_frame(&h)])).unwrap_err(),
        ProtocolError::InvalidHeader(_)
    ));
    // The encoder refuses it too.
    assert!(ResponseEncoder::default()
        .header(&h, &mut BytesMut::new())
        .is_err());
}

fn assert_limit(h: &Header, limits: Limits) {
    let bytes = with_preamble(&[header_frame(h)]);
    let err = decode_chunked(&bytes, &[], limits).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::LimitExceeded { .. } | ProtocolError::FrameTooLarge { .. }
        ),
        "{err}"
    );
    assert!(ResponseEncoder::new(limits)
        .header(h, &mut BytesMut::new())
        .is_err());
    // Under the default limits, the same header is fine.
    assert!(
        decode(&bytes).is_ok() || matches!(decode(&bytes), Err(ProtocolError::Truncated { .. }))
    );
}

#[test]
fn every_header_bound_is_enforced() {
    let d = Limits::default();
    let h = header_with(&[1, 1, 1]);
    assert_limit(
        &h,
        Limits {
            max_payloads: 2,
            ..d
        },
    );
    assert_limit(
        &h,
        Limits {
            max_toc_entries: 1,
            ..d
        },
    );
    assert_limit(
        &h,
        Limits {
            max_header: 10,
            ..d
        },
    );
    let mut long = h.clone();
    long.toc[0].path = "p".repeat(100);
    assert_limit(
        &long,
        Limits {
            max_string: 99,
            ..d
        },
    );
    let mut link = h.clone();
    link.toc[0].link = Some("l".repeat(100));
    assert_limit(
        &link,
        Limits {
            max_string: 99,
            ..d
        },
    );
    let mut layers = h.clone();
    layers.layers = vec!["a".into(), "b".into()];
    assert_limit(&layers, Limits { max_layers: 1, ..d });
    let mut xattrs = h.clone();
    xattrs.toc[0].xattrs = vec![
        ("user.a".into(), vec![1; 10]),
        ("user.b".into(), Vec::new()),
    ];
    assert_limit(&xattrs, Limits { max_xattrs: 1, ..d });
    assert_limit(
        &xattrs,
        Limits {
            max_xattr_value: 9,
            ..d
        },
    );
    let mut doc = h.clone();
    doc.manifest = vec![b'{'; 100];
    assert_limit(
        &doc,
        Limits {
            max_document: 99,
            ..d
        },
    );
}

#[test]
fn data_frame_bound_is_enforced() {
    let limits = Limits {
        max_data_frame: 4,
        ..Limits::default()
    };
    let h = header_with(&[5]);
    let bytes = with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
        frame(FrameKind::PayloadData, &[0; 5]),
    ]);
    let err = decode_chunked(&bytes, &[], limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PayloadData frame of 5 bytes exceeds the limit of 4 bytes"
    );
    // The announced length alone is refused: 4 GiB is never buffered.
    let mut dec = ResponseDecoder::default();
    dec.feed(&with_preamble(&[
        header_frame(&h),
        frame(FrameKind::PayloadBegin, &0u32.to_le_bytes()),
    ]));
    dec.feed(&[FrameKind::PayloadData.code(), 0xff, 0xff, 0xff, 0xff]);
    let mut r = Ok(None);
    for _ in 0..3 {
        r = dec.next_event();
        if r.is_err() {
            break;
        }
    }
    assert!(matches!(r, Err(ProtocolError::FrameTooLarge { .. })));
    assert!(dec.buffered() < 1024);
}

#[test]
fn request_bounds_are_enforced() {
    let d = Limits::default();
    let req = Request {
        token: "secret".into(),
        image: "docker.io/library/redis:7".into(),
        platform: Some("linux/amd64".into()),
        held_images: vec!["sha256:a".into(), "sha256:b".into()],
        held_payloads: vec![[1; 32], [2; 32]],
        unordered: true,
    };
    let bytes = RequestEncoder::default().encode(&req).unwrap();
    for limits in [
        Limits {
            max_request: 20,
            ..d
        },
        Limits { max_string: 5, ..d },
        Limits {
            max_held_images: 1,
            ..d
        },
        Limits {
            max_held_payloads: 1,
            ..d
        },
    ] {
        let mut dec = RequestDecoder::new(limits);
        dec.feed(&bytes);
        let err = dec.next_request().unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::LimitExceeded { .. } | ProtocolError::FrameTooLarge { .. }
            ),
            "{err}"
        );
        assert!(RequestEncoder::new(limits).encode(&req).is_err());
    }
}

#[test]
fn error_message_bound_is_enforced() {
    let limits = Limits {
        max_string: 8,
        ..Limits::default()
    };
    let e = ErrorFrame {
        code: ErrorCode::Internal,
        message: "x".repeat(9),
    };
    let mut out = BytesMut::new();
    ResponseEncoder::default().error(&e, &mut out).unwrap();
    assert!(decode_chunked(&out, &[], limits).is_err());
    assert!(ResponseEncoder::new(limits)
        .error(&e, &mut BytesMut::new())
        .is_err());
}

#[test]
fn encoder_refuses_misuse() {
    let mut out = BytesMut::new();
    let mut enc = ResponseEncoder::default();
    assert!(enc.begin_payload(0, &mut out).is_err());
    assert!(out.is_empty());
    enc.header(&header_with(&[2]), &mut out).unwrap();
    assert!(enc.begin_payload(1, &mut out).is_err());
    enc.begin_payload(0, &mut out).unwrap();
    let before = out.len();
    assert!(enc.data(&[1, 2, 3], &mut out).is_err());
    assert_eq!(out.len(), before, "nothing appended on error");
    assert!(enc.end_payload(0, &mut out).is_err());
    enc.data(&[1, 2], &mut out).unwrap();
    assert!(enc
        .end(
            &End {
                payloads: 1,
                bytes: 2
            },
            &mut out
        )
        .is_err());
    enc.end_payload(0, &mut out).unwrap();
    assert!(enc
        .end(
            &End {
                payloads: 1,
                bytes: 3
            },
            &mut out
        )
        .is_err());
    enc.end(
        &End {
            payloads: 1,
            bytes: 2,
        },
        &mut out,
    )
    .unwrap();
    assert!(enc.is_done());
    assert!(enc
        .error(
            &ErrorFrame {
                code: ErrorCode::Internal,
                message: String::new()
            },
            &mut out
        )
        .is_err());
    assert!(decode(&out).is_ok());
}

fn arb_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::Dir),
        Just(EntryKind::File),
        Just(EntryKind::Symlink),
        Just(EntryKind::Hardlink),
        Just(EntryKind::CharDev),
        Just(EntryKind::BlockDev),
        Just(EntryKind::Fifo),
    ]
}

fn arb_entry(n_layers: u32, n_payloads: u32) -> impl Strategy<Value = TocEntry> {
    let source = if n_payloads == 0 {
        prop_oneof![Just(Source::NoContent), Just(Source::Held)].boxed()
    } else {
        prop_oneof![
            Just(Source::NoContent),
            Just(Source::Held),
            (0..n_payloads).prop_map(Source::Payload)
        ]
        .boxed()
    };
    (
        (
            // Plain relative paths (the header's rules); the root is "".
            "([a-z.]{0,3}[a-z]/){0,2}[a-z.]{0,3}[a-z]|",
            arb_kind(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            any::<i64>(),
            any::<u32>(),
            0u64..1 << 40,
            proptest::option::of("[a-z]{1,8}"),
        ),
        (any::<u32>(), any::<u32>()),
        proptest::collection::vec(
            ("[a-z.]{1,6}", proptest::collection::vec(any::<u8>(), 0..4)),
            0..3,
        ),
        proptest::option::of(any::<[u8; 32]>()),
        0..n_layers,
        source,
    )
        .prop_map(
            |(
                (path, kind, mode, uid, gid),
                (mtime, mtime_nsec, size, link),
                (devmajor, devminor),
                xattrs,
                sha256,
                layer,
                source,
            )| TocEntry {
                path,
                kind,
                mode,
                uid,
                gid,
                mtime,
                mtime_nsec,
                size,
                // Links have a target, files with content a hash.
                link: match kind {
                    EntryKind::Symlink | EntryKind::Hardlink => {
                        Some(link.unwrap_or_else(|| "t".into()))
                    }
                    _ => link,
                },
                devmajor,
                devminor,
                xattrs,
                sha256: match kind {
                    EntryKind::File if size > 0 => Some(sha256.unwrap_or_default()),
                    _ => sha256,
                },
                layer,
                source,
            },
        )
}

fn arb_bundle() -> impl Strategy<Value = (Header, Vec<Vec<u8>>)> {
    (
        1u32..4,
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
    )
        .prop_flat_map(|(n_layers, bodies)| {
            let n_payloads = bodies.len() as u32;
            let payloads: Vec<_> = bodies
                .iter()
                .map(|b| {
                    (any::<[u8; 32]>(), any::<bool>(), 0u64..1 << 40).prop_map({
                        let len = b.len() as u64;
                        move |(sha256, zstd, size)| PayloadInfo {
                            sha256,
                            compression: if zstd {
                                PayloadCompression::Zstd
                            } else {
                                PayloadCompression::Gzip
                            },
                            compressed_len: len,
                            size,
                        }
                    })
                })
                .collect();
            (
                (
                    "[ -~]{0,20}",
                    "[ -~]{0,20}",
                    proptest::collection::vec(any::<u8>(), 0..50),
                    proptest::collection::vec(any::<u8>(), 0..50),
                ),
                proptest::collection::vec("sha256:[0-9a-f]{0,8}", n_layers as usize),
                proptest::collection::vec(0..n_layers, 0..4),
                // Each path once.
                proptest::collection::vec(arb_entry(n_layers, n_payloads), 0..6).prop_map(
                    |mut toc| {
                        toc.sort_by(|a, b| a.path.cmp(&b.path));
                        toc.dedup_by(|a, b| a.path == b.path);
                        toc
                    },
                ),
                payloads,
                Just(bodies),
            )
        })
        .prop_map(
            |(
                (manifest_digest, manifest_media_type, manifest, config),
                layers,
                image_layers,
                toc,
                payloads,
                bodies,
            )| {
                (
                    Header {
                        manifest_digest,
                        manifest_media_type,
                        manifest,
                        config,
                        layers,
                        image_layers,
                        toc,
                        payloads,
                        layer_tocs: Vec::new(),
                    },
                    bodies,
                )
            },
        )
}

proptest! {
    #[test]
    fn bundles_round_trip_in_any_chunking(
        (header, bodies) in arb_bundle(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        frame_size in 1u32..64,
    ) {
        let limits = Limits { max_data_frame: frame_size, ..Limits::default() };
        let bytes = bundle(&header, &bodies, limits);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        let events = decode_chunked(&bytes, &cuts, limits).unwrap();
        prop_assert_eq!(&events[0], &Event::Header(header.clone()));
        let mut received: Vec<Vec<u8>> = Vec::new();
        let mut open = None;
        for ev in &events[1..] {
            match ev {
                Event::PayloadBegin { index } => { prop_assert_eq!(*index as usize, received.len()); received.push(Vec::new()); open = Some(*index); }
                Event::PayloadData { index, data } => { prop_assert_eq!(Some(*index), open); prop_assert!(data.len() <= frame_size as usize); received[*index as usize].extend_from_slice(data); }
                Event::PayloadEnd { index } => { prop_assert_eq!(Some(*index), open); open = None; }
                Event::End(end) => {
                    prop_assert_eq!(end.payloads as usize, bodies.len());
                    prop_assert_eq!(end.bytes, bodies.iter().map(|b| b.len() as u64).sum::<u64>());
                }
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        prop_assert_eq!(received, bodies);
        prop_assert!(matches!(events.last(), Some(Event::End(_))));
    }

    #[test]
    fn requests_round_trip_in_any_chunking(
        token in "[ -~]{0,20}",
        image in "[ -~]{0,40}",
        platform in proptest::option::of("[a-z0-9/]{0,16}"),
        held_images in proptest::collection::vec("sha256:[0-9a-f]{0,64}", 0..5),
        held_payloads in proptest::collection::vec(any::<[u8; 32]>(), 0..5),
        unordered in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let req = Request { token, image, platform, held_images, held_payloads, unordered };
        let bytes = RequestEncoder::default().encode(&req).unwrap();
        let cut = cut % (bytes.len() + 1);
        let mut dec = RequestDecoder::default();
        dec.feed(&bytes[..cut]);
        let first = dec.next_request().unwrap();
        dec.feed(&bytes[cut..]);
        let got = match first { Some(r) => r, None => dec.next_request().unwrap().unwrap() };
        prop_assert_eq!(got, req);
        prop_assert!(dec.finish().is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), prefix in any::<bool>()) {
        let mut input = if prefix { preamble().to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let mut dec = ResponseDecoder::default();
        dec.feed(&input);
        while let Ok(Some(_)) = dec.next_event() {}
        let _ = dec.finish();
        let mut dec = RequestDecoder::default();
        dec.feed(&input);
        let _ = dec.next_request();
        let _ = dec.finish();
    }

    #[test]
    fn corrupted_bundles_never_decode_to_a_different_success(
        (header, bodies) in arb_bundle(),
        pos in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let bytes = bundle(&header, &bodies, Limits::default());
        let mut bad = bytes.clone();
        let pos = pos % bad.len();
        bad[pos] ^= flip;
        // Either refused, or (a flipped payload or header byte) decoded intact in shape:
        // never more or fewer payload bytes than the header announces.
        if let Ok(events) = decode(&bad) {
            let Some(Event::Header(h)) = events.first() else { panic!("no header") };
            let total: u64 = events.iter().map(|e| match e { Event::PayloadData { data, .. } => data.len() as u64, _ => 0 }).sum();
            prop_assert_eq!(total, h.payloads.iter().map(|p| p.compressed_len).sum::<u64>());
        }
    }
}

#[test]
fn version_3_headers_round_trip_compressed_and_bad_ones_are_typed_errors() {
    let header = header_with(&[5, 0, 9]);
    let encode = |version: u16| {
        let mut enc = ResponseEncoder::default().with_version(version);
        let mut wire = BytesMut::new();
        enc.header(&header, &mut wire).unwrap();
        wire
    };
    let (v2, v3) = (encode(2), encode(3));
    assert_eq!(v2[..6], preamble_for(2));
    assert_eq!(v3[..6], preamble_for(3));
    for (wire, version) in [(&v2, 2), (&v3, 3)] {
        let mut dec = ResponseDecoder::default();
        for piece in wire.chunks(3) {
            dec.feed(piece);
        }
        assert_eq!(
            dec.next_event().unwrap(),
            Some(Event::Header(header.clone()))
        );
        assert_eq!(dec.version(), Some(version));
    }
    // Every cut of the compressed frame body: more bytes needed, then truncation.
    for cut in PREAMBLE_LEN + FRAME_HEADER_LEN..v3.len() {
        let mut dec = ResponseDecoder::default();
        dec.feed(&v3[..cut]);
        assert_eq!(dec.next_event().unwrap(), None);
        assert!(matches!(dec.finish(), Err(ProtocolError::Truncated { .. })));
    }
    // A frame whose compressed body is garbage: a typed error, never a panic.
    let body = PREAMBLE_LEN + FRAME_HEADER_LEN;
    let mut bad = v3.clone();
    for b in &mut bad[body..] {
        *b = 0xa5;
    }
    let mut dec = ResponseDecoder::default();
    dec.feed(&bad);
    let err = dec.next_event().unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Malformed {
                kind: FrameKind::Header,
                ..
            }
        ),
        "{err}"
    );
    // A version 2 header announced as version 3 (uncompressed bytes): refused.
    let mut mislabeled = v2.clone();
    mislabeled[4] = 3;
    let mut dec = ResponseDecoder::default();
    dec.feed(&mislabeled);
    assert!(dec.next_event().is_err());
    // A small frame that decompresses past max_header: refused while decompressing.
    let limits = Limits {
        max_header: 64 * 1024,
        ..Limits::default()
    };
    let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 19).unwrap();
    let mut wire = preamble_for(3).to_vec();
    wire.extend_from_slice(&frame::frame_header(FrameKind::Header, bomb.len() as u32));
    wire.extend_from_slice(&bomb);
    let mut dec = ResponseDecoder::new(limits);
    dec.feed(&wire);
    assert!(matches!(
        dec.next_event().unwrap_err(),
        ProtocolError::LimitExceeded {
            what: "decompressed header bytes",
            ..
        }
    ));
}
