//! Reply bodies in their wire form: attributes, entries, open replies,
//! directory listings, statfs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use crate::abi::{self, Put};
use crate::reply::{Attr, DirEntry, Entry, FileAttr, StatFs};

fn split_time(t: SystemTime) -> (u64, u32) {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (d.as_secs(), d.subsec_nanos())
}

/// `struct fuse_attr`.
pub(crate) fn put_attr(b: &mut Vec<u8>, a: &FileAttr) {
    let (atime, atime_ns) = split_time(a.atime);
    let (mtime, mtime_ns) = split_time(a.mtime);
    let (ctime, ctime_ns) = split_time(a.ctime);
    b.put_u64(a.ino);
    b.put_u64(a.size);
    b.put_u64(a.blocks);
    b.put_u64(atime);
    b.put_u64(mtime);
    b.put_u64(ctime);
    b.put_u32(atime_ns);
    b.put_u32(mtime_ns);
    b.put_u32(ctime_ns);
    b.put_u32(a.mode());
    b.put_u32(a.nlink);
    b.put_u32(a.uid);
    b.put_u32(a.gid);
    b.put_u32(a.rdev);
    b.put_u32(a.blksize);
    b.put_u32(0); // flags
}

/// `struct fuse_entry_out`.
pub(crate) fn put_entry(b: &mut Vec<u8>, e: &Entry) {
    b.put_u64(e.attr.ino);
    b.put_u64(e.generation);
    b.put_u64(e.entry_ttl.as_secs());
    b.put_u64(e.attr_ttl.as_secs());
    b.put_u32(e.entry_ttl.subsec_nanos());
    b.put_u32(e.attr_ttl.subsec_nanos());
    put_attr(b, &e.attr);
}

/// An all-zero `struct fuse_entry_out` (nodeid 0: cache nothing).
pub(crate) fn put_empty_entry(b: &mut Vec<u8>) {
    b.put_zeros(abi::ENTRY_OUT_LEN);
}

/// The body of a lookup-like reply.
pub(crate) fn entry(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(abi::ENTRY_OUT_LEN);
    put_entry(&mut b, e);
    b
}

/// `struct fuse_attr_out`.
pub(crate) fn attr(a: &Attr) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + abi::ATTR_LEN);
    b.put_u64(a.ttl.as_secs());
    b.put_u32(a.ttl.subsec_nanos());
    b.put_u32(0);
    put_attr(&mut b, &a.attr);
    b
}

/// `struct fuse_open_out`.
pub(crate) fn open(fh: u64, flags: u32, backing_id: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.put_u64(fh);
    b.put_u32(flags);
    b.put_u32(backing_id);
    b
}

/// `struct fuse_kstatfs` inside `fuse_statfs_out`.
pub(crate) fn statfs(s: &StatFs) -> Vec<u8> {
    let mut b = Vec::with_capacity(80);
    b.put_u64(s.blocks);
    b.put_u64(s.bfree);
    b.put_u64(s.bavail);
    b.put_u64(s.files);
    b.put_u64(s.ffree);
    b.put_u32(s.bsize);
    b.put_u32(s.namelen);
    b.put_u32(s.frsize);
    b.put_zeros(4 + 24);
    b
}

/// A `u32` and padding: `fuse_getxattr_out`, `fuse_write_out`.
pub(crate) fn size_out(size: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(8);
    b.put_u32(size);
    b.put_u32(0);
    b
}

/// Appends `struct fuse_dirent` + name + padding if it fits in `limit`
/// bytes in all; false (nothing appended) when it does not.
pub(crate) fn put_dirent(b: &mut Vec<u8>, limit: usize, e: &DirEntry) -> bool {
    let name = e.name.as_bytes();
    let len = 24 + name.len().div_ceil(8) * 8;
    if b.len() + len > limit {
        return false;
    }
    b.put_u64(e.ino);
    b.put_u64(e.next_offset);
    b.put_u32(name.len() as u32);
    b.put_u32(e.kind.dirent_type());
    b.extend_from_slice(name);
    b.put_zeros(len - 24 - name.len());
    true
}

/// Appends `struct fuse_direntplus` if it fits; false when it does not.
pub(crate) fn put_direntplus(
    b: &mut Vec<u8>,
    limit: usize,
    e: &DirEntry,
    lookup: Option<&Entry>,
) -> bool {
    let len = crate::fs::direntplus_len(OsStr::new(&e.name));
    if b.len() + len > limit {
        return false;
    }
    match lookup {
        Some(entry) => put_entry(b, entry),
        None => put_empty_entry(b),
    }
    put_dirent(b, usize::MAX, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::FileKind;

    fn sample_entry() -> Entry {
        Entry {
            attr: FileAttr::new(5, FileKind::File, 0o644, 10),
            generation: 0,
            attr_ttl: Duration::from_millis(1500),
            entry_ttl: Duration::from_secs(2),
        }
    }

    #[test]
    fn structs_have_the_kernel_sizes() {
        assert_eq!(entry(&sample_entry()).len(), abi::ENTRY_OUT_LEN);
        let a = Attr {
            attr: FileAttr::new(1, FileKind::Directory, 0o755, 0),
            ttl: Duration::from_secs(1),
        };
        assert_eq!(attr(&a).len(), 104);
        assert_eq!(statfs(&StatFs::default()).len(), 80);
        assert_eq!(open(1, 2, 3).len(), 16);
    }

    #[test]
    fn entry_carries_split_timeouts() {
        let b = entry(&sample_entry());
        assert_eq!(&b[16..24], &2u64.to_ne_bytes());
        assert_eq!(&b[24..32], &1u64.to_ne_bytes());
        assert_eq!(&b[36..40], &500_000_000u32.to_ne_bytes());
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let e = DirEntry {
            ino: 3,
            kind: FileKind::File,
            name: "abc".into(),
            next_offset: 1,
        };
        let mut b = Vec::new();
        assert!(put_dirent(&mut b, 64, &e));
        assert_eq!(b.len(), 32);
        assert!(put_dirent(&mut b, 64, &e));
        assert!(!put_dirent(&mut b, 64, &e), "a third does not fit");
        let mut p = Vec::new();
        assert!(put_direntplus(&mut p, 4096, &e, None));
        assert_eq!(p.len(), abi::ENTRY_OUT_LEN + 32);
    }
}
