//! Decompressing one content member taken from a blob by its byte range.

use std::io::{BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

use super::codec::MemberDecoder;
use super::entry::Entry;
use super::error::FormatError;
use super::hashio::TagErrors;
use super::Compression;

/// Most bytes preallocated for a member's output.
const MAX_PREALLOC: u64 = 16 << 20;

/// Decompresses one member (its exact bytes, nothing before or after);
/// refuses output longer than `expected_size` and checks the length.
pub fn decompress_member(
    compression: Compression,
    member: &[u8],
    expected_size: u64,
) -> Result<Vec<u8>, FormatError> {
    let mut input = member;
    let mut out = Vec::with_capacity(expected_size.min(MAX_PREALLOC) as usize);
    {
        let dec = MemberDecoder::new(compression, &mut input)?;
        dec.take(expected_size.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| FormatError::from_decode(e, "decompressing a member"))?;
    }
    if out.len() as u64 != expected_size {
        return Err(FormatError::SizeMismatch {
            path: String::new(),
            expected: expected_size,
            actual: out.len() as u64,
        });
    }
    if !input.is_empty() {
        return Err(FormatError::Corrupt(format!(
            "{} bytes after the end of the member",
            input.len()
        )));
    }
    Ok(out)
}

/// Decompresses at most `limit` bytes from the start of a member, given a
/// prefix of its compressed bytes (or all of them): what a prefix decodes
/// to, without checking the member's end. For sniffing a file's first bytes.
pub fn decompress_prefix(
    compression: Compression,
    member_prefix: &[u8],
    limit: u64,
) -> Result<Vec<u8>, FormatError> {
    let mut input = member_prefix;
    let mut out = Vec::with_capacity(limit.min(MAX_PREALLOC) as usize);
    let dec = MemberDecoder::new(compression, &mut input)?;
    match dec.take(limit).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        // The prefix ended inside the member: what was decoded is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(out),
        Err(e) => Err(FormatError::from_decode(e, "decompressing a member prefix")),
    }
}

/// Decompresses the member at the start of `member` (its byte range, or a
/// reader positioned at it) into `out`, checking the size and SHA-256
/// recorded in `entry`. `out` receives the bytes before the check ends:
/// write to a temporary file and keep it only on success.
pub fn extract_content<R: Read, W: Write>(
    compression: Compression,
    member: R,
    entry: &Entry,
    mut out: W,
) -> Result<(), FormatError> {
    let Some(content) = entry.content else {
        if entry.size == 0 {
            return Ok(());
        }
        return Err(FormatError::NotStarlight {
            path: entry.path.clone(),
            reason: "the entry has content but no member".into(),
        });
    };
    let reader: Box<dyn BufRead> = Box::new(BufReader::new(TagErrors(member)));
    let mut dec = MemberDecoder::new(compression, reader)?.take(entry.size.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FormatError::from_decode(
                    e,
                    &format!("decompressing {:?}", entry.path),
                ))
            }
        };
        total += n as u64;
        if total > entry.size {
            return Err(FormatError::SizeMismatch {
                path: entry.path.clone(),
                expected: entry.size,
                actual: total,
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    if total != entry.size {
        return Err(FormatError::SizeMismatch {
            path: entry.path.clone(),
            expected: entry.size,
            actual: total,
        });
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != content.sha256 {
        return Err(FormatError::DigestMismatch {
            path: entry.path.clone(),
            expected: hex::encode(content.sha256),
            actual: hex::encode(actual),
        });
    }
    out.flush()?;
    Ok(())
}
