//! A streaming tar reader: ustar, PAX (`x`, `g`), GNU long names (`L`, `K`)
//! and sparse files (GNU `S`, PAX formats 0.1 and 1.0), with every size
//! bounded before allocating.
//!
//! The reader never reads ahead of what it returns, so the position of the
//! underlying reader is always the tar offset [`TarReader::position`] (the
//! scanner relies on that to match content with compressed members).

use std::io::{self, Read};

use super::error::FormatError;
use super::limits::{
    MAX_ENTRIES, MAX_FILE_SIZE, MAX_GNU_LONG_SIZE, MAX_PAX_SIZE, MAX_SPARSE_CHUNKS, MAX_XATTRS,
    MAX_XATTR_VALUE,
};
use super::pax;

/// Size of a tar block.
pub const BLOCK: u64 = 512;

/// Bytes of padding after `size` bytes of data.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// One entry as found in the tar stream, before normalization.
#[derive(Debug, Clone, Default)]
pub struct RawEntry {
    /// Tar offset of the entry's first header (extension headers included).
    pub header_offset: u64,
    /// Tar offset of the entry's data.
    pub data_offset: u64,
    /// Type flag (`'0'`, `'5'`, ...; old-style regular files with a trailing
    /// `/` are reported as directories).
    pub typeflag: u8,
    /// Path bytes (PAX `path`, GNU long name, or ustar prefix + name).
    pub path: Vec<u8>,
    /// Link target bytes.
    pub link: Vec<u8>,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Owner user name.
    pub uname: Vec<u8>,
    /// Owner group name.
    pub gname: Vec<u8>,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Content size (regular files; the expanded size of sparse files).
    pub size: u64,
    /// Device major.
    pub devmajor: u32,
    /// Device minor.
    pub devminor: u32,
    /// Extended attributes from `SCHILY.xattr.*` records, in header order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data chunks `(offset, length)` of a sparse file.
    pub sparse: Option<Vec<(u64, u64)>>,
}

impl RawEntry {
    /// The path, lossily decoded, for error messages.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Whether the entry is a regular file (its data is its content).
    pub fn is_file(&self) -> bool {
        matches!(self.typeflag, b'0' | b'7' | b'S')
    }
}

/// Where the content reader is inside a sparse file.
struct SparseState {
    chunks: Vec<(u64, u64)>,
    next_chunk: usize,
    logical_pos: u64,
    real_size: u64,
}

/// `GNU.sparse.*` records of a PAX sparse file (formats 0.1 and 1.0).
#[derive(Default)]
struct PaxSparse {
    major: Option<u64>,
    name: Option<Vec<u8>>,
    realsize: Option<u64>,
    size: Option<u64>,
    map: Option<Vec<(u64, u64)>>,
}

/// Parses a format 0.1 map: `offset,length,offset,length,...`.
fn parse_sparse_map_01(value: &[u8]) -> Option<Vec<(u64, u64)>> {
    let numbers = value
        .split(|b| *b == b',')
        .map(pax::parse_u64)
        .collect::<Option<Vec<u64>>>()?;
    if numbers.len() % 2 != 0 || numbers.len() / 2 > MAX_SPARSE_CHUNKS {
        return None;
    }
    Some(numbers.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// A streaming tar reader.
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    data_left: u64,
    pad_left: u64,
    sparse: Option<SparseState>,
    entries: u64,
    finished: bool,
}

fn field(block: &[u8], start: usize, end: usize) -> &[u8] {
    let f = &block[start..end];
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// Parses a numeric header field: octal (space/NUL padded) or GNU base-256.
fn parse_number(f: &[u8]) -> Option<i128> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            let mut v: i128 = if first == 0xff {
                -1
            } else {
                i128::from(first & 0x7f)
            };
            for b in &f[1..] {
                v = v.checked_mul(256)?.checked_add(i128::from(*b))?;
            }
            return Some(v);
        }
    }
    let text: &[u8] = {
        let start = f
            .iter()
            .position(|b| *b != b' ' && *b != 0)
            .unwrap_or(f.len());
        let rest = &f[start..];
        let end = rest
            .iter()
            .position(|b| *b == b' ' || *b == 0)
            .unwrap_or(rest.len());
        // Anything after the terminator must be padding.
        if rest[end..].iter().any(|b| *b != b' ' && *b != 0) {
            return None;
        }
        &rest[..end]
    };
    let mut v: i128 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(v)
}

