//! Decompresses a blob member by member, as one stream, recording the exact
//! compressed and uncompressed byte range of each member.

use std::io::{self, BufRead, Read};

use super::codec::MemberDecoder;
use super::error::FormatError;
use super::hashio::HashReader;
use super::Compression;

/// Most bytes decoded past a misplaced member boundary, looking for corruption.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Byte ranges of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    /// Offset of the member in the compressed blob.
    pub compressed_offset: u64,
    /// Length of the member in the compressed blob.
    pub compressed_len: u64,
    /// Offset of the member's data in the uncompressed stream.
    pub uncompressed_offset: u64,
    /// Length of the member's data.
    pub uncompressed_len: u64,
}

/// Reader over the concatenated members of a blob; reading never returns
/// bytes of two members at once.
pub struct MemberReader<R: BufRead> {
    compression: Compression,
    idle: Option<HashReader<R>>,
    current: Option<(MemberDecoder<HashReader<R>>, MemberInfo)>,
    uncompressed_pos: u64,
    last: Option<MemberInfo>,
}

impl<R: BufRead> MemberReader<R> {
    /// Reads the members of `blob` (hashing and counting its bytes).
    pub fn new(compression: Compression, blob: R) -> Self {
        Self {
            compression,
            idle: Some(HashReader::new(blob)),
            current: None,
            uncompressed_pos: 0,
            last: None,
        }
    }

    /// The last member that ended.
    pub fn last_member(&self) -> Option<MemberInfo> {
        self.last
    }

    fn close_current(&mut self) {
        if let Some((dec, mut info)) = self.current.take() {
            let inner = dec.into_inner();
            info.compressed_len = inner.count() - info.compressed_offset;
            info.uncompressed_len = self.uncompressed_pos - info.uncompressed_offset;
            self.last = Some(info);
            self.idle = Some(inner);
        }
    }

    /// Whether the stream is at a member boundary: no member is open, or the
    /// open one has no data left (it is then closed). When not at a
    /// boundary, the data read to find out is lost (the caller gives up on
    /// the blob) and up to [`DRAIN_LIMIT`] more bytes of the member are
    /// decoded, so that a corrupt member is reported as corrupt (its check
    /// sum fails) rather than as a layout problem.
    pub fn at_boundary(&mut self) -> Result<bool, FormatError> {
        let Some((dec, _)) = self.current.as_mut() else {
            return Ok(true);
        };
        let decode_err = |e| FormatError::from_decode(e, "decompressing the layer");
        let mut byte = [0u8; 1];
        if read_retrying(dec, &mut byte).map_err(decode_err)? == 0 {
            self.close_current();
            return Ok(true);
        }
        let mut buf = [0u8; 8192];
        let mut drained = 0u64;
        while drained < DRAIN_LIMIT {
            match read_retrying(dec, &mut buf).map_err(decode_err)? {
                0 => break,
                n => drained += n as u64,
            }
        }
        Ok(false)
    }

    /// Gives the compressed reader back (with its digest and byte count),
    /// once every member has been read.
    pub fn into_blob(mut self) -> Option<HashReader<R>> {
        self.close_current();
        self.idle
    }
}

fn read_retrying<T: Read>(r: &mut T, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

impl<R: BufRead> Read for MemberReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((dec, _)) = self.current.as_mut() {
                let n = read_retrying(dec, buf)?;
                if n > 0 {
                    self.uncompressed_pos += n as u64;
                    return Ok(n);
                }
                self.close_current();
                continue;
            }
            let Some(mut blob) = self.idle.take() else {
                return Ok(0);
            };
            if blob.fill_buf()?.is_empty() {
                self.idle = Some(blob);
                return Ok(0);
            }
            let info = MemberInfo {
                compressed_offset: blob.count(),
                compressed_len: 0,
                uncompressed_offset: self.uncompressed_pos,
                uncompressed_len: 0,
            };
            let dec = MemberDecoder::new(self.compression, blob)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.current = Some((dec, info));
        }
    }
}
