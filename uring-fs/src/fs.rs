//! The asynchronous filesystem trait a FUSE server implements.
//!
//! Each request is served in its own task, so a method may await for as long
//! as it needs (an open waiting for content) without holding up any other
//! request. Every method has a default: `ENOSYS` for what is not implemented
//! (the kernel then falls back where it can, e.g. for `open` and `access`).

use std::ffi::OsStr;
use std::future::Future;

use crate::errno::{Errno, Result};
use crate::reply::{
    Attr, DirEntry, DirEntryPlus, Entry, Opened, OpenedFile, ReadData, SetAttr, StatFs,
};

/// The caller of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The kernel's id of the request.
    pub unique: u64,
    /// User id of the calling process.
    pub uid: u32,
    /// Group id of the calling process.
    pub gid: u32,
    /// Process id of the caller.
    pub pid: u32,
}

/// The answer to getxattr and listxattr.
///
/// The session handles the size-probing protocol (a zero-sized request gets
/// the length, a too small buffer gets `ERANGE`): the filesystem always
/// returns the whole value.
pub type XattrValue = Vec<u8>;

/// The size a readdirplus entry named `name` takes in a reply.
pub(crate) fn direntplus_len(name: &OsStr) -> usize {
    crate::abi::ENTRY_OUT_LEN + 24 + name.len().div_ceil(8) * 8
}