impl<R: Read> TarReader<R> {
    /// Wraps a reader positioned at the start of a tar stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            data_left: 0,
            pad_left: 0,
            sparse: None,
            entries: 0,
            finished: false,
        }
    }

    /// Offset in the tar stream of the next byte to be read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the underlying reader back.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn bad(&self, offset: u64, reason: impl Into<String>) -> FormatError {
        FormatError::BadTar {
            offset,
            reason: reason.into(),
        }
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, FormatError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::from_decode(e, "reading the tar stream")),
            }
        }
        Ok(done)
    }

    fn truncated(&self, what: &str) -> FormatError {
        FormatError::Truncated(format!(
            "tar stream ends at byte {} inside {what}",
            self.pos
        ))
    }

    fn read_exact_counted(&mut self, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
        if self.fill(buf)? < buf.len() {
            return Err(self.truncated(what));
        }
        Ok(())
    }

    /// Reads one block; `None` at a clean end of stream.
    fn read_block(&mut self) -> Result<Option<[u8; 512]>, FormatError> {
        let mut block = [0u8; 512];
        match self.fill(&mut block)? {
            0 => Ok(None),
            512 => Ok(Some(block)),
            _ => Err(self.truncated("a header")),
        }
    }

    fn skip(&mut self, mut n: u64, what: &str) -> Result<(), FormatError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            self.read_exact_counted(&mut buf[..want], what)?;
            n -= want as u64;
        }
        Ok(())
    }

    fn read_extension(
        &mut self,
        size: u64,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, FormatError> {
        if size > limit {
            return Err(FormatError::Limit {
                path: String::new(),
                what: format!(
                    "{what} of {size} bytes at byte {} exceeds {limit} bytes",
                    self.pos
                ),
            });
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact_counted(&mut data, what)?;
        self.skip(padding(size), what)?;
        Ok(data)
    }

    /// After the end-of-archive marker only zeros may follow.
    fn check_trailer(&mut self) -> Result<(), FormatError> {
        let mut buf = [0u8; 8192];
        loop {
            let block_start = self.pos;
            let n = match self.inner.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FormatError::from_decode(e, "reading the tar stream")),
            };
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
                return Err(FormatError::TrailingData {
                    offset: block_start + i as u64,
                });
            }
        }
    }

    /// Skips what is left of the current entry's data and padding.
    fn finish_entry(&mut self) -> Result<(), FormatError> {
        let left = self.data_left + self.pad_left;
        self.data_left = 0;
        self.pad_left = 0;
        self.sparse = None;
        self.skip(left, "entry data")
    }

    /// The next entry, or `None` after the end-of-archive marker (the rest
    /// of the stream is then read and checked to be zeros).
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>, FormatError> {
        self.finish_entry()?;
        if self.finished {
            return Ok(None);
        }
        let header_offset = self.pos;
        let mut pax_data: Option<Vec<u8>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let block_offset = self.pos;
            let Some(block) = self.read_block()? else {
                return Err(FormatError::Truncated(format!(
                    "tar stream ends at byte {} without an end-of-archive marker",
                    self.pos
                )));
            };
            if block.iter().all(|b| *b == 0) {
                if pax_data.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(self.bad(block_offset, "extension header not followed by an entry"));
                }
                self.finished = true;
                self.check_trailer()?;
                return Ok(None);
            }
            self.check_checksum(&block, block_offset)?;
            let typeflag = block[156];
            let size = self.number(&block, 124, 136, block_offset, "size")?;
            match typeflag {
                b'x' => {
                    if pax_data.is_some() {
                        return Err(self.bad(block_offset, "two PAX headers for one entry"));
                    }
                    pax_data = Some(self.read_extension(size, MAX_PAX_SIZE, "PAX header")?);
                }
                b'g' => {
                    tracing::warn!(offset = block_offset, "ignoring a PAX global header");
                    if size > MAX_PAX_SIZE {
                        return Err(FormatError::Limit {
                            path: String::new(),
                            what: format!(
                                "PAX global header of {size} bytes exceeds {MAX_PAX_SIZE} bytes"
                            ),
                        });
                    }
                    self.skip(size + padding(size), "PAX global header")?;
                }
                b'L' | b'K' => {
                    let slot = if typeflag == b'L' {
                        &long_name
                    } else {
                        &long_link
                    };
                    if slot.is_some() {
                        return Err(
                            self.bad(block_offset, "two GNU long-name headers for one entry")
                        );
                    }
                    let mut data = self.read_extension(size, MAX_GNU_LONG_SIZE, "GNU long name")?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if typeflag == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                }
                b'V' => {
                    tracing::warn!(offset = block_offset, "ignoring a tar volume header");
                    self.skip(size + padding(size), "volume header")?;
                }
                _ => {
                    let entry = self.build_entry(
                        &block,
                        header_offset,
                        block_offset,
                        size,
                        pax_data.as_deref(),
                        long_name,
                        long_link,
                    )?;
                    return Ok(Some(entry));
                }
            }
        }
    }

    fn check_checksum(&self, block: &[u8; 512], offset: u64) -> Result<(), FormatError> {
        let stored = parse_number(&block[148..156])
            .ok_or_else(|| self.bad(offset, "unparsable header checksum"))?;
        let mut unsigned: i128 = 0;
        let mut signed: i128 = 0;
        for (i, b) in block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { *b };
            unsigned += i128::from(b);
            signed += i128::from(b as i8);
        }
        if stored != unsigned && stored != signed {
            return Err(self.bad(offset, "header checksum mismatch"));
        }
        Ok(())
    }

    fn number(
        &self,
        block: &[u8],
        start: usize,
        end: usize,
        offset: u64,
        name: &str,
    ) -> Result<u64, FormatError> {
        parse_number(&block[start..end])
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| self.bad(offset, format!("bad {name} field")))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_entry(
        &mut self,
        block: &[u8; 512],
        header_offset: u64,
        block_offset: u64,
        header_size: u64,
        pax_data: Option<&[u8]>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<RawEntry, FormatError> {
        let is_ustar = &block[257..263] == b"ustar\0";
        let is_gnu = &block[257..265] == b"ustar  \0";
        let mut e = RawEntry {
            header_offset,
            typeflag: block[156],
            ..RawEntry::default()
        };
        e.path = field(block, 0, 100).to_vec();
        if is_ustar {
            let prefix = field(block, 345, 500);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&e.path);
                e.path = p;
            }
        }
        e.link = field(block, 157, 257).to_vec();
        e.mode = (self.number(block, 100, 108, block_offset, "mode")? & 0o7777) as u32;
        e.uid = self.number(block, 108, 116, block_offset, "uid")?;
        e.gid = self.number(block, 116, 124, block_offset, "gid")?;
        e.mtime = parse_number(&block[136..148])
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| self.bad(block_offset, "bad mtime field"))?;
        if is_ustar || is_gnu {
            e.uname = field(block, 265, 297).to_vec();
            e.gname = field(block, 297, 329).to_vec();
            if matches!(e.typeflag, b'3' | b'4') {
                let major = self.number(block, 329, 337, block_offset, "devmajor")?;
                let minor = self.number(block, 337, 345, block_offset, "devminor")?;
                e.devmajor = u32::try_from(major)
                    .map_err(|_| self.bad(block_offset, "devmajor too large"))?;
                e.devminor = u32::try_from(minor)
                    .map_err(|_| self.bad(block_offset, "devminor too large"))?;
            }
        }
        if let Some(name) = long_name {
            e.path = name;
        }
        if let Some(link) = long_link {
            e.link = link;
        }
        let mut stored_size = header_size;
        let mut pax_sparse = None;
        if let Some(data) = pax_data {
            pax_sparse = self.apply_pax(&mut e, data, block_offset, &mut stored_size)?;
        }
        if e.typeflag == 0 {
            e.typeflag = b'0';
        }
        if e.typeflag == b'0' && e.path.ends_with(b"/") {
            e.typeflag = b'5';
        }
        if e.typeflag == b'D' {
            e.typeflag = b'5';
        }
        match e.typeflag {
            b'0' | b'7' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => {}
            b'S' => {
                if !is_gnu {
                    return Err(self.bad(block_offset, "GNU sparse entry without a GNU header"));
                }
            }
            other => {
                return Err(FormatError::Unsupported {
                    path: e.display_path(),
                    what: format!("tar entry type {:?}", char::from(other)),
                })
            }
        }
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(FormatError::Limit {
                path: e.display_path(),
                what: format!("more than {MAX_ENTRIES} entries in one layer"),
            });
        }
        if stored_size > MAX_FILE_SIZE {
            return Err(FormatError::Limit {
                path: e.display_path(),
                what: format!("entry size {stored_size} exceeds {MAX_FILE_SIZE} bytes"),
            });
        }
        if e.typeflag == b'S' {
            let real = self.number(block, 483, 495, block_offset, "sparse real size")?;
            let chunks = self.read_sparse_map(block, block_offset, &e)?;
            self.check_sparse(&e, &chunks, real, stored_size)?;
            e.size = real;
            self.sparse = Some(SparseState {
                chunks: chunks.clone(),
                next_chunk: 0,
                logical_pos: 0,
                real_size: real,
            });
            e.sparse = Some(chunks);
        } else if let Some(ps) = pax_sparse.filter(|_| e.is_file()) {
            if let Some(name) = ps.name {
                e.path = name;
            }
            let real = ps
                .realsize
                .or(ps.size)
                .ok_or_else(|| self.bad(block_offset, "PAX sparse file without its real size"))?;
            let chunks = if ps.major == Some(1) {
                let (chunks, map_len) = self.read_pax_sparse_map(&e)?;
                stored_size = stored_size.checked_sub(map_len).ok_or_else(|| {
                    self.bad(block_offset, "PAX sparse map longer than the entry")
                })?;
                chunks
            } else {
                ps.map
                    .ok_or_else(|| self.bad(block_offset, "PAX sparse file without a map"))?
            };
            self.check_sparse(&e, &chunks, real, stored_size)?;
            e.size = real;
            self.sparse = Some(SparseState {
                chunks: chunks.clone(),
                next_chunk: 0,
                logical_pos: 0,
                real_size: real,
            });
            e.sparse = Some(chunks);
        } else if e.is_file() {
            e.size = stored_size;
        }
        e.data_offset = self.pos;
        self.data_left = stored_size;
        self.pad_left = padding(stored_size);
        Ok(e)
    }

    fn apply_pax(
        &self,
        e: &mut RawEntry,
        data: &[u8],
        offset: u64,
        stored_size: &mut u64,
    ) -> Result<Option<PaxSparse>, FormatError> {
        let mut sparse: Option<PaxSparse> = None;
        let records = pax::parse_records(data).map_err(|r| self.bad(offset, r))?;
        let bad_value = |key: &[u8]| {
            self.bad(
                offset,
                format!("bad PAX value for {}", String::from_utf8_lossy(key)),
            )
        };
        for (key, value) in records {
            match key {
                b"path" => e.path = value.to_vec(),
                b"linkpath" => e.link = value.to_vec(),
                b"size" => *stored_size = pax::parse_u64(value).ok_or_else(|| bad_value(key))?,
                b"uid" => e.uid = pax::parse_u64(value).ok_or_else(|| bad_value(key))?,
                b"gid" => e.gid = pax::parse_u64(value).ok_or_else(|| bad_value(key))?,
                b"uname" => e.uname = value.to_vec(),
                b"gname" => e.gname = value.to_vec(),
                b"mtime" => {
                    let (s, n) = pax::parse_time(value).ok_or_else(|| bad_value(key))?;
                    e.mtime = s;
                    e.mtime_nsec = n;
                }
                b"SCHILY.devmajor" | b"SCHILY.devminor" => {
                    let v = pax::parse_u64(value)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| bad_value(key))?;
                    if key == b"SCHILY.devmajor" {
                        e.devmajor = v;
                    } else {
                        e.devminor = v;
                    }
                }
                _ if key.starts_with(b"SCHILY.xattr.") => {
                    let name = &key[b"SCHILY.xattr.".len()..];
                    if value.len() > MAX_XATTR_VALUE {
                        return Err(FormatError::Limit {
                            path: e.display_path(),
                            what: format!(
                                "xattr value of {} bytes exceeds {MAX_XATTR_VALUE} bytes",
                                value.len()
                            ),
                        });
                    }
                    if e.xattrs.len() >= MAX_XATTRS {
                        return Err(FormatError::Limit {
                            path: e.display_path(),
                            what: format!("more than {MAX_XATTRS} xattrs"),
                        });
                    }
                    e.xattrs.push((name.to_vec(), value.to_vec()));
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    let ps = sparse.get_or_insert_with(PaxSparse::default);
                    let number = || pax::parse_u64(value).ok_or_else(|| bad_value(key));
                    match &key[b"GNU.sparse.".len()..] {
                        b"major" => ps.major = Some(number()?),
                        b"minor" | b"numblocks" => {}
                        b"name" => ps.name = Some(value.to_vec()),
                        b"realsize" => ps.realsize = Some(number()?),
                        b"size" => ps.size = Some(number()?),
                        b"map" => {
                            ps.map = Some(parse_sparse_map_01(value).ok_or_else(|| bad_value(key))?)
                        }
                        _ => {
                            return Err(FormatError::Unsupported {
                                path: e.display_path(),
                                what: "PAX sparse format 0.0 (GNU.sparse.offset/numbytes)".into(),
                            })
                        }
                    }
                }
                _ => tracing::debug!(key = %String::from_utf8_lossy(key), "ignoring a PAX record"),
            }
        }
        Ok(sparse)
    }

    fn read_sparse_map(
        &mut self,
        block: &[u8; 512],
        offset: u64,
        e: &RawEntry,
    ) -> Result<Vec<(u64, u64)>, FormatError> {
        let mut chunks = Vec::new();
        let push = |chunks: &mut Vec<(u64, u64)>, desc: &[u8]| -> Option<bool> {
            // An all-zero/empty descriptor ends the list.
            if desc.iter().all(|b| *b == 0) {
                return Some(false);
            }
            let off = u64::try_from(parse_number(&desc[..12])?).ok()?;
            let len = u64::try_from(parse_number(&desc[12..24])?).ok()?;
            chunks.push((off, len));
            Some(true)
        };
        let bad_map = || self.bad(offset, "bad GNU sparse map");
        for i in 0..4 {
            let start = 386 + i * 24;
            if !push(&mut chunks, &block[start..start + 24]).ok_or_else(bad_map)? {
                break;
            }
        }
        let mut extended = block[482] != 0;
        while extended {
            let ext_offset = self.pos;
            let ext = self.read_block()?.ok_or_else(|| {
                FormatError::Truncated(format!(
                    "tar stream ends inside the sparse map of {:?}",
                    e.display_path()
                ))
            })?;
            for i in 0..21 {
                let start = i * 24;
                if !push(&mut chunks, &ext[start..start + 24])
                    .ok_or_else(|| self.bad(ext_offset, "bad GNU sparse map"))?
                {
                    break;
                }
            }
            if chunks.len() > MAX_SPARSE_CHUNKS {
                return Err(FormatError::Limit {
                    path: e.display_path(),
                    what: format!("sparse map with more than {MAX_SPARSE_CHUNKS} chunks"),
                });
            }
            extended = ext[504] != 0;
        }
        Ok(chunks)
    }

    /// Reads the map at the start of a PAX 1.0 sparse file's data: decimal
    /// numbers, one per line (the chunk count, then offset and length of
    /// each chunk), padded to a block. Returns the chunks and the map's size.
    fn read_pax_sparse_map(&mut self, e: &RawEntry) -> Result<(Vec<(u64, u64)>, u64), FormatError> {
        let mut numbers: Vec<u64> = Vec::new();
        let mut current: Option<u64> = None;
        let mut len = 0u64;
        let bad = |what: &str| FormatError::BadTar {
            offset: e.header_offset,
            reason: format!("sparse file {:?}: {what}", e.display_path()),
        };
        loop {
            let block = self.read_block()?.ok_or_else(|| {
                FormatError::Truncated(format!(
                    "tar stream ends inside the sparse map of {:?}",
                    e.display_path()
                ))
            })?;
            len += BLOCK;
            for b in block {
                if let Some(&count) = numbers.first() {
                    if numbers.len() as u64 == 1 + 2 * count {
                        break;
                    }
                }
                match b {
                    b'0'..=b'9' => {
                        let v = current
                            .unwrap_or(0)
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(b - b'0')))
                            .ok_or_else(|| bad("number overflows in the sparse map"))?;
                        current = Some(v);
                    }
                    b'\n' => {
                        numbers.push(
                            current
                                .take()
                                .ok_or_else(|| bad("empty line in the sparse map"))?,
                        );
                        if numbers.len() == 1 && numbers[0] > MAX_SPARSE_CHUNKS as u64 {
                            return Err(FormatError::Limit {
                                path: e.display_path(),
                                what: format!(
                                    "sparse map with more than {MAX_SPARSE_CHUNKS} chunks"
                                ),
                            });
                        }
                    }
                    _ => return Err(bad("unexpected byte in the sparse map")),
                }
            }
            if let Some(&count) = numbers.first() {
                if numbers.len() as u64 == 1 + 2 * count {
                    let chunks = numbers[1..].chunks(2).map(|c| (c[0], c[1])).collect();
                    return Ok((chunks, len));
                }
            }
        }
    }

    fn check_sparse(
        &self,
        e: &RawEntry,
        chunks: &[(u64, u64)],
        real: u64,
        stored: u64,
    ) -> Result<(), FormatError> {
        let bad = |what: &str| FormatError::BadTar {
            offset: e.header_offset,
            reason: format!("sparse file {:?}: {what}", e.display_path()),
        };
        if real > MAX_FILE_SIZE {
            return Err(FormatError::Limit {
                path: e.display_path(),
                what: format!("sparse file size {real} exceeds {MAX_FILE_SIZE} bytes"),
            });
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in chunks {
            if off < end {
                return Err(bad("overlapping or unordered chunks"));
            }
            end = off.checked_add(len).ok_or_else(|| bad("chunk overflows"))?;
            if end > real {
                return Err(bad("chunk beyond the file size"));
            }
            total += len;
        }
        if total != stored {
            return Err(bad("chunk lengths do not add up to the stored data"));
        }
        Ok(())
    }

    /// Reader over the current entry's content (expanded for sparse files).
    pub fn content(&mut self) -> Content<'_, R> {
        Content { tar: self }
    }

    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.data_left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("tar stream ends at byte {} inside file data", self.pos),
            ));
        }
        self.pos += n as u64;
        self.data_left -= n as u64;
        Ok(n)
    }
}

