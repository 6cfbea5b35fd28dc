//! What a filesystem answers: attributes, entries with their cache timeouts,
//! open handles with cache hints, directory entries, read data.

use std::ffi::OsString;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The `d_type` value of this kind in a directory listing.
    pub fn dirent_type(self) -> u32 {
        self.mode_bits() >> 12
    }
}

/// The attributes of an inode, as `stat(2)` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileAttr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Number of 512-byte blocks.
    pub blocks: u64,
    /// Last access time.
    pub atime: SystemTime,
    /// Last modification time.
    pub mtime: SystemTime,
    /// Last status change time.
    pub ctime: SystemTime,
    /// The inode's type.
    pub kind: FileKind,
    /// Permission bits (the low 12 bits of `st_mode`).
    pub perm: u16,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device inodes.
    pub rdev: u32,
    /// Preferred I/O block size.
    pub blksize: u32,
}

impl FileAttr {
    /// Attributes with the given inode, kind, permissions and size; one link,
    /// owned by root, all times at the epoch.
    pub fn new(ino: u64, kind: FileKind, perm: u16, size: u64) -> Self {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }

    /// The full `st_mode`: kind bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm & 0o7777)
    }
}

/// The answer to a lookup: the inode with its attributes and how long the
/// kernel may cache the name and the attributes.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The inode's attributes (its number is `attr.ino`).
    pub attr: FileAttr,
    /// Generation number, for inode numbers that are reused.
    pub generation: u64,
    /// How long the kernel may cache the attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache the name-to-inode mapping.
    pub entry_ttl: Duration,
}

/// The answer to a getattr: the attributes and how long to cache them.
#[derive(Clone, Debug)]
pub struct Attr {
    /// The attributes.
    pub attr: FileAttr,
    /// How long the kernel may cache them.
    pub ttl: Duration,
}

/// The answer to an open: a file handle and the kernel's cache hints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Handle passed back in reads and release.
    pub fh: u64,
    /// Keep the page cache from earlier opens (the content has not changed).
    pub keep_cache: bool,
    /// Bypass the page cache for this open.
    pub direct_io: bool,
}

/// One directory entry in a readdir answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// The entry's type.
    pub kind: FileKind,
    /// The name (no slash).
    pub name: OsString,
    /// The offset of the entry after this one: passed back in the next readdir.
    pub next_offset: u64,
}

/// File system statistics, as `statfs(2)` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest file name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// The data answering a read.
#[derive(Debug)]
pub enum ReadData {
    /// Bytes already in memory; at most the requested size is sent.
    Bytes(Vec<u8>),
    /// A range of a local backing file: the session reads it with `pread`
    /// (the place where a spliced reply will go).
    File {
        /// The backing file.
        file: Arc<File>,
        /// Where in the backing file the requested range starts.
        offset: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_combines_kind_and_permissions() {
        let attr = FileAttr::new(7, FileKind::Directory, 0o755, 0);
        assert_eq!(attr.mode(), libc::S_IFDIR | 0o755);
        assert_eq!(attr.nlink, 2);
        assert_eq!(FileKind::Symlink.dirent_type(), u32::from(libc::DT_LNK));
        assert_eq!(FileAttr::new(1, FileKind::File, 0o444, 513).blocks, 2);
    }
}