/// An asynchronous, read-only-by-default FUSE filesystem.
///
/// The inode number of the root directory is 1. The read side answers
/// `ENOSYS` by default (the kernel then falls back where it can), the write
/// side `EROFS`; [`Filesystem::readdirplus`] and [`Filesystem::open_backed`]
/// have defaults built on `readdir`+`lookup` and `open`.
pub trait Filesystem: Send + Sync + 'static {
    /// Find `name` in directory `parent`; each success counts one lookup of
    /// the inode, undone by [`Filesystem::forget`].
    fn lookup(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
    ) -> impl Future<Output = Result<Entry>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// The kernel dropped `nlookup` lookups of `ino`. No reply is sent.
    fn forget(&self, _ino: u64, _nlookup: u64) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The attributes of `ino` (`fh` is set when asked through an open file).
    fn getattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: Option<u64>,
    ) -> impl Future<Output = Result<Attr>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// The target of symbolic link `ino`.
    fn readlink(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// Open file `ino` with `flags`. May await (content not yet there): only
    /// this request waits.
    fn open(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _flags: u32,
    ) -> impl Future<Output = Result<Opened>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// Read up to `size` bytes of `ino` at `offset` through handle `fh`.
    fn read(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
        _offset: u64,
        _size: u32,
    ) -> impl Future<Output = Result<ReadData>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// The last reference to handle `fh` of `ino` is gone.
    fn release(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Open directory `ino` for reading. The default succeeds with handle 0.
    fn opendir(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _flags: u32,
    ) -> impl Future<Output = Result<Opened>> + Send {
        async { Ok(Opened::default()) }
    }

    /// The entries of directory `ino` from `offset` on (0 is the start; each
    /// entry carries the offset of the next). Return as many as convenient:
    /// the session sends those that fit in `size` bytes, and the kernel asks
    /// again from the last offset sent.
    fn readdir(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
        _offset: u64,
        _size: u32,
    ) -> impl Future<Output = Result<Vec<DirEntry>>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// Directory handle `fh` of `ino` is closed.
    fn releasedir(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// The value of extended attribute `name` of `ino`.
    fn getxattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _name: &OsStr,
    ) -> impl Future<Output = Result<XattrValue>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// The names of the extended attributes of `ino`, each followed by a NUL.
    fn listxattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
    ) -> impl Future<Output = Result<XattrValue>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// File system statistics.
    fn statfs(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
    ) -> impl Future<Output = Result<StatFs>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// Check access `mask` (`R_OK`, ...) to `ino`. The default `ENOSYS`
    /// makes the kernel grant access by the mode bits from then on.
    fn access(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _mask: u32,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::ENOSYS) }
    }

    /// Like [`Filesystem::open`], but the answer may name a local backing
    /// file for FUSE passthrough ([`OpenedFile::backing`]). The session calls
    /// this one; the default calls `open` and names no backing file.
    fn open_backed(
        &self,
        ctx: &RequestContext,
        ino: u64,
        flags: u32,
    ) -> impl Future<Output = Result<OpenedFile>> + Send {
        async move { self.open(ctx, ino, flags).await.map(OpenedFile::from) }
    }

    /// The entries of directory `ino` from `offset` on, each with its lookup
    /// result, so that a listing also fills the kernel's attribute cache
    /// (`ls -l`, `find` then stat without a request each). The default takes
    /// [`Filesystem::readdir`]'s entries that fit in `size` and looks each up
    /// (except `.` and `..`).
    fn readdirplus(
        &self,
        ctx: &RequestContext,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> impl Future<Output = Result<Vec<DirEntryPlus>>> + Send {
        async move {
            let entries = self.readdir(ctx, ino, fh, offset, size).await?;
            let mut out = Vec::with_capacity(entries.len());
            let mut used = 0usize;
            for entry in entries {
                used += direntplus_len(&entry.name);
                if used > size as usize {
                    break;
                }
                let dot = entry.name == "." || entry.name == "..";
                let lookup = if dot {
                    None
                } else {
                    self.lookup(ctx, ino, &entry.name).await.ok()
                };
                out.push(DirEntryPlus { entry, lookup });
            }
            Ok(out)
        }
    }

    /// Flush handle `fh` (on every close of a file descriptor). Default: done.
    fn flush(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Synchronize file `ino` (`datasync`: data only). Default: done.
    fn fsync(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Change attributes of `ino`. Default: `EROFS`.
    fn setattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _changes: SetAttr,
    ) -> impl Future<Output = Result<Attr>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Create a node (file, device, fifo, socket) `name` in `parent`.
    /// Default: `EROFS`.
    fn mknod(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _rdev: u32,
    ) -> impl Future<Output = Result<Entry>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Create directory `name` in `parent`. Default: `EROFS`.
    fn mkdir(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
    ) -> impl Future<Output = Result<Entry>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Remove file `name` from `parent`. Default: `EROFS`.
    fn unlink(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Remove directory `name` from `parent`. Default: `EROFS`.
    fn rmdir(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Create symbolic link `name` in `parent` pointing at `target`.
    /// Default: `EROFS`.
    fn symlink(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
        _target: &OsStr,
    ) -> impl Future<Output = Result<Entry>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Rename `parent/name` to `new_parent/new_name` (`flags` as for
    /// `renameat2`). Default: `EROFS`.
    fn rename(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
        _new_parent: u64,
        _new_name: &OsStr,
        _flags: u32,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Create hard link `new_parent/new_name` to `ino`. Default: `EROFS`.
    fn link(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _new_parent: u64,
        _new_name: &OsStr,
    ) -> impl Future<Output = Result<Entry>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Create and open file `name` in `parent`. Default: `EROFS`.
    fn create(
        &self,
        _ctx: &RequestContext,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _flags: u32,
    ) -> impl Future<Output = Result<(Entry, Opened)>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Write `data` to `ino` at `offset`; returns the bytes written.
    /// Default: `EROFS`.
    fn write(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _fh: u64,
        _offset: u64,
        _data: &[u8],
    ) -> impl Future<Output = Result<u32>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Set extended attribute `name` of `ino`. Default: `EROFS`.
    fn setxattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: u32,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::EROFS) }
    }

    /// Remove extended attribute `name` of `ino`. Default: `EROFS`.
    fn removexattr(
        &self,
        _ctx: &RequestContext,
        _ino: u64,
        _name: &OsStr,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Err(Errno::EROFS) }
    }
}
