//! Counts bounded while decoding: the vectors of a message refuse a declared length
//! over its [`Limits`] before decoding (or allocating) a single element.
//!
//! postcard writes a vector's length before its elements, and hands it to the visitor
//! as the sequence's size hint (or no hint when the frame's remaining bytes cannot
//! hold that many elements; every element takes at least one byte, so such a count
//! fails at the end of the frame). The `deserialize_with` functions here compare the
//! hint with the limits of the decode in progress ([`with_limits`], a thread-local set
//! around the synchronous postcard call), then decode at most the limit's number of
//! elements, reserving no more than a small fixed capacity up front. Outside a
//! [`with_limits`] call (the worker's database, tests), the default limits apply.
//!
//! postcard reports a custom serde error without its message, so the refusal itself is
//! kept in the thread-local and returned by [`with_limits`] as a typed
//! [`ProtocolError::LimitExceeded`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

use super::types::{PayloadInfo, TocEntry};
use super::{Limits, ProtocolError};

thread_local! {
    static ACTIVE: Cell<Option<Limits>> = const { Cell::new(None) };
    static EXCEEDED: RefCell<Option<ProtocolError>> = const { RefCell::new(None) };
}

/// Most elements reserved before any is decoded (the vector then grows with what
/// actually arrives).
const RESERVE: usize = 1024;

/// Restores the previous limits even if decoding panics.
struct Active(Option<Limits>);

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Runs `decode` with `limits` in force for the bounded vectors; returns its result and
/// the limit it broke, if one was.
pub(crate) fn with_limits<T>(
    limits: &Limits,
    decode: impl FnOnce() -> T,
) -> (T, Option<ProtocolError>) {
    let _restore = Active(ACTIVE.with(|a| a.replace(Some(*limits))));
    EXCEEDED.with(|e| e.borrow_mut().take());
    let out = decode();
    (out, EXCEEDED.with(|e| e.borrow_mut().take()))
}

fn current() -> Limits {
    ACTIVE.with(Cell::get).unwrap_or_default()
}

struct BoundedVec<T> {
    what: &'static str,
    limit: u32,
    marker: PhantomData<T>,
}

impl<T> BoundedVec<T> {
    fn refuse<E: serde::de::Error>(&self, count: u64) -> E {
        let err = ProtocolError::LimitExceeded {
            what: self.what,
            count,
            limit: u64::from(self.limit),
        };
        let msg = err.to_string();
        EXCEEDED.with(|e| *e.borrow_mut() = Some(err));
        E::custom(msg)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.limit, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let limit = self.limit as usize;
        let declared = seq.size_hint().unwrap_or(0);
        if declared > limit {
            return Err(self.refuse(declared as u64));
        }
        let mut out = Vec::with_capacity(declared.min(RESERVE));
        while let Some(item) = seq.next_element()? {
            if out.len() == limit {
                return Err(self.refuse(limit as u64 + 1));
            }
            out.push(item);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    what: &'static str,
    limit: u32,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedVec {
        what,
        limit,
        marker: PhantomData,
    })
}

/// [`super::Header::layers`]: at most `max_layers`.
pub(crate) fn layers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, "layers", current().max_layers)
}

/// [`super::Header::image_layers`]: at most `max_layers`.
pub(crate) fn image_layers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    bounded(d, "image layers", current().max_layers)
}

/// [`super::Header::toc`]: at most `max_toc_entries`.
pub(crate) fn toc<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TocEntry>, D::Error> {
    bounded(d, "table of contents entries", current().max_toc_entries)
}

/// [`super::Header::payloads`]: at most `max_payloads`.
pub(crate) fn payloads<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PayloadInfo>, D::Error> {
    bounded(d, "payloads", current().max_payloads)
}

/// [`TocEntry::xattrs`]: at most `max_xattrs`.
pub(crate) fn xattrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
    bounded(d, "extended attributes on one entry", current().max_xattrs)
}

/// [`super::Request::held_images`]: at most `max_held_images`.
pub(crate) fn held_images<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, "held images", current().max_held_images)
}

