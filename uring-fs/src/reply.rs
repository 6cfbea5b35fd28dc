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

/// The answer to an open that may hand the session a local backing file
/// ([`crate::Filesystem::open_backed`]).
#[derive(Clone, Debug, Default)]
pub struct OpenedFile {
    /// Handle and cache hints, as for [`crate::Filesystem::open`].
    pub opened: Opened,
    /// A local file holding exactly this inode's content (byte 0 is the
    /// file's byte 0). Where the kernel offers FUSE passthrough and the mount
    /// allows it, the session registers it as the open's backing file and
    /// the kernel then reads it directly: no read request reaches the
    /// filesystem for this open.
    pub backing: Option<Arc<File>>,
    /// Do not send a flush when the file is closed (`FOPEN_NOFLUSH`).
    pub noflush: bool,
}

impl From<Opened> for OpenedFile {
    fn from(opened: Opened) -> Self {
        OpenedFile {
            opened,
            backing: None,
            noflush: false,
        }
    }
}

/// One entry of a readdirplus answer: the directory entry and, unless it is
/// `.`/`..` or could not be looked up, its lookup result (which counts one
/// lookup, undone by forget, like [`crate::Filesystem::lookup`]).
#[derive(Clone, Debug)]
pub struct DirEntryPlus {
    /// The directory entry.
    pub entry: DirEntry,
    /// Its lookup result; `None` tells the kernel not to cache anything.
    pub lookup: Option<Entry>,
}

/// The changes a setattr asks for: each `Some` field is to be set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits and type (`chmod`).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (`truncate`).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
    /// The handle, when set through an open file.
    pub fh: Option<u64>,
}

/// The data answering a read.
#[derive(Debug)]
pub enum ReadData {
    /// Bytes already in memory; at most the requested size is sent.
    Bytes(Vec<u8>),
    /// A range of a local backing file starting at `offset`, up to the
    /// requested size or the end of the file. Over `/dev/fuse` the session
    /// splices it from the file into the reply (no copy through userspace),
    /// falling back to `pread`; over io_uring it is read straight into the
    /// ring's payload buffer.
    File {
        /// The backing file.
        file: Arc<File>,
        /// Where in the backing file the requested range starts.
        offset: u64,
    },
    /// Like [`ReadData::File`], but at most `len` bytes: for content that is
    /// a slice of a larger local file.
    FileRange {
        /// The backing file.
        file: Arc<File>,
        /// Where in the backing file the requested range starts.
        offset: u64,
        /// At most this many bytes are sent (fewer at the end of the file).
        len: u64,
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
