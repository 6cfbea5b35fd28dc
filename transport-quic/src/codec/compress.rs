//! The compressed Header frame of protocol version 3: the postcard-encoded
//! [`super::Header`] in one zstd frame.
//!
//! A header is mostly paths, digests and small integers that repeat from entry to
//! entry, so zstd shrinks it about 4×: the header is the only part of a bundle the
//! worker waits for before it mounts, and at WAN rates its bytes are most of the time to
//! header after the round trips.
//!
//! Decoding is bounded: the compressed frame is bounded by [`super::Limits::max_header`]
//! before it is buffered (like every frame), and the decompressed bytes by the same
//! limit *while* decompressing, so a small frame that expands without end (a
//! decompression bomb) is refused once the limit is crossed, never buffered whole. The
//! decoder's window is capped at [`MAX_WINDOW_LOG`], so a frame that asks for a huge
//! window is refused instead of allocated. Truncated, garbage or trailing input is a
//! typed [`ProtocolError`], never a panic.

use std::io::{BufRead, Read};

use super::frame::FrameKind;
use super::ProtocolError;

/// zstd level used for headers: fast (a 1.3 MB header in a few ms) and within a few
/// per cent of the higher levels on tables of contents.
pub const HEADER_ZSTD_LEVEL: i32 = 3;

/// Largest zstd window a header decoder accepts (2^23 = 8 MiB; level 3 uses at most
/// 2 MiB).
pub const MAX_WINDOW_LOG: u32 = 23;

/// Most bytes reserved before any decompressed byte arrives.
const RESERVE: usize = 1 << 20;

fn malformed(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        kind: FrameKind::Header,
        reason: reason.into(),
    }
}

/// Compresses an encoded header.
pub fn compress_header(encoded: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    zstd::bulk::compress(encoded, HEADER_ZSTD_LEVEL)
        .map_err(|e| malformed(format!("cannot compress the header: {e}")))
}

/// Decompresses a compressed Header frame body, refusing more than `limit` bytes of
/// output as soon as it is produced.
pub fn decompress_header(frame: &[u8], limit: u32) -> Result<Vec<u8>, ProtocolError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| malformed(format!("cannot start zstd: {e}")))?
        .single_frame();
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| malformed(format!("cannot bound the zstd window: {e}")))?;
    let limit = limit as usize;
    let mut out = Vec::with_capacity(frame.len().saturating_mul(4).min(RESERVE).min(limit));
    // One byte over the limit tells a bomb from a header of exactly the limit.
    let read = (&mut decoder)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => malformed("the compressed header is truncated"),
            _ => malformed(format!("bad compressed header: {e}")),
        })?;
    if read > limit {
        return Err(ProtocolError::LimitExceeded {
            what: "decompressed header bytes",
            count: read as u64,
            limit: limit as u64,
        });
    }
    let mut rest = decoder.finish();
    let trailing = rest
        .fill_buf()
        .map_err(|e| malformed(format!("bad compressed header: {e}")))?
        .len();
    if trailing != 0 {
        return Err(malformed(format!(
            "{trailing} bytes after the compressed header"
        )));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(format!("usr/lib/python3/dist-packages/pkg{i}/mod.py").as_bytes());
            v.extend_from_slice(&(i as u32).to_le_bytes());
        }
        v
    }

    #[test]
    fn round_trips_and_shrinks() {
        let raw = sample(5000);
        let z = compress_header(&raw).unwrap();
        assert!(z.len() * 4 < raw.len(), "{} of {}", z.len(), raw.len());
        assert_eq!(decompress_header(&z, raw.len() as u32).unwrap(), raw);
        let empty = compress_header(&[]).unwrap();
        assert_eq!(decompress_header(&empty, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        // 64 MiB of zeros compress to a few KiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let err = decompress_header(&bomb, 1 << 20).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::LimitExceeded {
                what: "decompressed header bytes",
                count: (1 << 20) + 1,
                limit: 1 << 20,
            }
        );
        // Exactly at the limit is fine.
        let raw = sample(100);
        let z = compress_header(&raw).unwrap();
        assert!(decompress_header(&z, raw.len() as u32).is_ok());
        assert!(decompress_header(&z, raw.len() as u32 - 1).is_err());
    }

    #[test]
    fn truncation_garbage_and_trailing_bytes_are_typed_errors() {
        let raw = sample(2000);
        let z = compress_header(&raw).unwrap();
        for cut in [0, 1, 4, 5, z.len() / 2, z.len() - 1] {
            let err = decompress_header(&z[..cut], u32::MAX).unwrap_err();
            assert!(
                matches!(
                    err,
                    ProtocolError::Malformed {
                        kind: FrameKind::Header,
                        ..
                    }
                ),
                "cut {cut}: {err}"
            );
        }
        let err = decompress_header(b"this is not zstd at all", u32::MAX).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
        let mut flipped = z.clone();
        for i in (8..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
        }
        assert!(decompress_header(&flipped, u32::MAX).is_err());
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"xyz");
        let err = decompress_header(&trailing, u32::MAX).unwrap_err();
        assert!(err.to_string().contains("3 bytes after"), "{err}");
    }

    #[test]
    fn a_huge_window_is_refused() {
        let mut p = zstd::bulk::Compressor::new(1).unwrap();
        p.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        p.set_parameter(zstd::zstd_safe::CParameter::EnableLongDistanceMatching(
            true,
        ))
        .unwrap();
        let raw = sample(200_000);
        let z = p.compress(&raw).unwrap();
        assert!(decompress_header(&z, u32::MAX).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300usize {
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            // Start some with the zstd magic so the frame parser is reached.
            if len >= 4 && len % 2 == 0 {
                v[..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
            }
            let _ = decompress_header(&v, 1 << 16);
        }
    }
}
