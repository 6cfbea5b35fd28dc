//! The metadata of one layer entry, as the layer format, the indexer and the
//! directory database all see it.

use serde::{Deserialize, Serialize};

/// The kind of a tar entry. Whiteouts are plain empty regular files named
/// `.wh.*` in a layer; see [`Entry::whiteout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file (possibly empty).
    File,
    /// A symbolic link; [`Entry::link`] is its target, kept verbatim.
    Symlink,
    /// A hard link to an earlier entry of the same layer; [`Entry::link`] is
    /// the normalized path of that entry.
    Hardlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
}

/// Where a regular file's compressed content lives inside its layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentRef {
    /// SHA-256 of the uncompressed content.
    pub sha256: [u8; 32],
    /// Byte offset of the compressed member in the blob.
    pub offset: u64,
    /// Length of the compressed member in bytes.
    pub compressed_len: u64,
}

/// One entry of a layer, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalized relative path: no leading `/` or `./`, no trailing `/`, no
    /// `.` or `..` components. The root directory is the empty string.
    pub path: String,
    /// Entry kind.
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Owner user id.
    pub uid: u64,
    /// Owner group id.
    pub gid: u64,
    /// Owner user name from the tar header (may be empty).
    pub uname: String,
    /// Owner group name from the tar header (may be empty).
    pub gname: String,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the modification time, in nanoseconds.
    pub mtime_nsec: u32,
    /// Content size in bytes (regular files and resolved hard links; 0 otherwise).
    pub size: u64,
    /// Symlink target or hard-link target path.
    pub link: Option<String>,
    /// Device major number (devices only).
    pub devmajor: u32,
    /// Device minor number (devices only).
    pub devminor: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Compressed content location, for regular files with `size > 0`. For a
    /// hard link, the content of its target (filled in by the scanner).
    pub content: Option<ContentRef>,
}

/// What a whiteout entry does to the lower layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout {
    /// `dir/.wh.name`: removes `dir/name` (the returned path) and everything below it.
    Remove(String),
    /// `dir/.wh..wh..opq`: hides every lower-layer child of `dir` (the returned path).
    Opaque(String),
}

/// Prefix of whiteout file names.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

impl Entry {
    /// An entry of `kind` at `path` owned by root, with `mode` and every
    /// other field zero or empty; set the rest with struct update syntax.
    pub fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: vec![],
            content: None,
        }
    }

    /// The final path component (empty for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    /// The parent directory's path (`""` for top-level entries and the root).
    pub fn parent(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) => &self.path[..i],
            None => "",
        }
    }

    /// If this entry is a whiteout marker, what it removes.
    pub fn whiteout(&self) -> Option<Whiteout> {
        let name = self.name();
        if name == OPAQUE_MARKER {
            return Some(Whiteout::Opaque(self.parent().to_string()));
        }
        let target = name.strip_prefix(WHITEOUT_PREFIX)?;
        let parent = self.parent();
        Some(Whiteout::Remove(if parent.is_empty() {
            target.to_string()
        } else {
            format!("{parent}/{target}")
        }))
    }

    /// Lower-case hex of the content SHA-256, if the entry has content.
    pub fn sha256_hex(&self) -> Option<String> {
        self.content.map(|c| hex::encode(c.sha256))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry::new(path, EntryKind::File, 0o644)
    }

    #[test]
    fn whiteouts_are_recognized() {
        assert_eq!(
            entry("etc/.wh.passwd").whiteout(),
            Some(Whiteout::Remove("etc/passwd".into()))
        );
        assert_eq!(
            entry(".wh.opt").whiteout(),
            Some(Whiteout::Remove("opt".into()))
        );
        assert_eq!(
            entry("var/lib/.wh..wh..opq").whiteout(),
            Some(Whiteout::Opaque("var/lib".into()))
        );
        assert_eq!(entry("etc/passwd").whiteout(), None);
        assert_eq!(entry("etc/passwd").parent(), "etc");
        assert_eq!(entry("passwd").parent(), "");
    }
}