/// Reader over one entry's content; see [`TarReader::content`].
pub struct Content<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(mut sparse) = self.tar.sparse.take() else {
            return self.tar.read_data(buf);
        };
        let result = loop {
            if sparse.logical_pos >= sparse.real_size || buf.is_empty() {
                break Ok(0);
            }
            let (next_off, next_len) = sparse
                .chunks
                .get(sparse.next_chunk)
                .copied()
                .unwrap_or((sparse.real_size, 0));
            if sparse.logical_pos < next_off {
                // A hole.
                let n = (next_off - sparse.logical_pos).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                sparse.logical_pos += n as u64;
                break Ok(n);
            }
            let chunk_left = next_off + next_len - sparse.logical_pos;
            if chunk_left == 0 {
                sparse.next_chunk += 1;
                continue;
            }
            let want = chunk_left.min(buf.len() as u64) as usize;
            break self.tar.read_data(&mut buf[..want]).inspect(|n| {
                sparse.logical_pos += *n as u64;
            });
        };
        self.tar.sparse = Some(sparse);
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"    644 "), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"0000648\0"), None);
        assert_eq!(parse_number(b"12 3\0"), None);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 1;
        b256[10] = 2;
        assert_eq!(parse_number(&b256), Some(0x201));
        assert_eq!(parse_number(&[0xff; 12]), Some(-1));
    }

    #[test]
    fn padding_is_to_blocks() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
