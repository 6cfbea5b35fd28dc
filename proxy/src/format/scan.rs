//! Indexing a converted blob: every entry's metadata, content SHA-256 and
//! compressed member byte range.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};

use sha2::{Digest, Sha256};

use super::budget::LayerMeter;
use super::codec::detect_compression;
use super::entry::{ContentRef, Entry, EntryKind};
use super::error::FormatError;
use super::hashio::{read_prefix, HashReader, TagErrors};
use super::members::MemberReader;
use super::normalize::{missing_hardlink_target, to_entry};
use super::tar_read::TarReader;
use super::Compression;

/// The index of one converted layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedLayer {
    /// Entries in layer order; when a path occurs twice, only the last one.
    pub entries: Vec<Entry>,
    /// Compression of the blob.
    pub compression: Compression,
    /// `"sha256:<hex>"` of the blob.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// `"sha256:<hex>"` of the uncompressed tar stream.
    pub diff_id: String,
}

fn not_starlight(path: &str, reason: &str) -> FormatError {
    FormatError::NotStarlight {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Indexes a converted blob, streaming: every non-empty regular file's
/// content must be exactly one compressed member, or the blob is refused
/// with [`FormatError::NotStarlight`].
pub fn scan_layer<R: Read>(blob: R) -> Result<ScannedLayer, FormatError> {
    scan_layer_metered(blob, &LayerMeter::unlimited())
}

/// [`scan_layer`] within budgets: `meter` charges every entry's metadata and
/// counts the uncompressed bytes as they stream by; the scan stops with
/// [`FormatError::Budget`] as soon as one is exceeded.
pub fn scan_layer_metered<R: Read>(
    blob: R,
    meter: &LayerMeter,
) -> Result<ScannedLayer, FormatError> {
    let result = scan(blob, meter);
    // A budget error may come back rewrapped by the readers above the meter.
    match meter.exceeded() {
        Some(e) if result.is_err() => Err(FormatError::Budget(e)),
        _ => result,
    }
}

fn scan<R: Read>(blob: R, meter: &LayerMeter) -> Result<ScannedLayer, FormatError> {
    let mut blob = TagErrors(blob);
    let prefix = read_prefix(&mut blob, 4)?;
    let compression = detect_compression(&prefix);
    if compression == Compression::None {
        return Err(not_starlight("", "the blob is not gzip or zstd compressed"));
    }
    let buffered = Cursor::new(prefix).chain(BufReader::with_capacity(256 << 10, blob));
    let members = MemberReader::new(compression, buffered);
    let mut tar = TarReader::new(meter.reader(HashReader::new(members)));
    let mut entries: Vec<Option<Entry>> = Vec::new();
    let mut by_path: HashMap<String, usize> = HashMap::new();
    let mut buf = vec![0u8; 128 << 10];
    while let Some(raw) = tar.next_entry()? {
        if raw.sparse.is_some() {
            return Err(not_starlight(
                &raw.display_path(),
                "sparse entries are not written by the converter",
            ));
        }
        let mut entry = to_entry(&raw)?;
        match entry.kind {
            EntryKind::File if entry.size > 0 => {
                let start = tar.position();
                if !tar.get_mut().get_mut().get_mut().at_boundary()? {
                    return Err(not_starlight(
                        &entry.path,
                        "file content does not start a compressed member",
                    ));
                }
                let mut hasher = Sha256::new();
                let mut content = tar.content();
                let mut left = entry.size;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = content.read(&mut buf[..want]).map_err(|e| {
                        FormatError::from_decode(e, &format!("reading {:?}", entry.path))
                    })?;
                    if n == 0 {
                        return Err(FormatError::Truncated(format!(
                            "content of {:?}",
                            entry.path
                        )));
                    }
                    hasher.update(&buf[..n]);
                    left -= n as u64;
                }
                let members = tar.get_mut().get_mut().get_mut();
                let member = match (members.at_boundary()?, members.last_member()) {
                    (true, Some(m))
                        if m.uncompressed_offset == start && m.uncompressed_len == entry.size =>
                    {
                        m
                    }
                    _ => {
                        return Err(not_starlight(
                            &entry.path,
                            "file content is not exactly one compressed member",
                        ))
                    }
                };
                entry.content = Some(ContentRef {
                    sha256: hasher.finalize().into(),
                    offset: member.compressed_offset,
                    compressed_len: member.compressed_len,
                });
            }
            EntryKind::Hardlink => {
                let target = entry.link.as_deref().unwrap_or("");
                let found = by_path.get(target).and_then(|i| entries[*i].as_ref());
                match found {
                    // A hard link shares its target's inode: the visible
                    // metadata is the target's, whatever the link's header says.
                    Some(t) if t.kind == EntryKind::File || t.kind == EntryKind::Hardlink => {
                        entry.size = t.size;
                        entry.content = t.content;
                        entry.mode = t.mode;
                        entry.uid = t.uid;
                        entry.gid = t.gid;
                        entry.uname = t.uname.clone();
                        entry.gname = t.gname.clone();
                        entry.mtime = t.mtime;
                        entry.mtime_nsec = t.mtime_nsec;
                        entry.xattrs = t.xattrs.clone();
                        if t.kind == EntryKind::Hardlink {
                            entry.link = t.link.clone();
                        }
                    }
                    // A hard link to a symlink, device or fifo: a second copy
                    // of that special file under this path.
                    Some(t) if t.kind != EntryKind::Dir => {
                        let path = std::mem::take(&mut entry.path);
                        entry = Entry { path, ..t.clone() };
                    }
                    Some(_) => return Err(missing_hardlink_target(&entry, true)),
                    None => return Err(missing_hardlink_target(&entry, false)),
                }
            }
            _ => {}
        }
        meter.charge(&entry)?;
        if let Some(old) = by_path.insert(entry.path.clone(), entries.len()) {
            entries[old] = None;
        }
        entries.push(Some(entry));
    }
    let (members, diff_id, _) = tar.into_inner().into_inner().into_parts();
    let (digest, size) = members
        .into_blob()
        .ok_or_else(|| FormatError::Corrupt("the last member of the blob is incomplete".into()))?
        .finish();
    Ok(ScannedLayer {
        entries: entries.into_iter().flatten().collect(),
        compression,
        digest,
        size,
        diff_id,
    })
}