/// [`super::Request::held_payloads`]: at most `max_held_payloads`.
pub(crate) fn held_payloads<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
    bounded(d, "held payloads", current().max_held_payloads)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::codec::{
        preamble, FrameKind, Header, Limits, ProtocolError, Request, ResponseDecoder,
    };

    /// A header frame whose body is `body` (postcard bytes, written by hand).
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = preamble().to_vec();
        v.push(FrameKind::Header.code());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    /// postcard's varint (LEB128) of `n`.
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// The postcard bytes of a header with no strings or documents up to its
    /// layers, then `layers` declared (nothing follows).
    fn declaring_layers(layers: u64) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0]; // digest, media type, manifest, config: empty
        varint(layers, &mut b);
        b
    }

    fn decode(bytes: &[u8], limits: Limits) -> Result<(), ProtocolError> {
        let mut d = ResponseDecoder::new(limits);
        d.feed(bytes);
        d.next_event().map(|_| ())
    }

    #[test]
    fn a_huge_declared_count_is_refused_before_any_element() {
        // 2^62 layers declared in a frame of 13 bytes: more than the frame can
        // hold, so postcard gives no size hint, nothing is reserved, and the
        // first element hits the end of the frame.
        let err = decode(&frame(&declaring_layers(1 << 62)), Limits::default()).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
        // A count over the limit that the frame could hold: refused from the
        // count alone, as a limit, before the first element is decoded.
        let mut body = declaring_layers(70_000);
        body.resize(body.len() + 70_000, 0);
        let err = decode(&frame(&body), Limits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::LimitExceeded {
                what: "layers",
                count: 70_000,
                limit: 65_536
            }
        );
    }

    #[test]
    fn counts_over_configured_limits_are_refused_while_decoding() {
        let limits = Limits {
            max_toc_entries: 2,
            ..Limits::default()
        };
        let toc = (0..3)
            .map(|i| crate::codec::TocEntry {
                path: format!("f{i}"),
                kind: crate::codec::EntryKind::File,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_nsec: 0,
                size: 0,
                link: None,
                devmajor: 0,
                devminor: 0,
                xattrs: vec![],
                sha256: None,
                layer: 0,
                source: crate::codec::Source::NoContent,
            })
            .collect();
        let h = Header {
            layers: vec!["l".into()],
            toc,
            ..Header::default()
        };
        let body = postcard::to_stdvec(&h).unwrap();
        let err = decode(&frame(&body), limits).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::LimitExceeded {
                what: "table of contents entries",
                count: 3,
                limit: 2
            }
        );
        // The same header within the limits decodes.
        decode(&frame(&body), Limits::default()).unwrap();
    }

    #[test]
    fn a_declared_count_beyond_the_frame_is_malformed_not_a_hang() {
        // Within the limit, but the frame ends: postcard stops at the end of
        // the bytes, having reserved at most RESERVE elements.
        let err = decode(&frame(&declaring_layers(60_000)), Limits::default()).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
    }

    #[test]
    fn requests_are_bounded_too() {
        let limits = Limits {
            max_held_images: 1,
            ..Limits::default()
        };
        let req = Request {
            held_images: vec!["a".into(), "b".into()],
            ..Request::default()
        };
        let wire = crate::codec::RequestEncoder::default()
            .encode(&req)
            .unwrap();
        let mut d = crate::codec::RequestDecoder::new(limits);
        d.feed(&wire);
        assert!(matches!(
            d.next_request(),
            Err(ProtocolError::LimitExceeded {
                what: "held images",
                ..
            })
        ));
    }

    #[test]
    fn limits_do_not_leak_out_of_a_decode() {
        let small = Limits {
            max_layers: 0,
            ..Limits::default()
        };
        let mut body = declaring_layers(1);
        body.push(0);
        let (_, exceeded) = super::with_limits(&small, || postcard::from_bytes::<Header>(&body));
        assert!(exceeded.is_some());
        // Outside, the defaults apply again.
        assert_eq!(super::current(), Limits::default());
    }
}
