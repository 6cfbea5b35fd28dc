//! Conversion of any layer blob into the seekable format.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read, Write};

use sha2::{Digest, Sha256};

use super::codec::{detect_compression, stream_decoder, MemberEncoder};
use super::entry::{Entry, EntryKind};
use super::error::FormatError;
use super::hashio::{digest_string, read_prefix, CountReader, HashReader, HashWriter, TagErrors};
use super::normalize::{missing_hardlink_target, to_entry};
use super::tar_read::{padding, TarReader};
use super::tar_write::write_headers;
use super::Compression;

/// How to convert a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Compression of the converted blob: gzip or zstd (`None` is an error).
    pub compression: Compression,
    /// Compression level; `None` picks our tuned default (gzip 9, zstd 12).
    pub level: Option<i32>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
        }
    }
}

/// What [`convert_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedLayer {
    /// `"sha256:<hex>"` of the converted (compressed) blob written to `dst`.
    pub digest: String,
    /// Bytes written to `dst`.
    pub size: u64,
    /// `"sha256:<hex>"` of the converted uncompressed tar stream.
    pub diff_id: String,
    /// Compressed bytes read from `src`.
    pub source_size: u64,
    /// `"sha256:<hex>"` of the source's uncompressed tar stream.
    pub source_diff_id: String,
    /// Tar entries written.
    pub entries: u64,
    /// Regular files with content (one content member each).
    pub files: u64,
}

/// Writes the converted tar stream as members: header members (padding of
/// the previous content, then headers) and one member per file content.
struct LayerWriter<W: Write> {
    out: HashWriter<W>,
    encoder: MemberEncoder,
    tar_hash: Sha256,
    header_member_open: bool,
    headers: Vec<u8>,
}

impl<W: Write> LayerWriter<W> {
    fn new(dst: W, encoder: MemberEncoder) -> Self {
        Self {
            out: HashWriter::new(dst),
            encoder,
            tar_hash: Sha256::new(),
            header_member_open: false,
            headers: Vec::new(),
        }
    }

    fn write_tar(&mut self, data: &[u8]) -> Result<(), FormatError> {
        self.tar_hash.update(data);
        self.encoder.write(data, &mut self.out)?;
        Ok(())
    }

    fn open_header_member(&mut self) -> Result<(), FormatError> {
        if !self.header_member_open {
            self.encoder.begin(&mut self.out, None)?;
            self.header_member_open = true;
        }
        Ok(())
    }

    fn close_header_member(&mut self) -> Result<(), FormatError> {
        if self.header_member_open {
            self.encoder.end(&mut self.out)?;
            self.header_member_open = false;
        }
        Ok(())
    }

    /// Writes the headers of `entry` into the open header member.
    fn write_headers(&mut self, entry: &Entry) -> Result<(), FormatError> {
        self.headers.clear();
        write_headers(entry, &mut self.headers)?;
        self.open_header_member()?;
        let headers = std::mem::take(&mut self.headers);
        let result = self.write_tar(&headers);
        self.headers = headers;
        result
    }

    /// Writes a regular file with content: its headers end the header
    /// member, its content is a member of its own.
    fn write_file<R: Read>(&mut self, entry: &Entry, content: &mut R) -> Result<(), FormatError> {
        self.write_headers(entry)?;
        self.close_header_member()?;
        self.encoder.begin(&mut self.out, Some(entry.size))?;
        let mut buf = vec![0u8; 128 << 10];
        let mut left = entry.size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match content.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(FormatError::Truncated(format!(
                        "content of {:?} ends {left} bytes early",
                        entry.path
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(FormatError::from_decode(
                        e,
                        &format!("reading {:?}", entry.path),
                    ))
                }
            };
            self.write_tar(&buf[..n])?;
            left -= n as u64;
        }
        self.encoder.end(&mut self.out)?;
        self.open_header_member()?;
        let pad = [0u8; 512];
        self.write_tar(&pad[..padding(entry.size) as usize])
    }

    /// Writes the end-of-archive marker and returns (digest, size, diff_id).
    fn finish(mut self) -> Result<(String, u64, String), FormatError> {
        self.open_header_member()?;
        self.write_tar(&[0u8; 1024])?;
        self.close_header_member()?;
        let diff_id = digest_string(self.tar_hash);
        let (digest, size) = self.out.finish()?;
        Ok((digest, size, diff_id))
    }
}

/// Converts a source layer blob (gzip, zstd or uncompressed tar, detected by
/// magic bytes) into the seekable format, streaming from `src` to `dst`.
pub fn convert_layer<R: Read, W: Write>(
    src: R,
    dst: W,
    opts: &ConvertOptions,
) -> Result<ConvertedLayer, FormatError> {
    let encoder = MemberEncoder::new(opts.compression, opts.level)?;
    let (mut counted, source_size) = CountReader::new(TagErrors(src));
    let prefix = read_prefix(&mut counted, 4)?;
    let source_compression = detect_compression(&prefix);
    let buffered = Cursor::new(prefix).chain(BufReader::with_capacity(256 << 10, counted));
    let decoded = HashReader::new(stream_decoder(source_compression, buffered)?);
    let mut tar = TarReader::new(decoded);
    let mut writer = LayerWriter::new(dst, encoder);
    // Kind of every path seen so far (hard links must name an earlier entry).
    let mut seen: HashMap<String, bool> = HashMap::new();
    let mut entries = 0u64;
    let mut files = 0u64;
    while let Some(raw) = tar.next_entry()? {
        let entry = to_entry(&raw)?;
        if entry.kind == EntryKind::Hardlink {
            let target = entry.link.as_deref().unwrap_or("");
            match seen.get(target) {
                Some(false) => {}
                Some(true) => return Err(missing_hardlink_target(&entry, true)),
                None => return Err(missing_hardlink_target(&entry, false)),
            }
        }
        if entry.kind == EntryKind::File && entry.size > 0 {
            writer.write_file(&entry, &mut tar.content())?;
            files += 1;
        } else {
            writer.write_headers(&entry)?;
        }
        entries += 1;
        seen.insert(entry.path, entry.kind == EntryKind::Dir);
    }
    let (source_diff_id, _) = tar.into_inner().finish();
    let (digest, size, diff_id) = writer.finish()?;
    tracing::debug!(%digest, size, entries, files, "converted a layer");
    Ok(ConvertedLayer {
        digest,
        size,
        diff_id,
        source_size: source_size.get(),
        source_diff_id,
        entries,
        files,
    })
}
