//! Decodes one FUSE request, calls the filesystem, and says what to reply.
//! The transports (`/dev/fuse`, io_uring) deliver the reply.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::abi::{self, fopen, op, Cursor, InHeader};
use crate::encode;
use crate::errno::Errno;
use crate::fs::{Filesystem, RequestContext};
use crate::passthrough::Backings;
use crate::reply::{OpenedFile, ReadData, SetAttr};

/// One request: its header and its arguments (everything after the header,
/// as `/dev/fuse` delivers them).
#[derive(Debug)]
pub(crate) struct Request {
    pub header: InHeader,
    pub args: Vec<u8>,
}

/// What to send back.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing (forget, interrupt).
    NoReply,
    /// An error number (positive).
    Error(i32),
    /// A reply body.
    Data(Vec<u8>),
    /// A read answered from a local file: up to `len` bytes at `offset`.
    File {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl Outcome {
    fn from_result<T>(res: crate::Result<T>, body: impl FnOnce(T) -> Vec<u8>) -> Outcome {
        match res {
            Ok(v) => Outcome::Data(body(v)),
            Err(e) => Outcome::Error(e.code()),
        }
    }

    fn unit(res: crate::Result<()>) -> Outcome {
        Outcome::from_result(res, |()| Vec::new())
    }
}

/// What the dispatcher needs to know about the connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// Backing-file registry, when passthrough was negotiated and allowed.
    pub backings: Option<Backings>,
    /// Whether readdirplus was negotiated.
    pub readdirplus: bool,
}

fn malformed() -> Outcome {
    Outcome::Error(libc::EINVAL)
}

/// Serves `req` against `fs`.
pub(crate) async fn handle<F: Filesystem>(fs: &F, conn: &ConnCtx, req: &Request) -> Outcome {
    let h = &req.header;
    let ctx = RequestContext {
        unique: h.unique,
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    let ino = h.nodeid;
    let mut c = Cursor::new(&req.args);
    match h.opcode {
        op::LOOKUP => {
            let Some(name) = c.cstr() else {
                return malformed();
            };
            Outcome::from_result(fs.lookup(&ctx, ino, name).await, |e| encode::entry(&e))
        }
        op::FORGET => {
            if let Some(n) = c.u64() {
                fs.forget(ino, n).await;
            }
            Outcome::NoReply
        }
        op::BATCH_FORGET => {
            let count = c.u32().unwrap_or(0);
            let _ = c.u32();
            for _ in 0..count {
                let (Some(node), Some(n)) = (c.u64(), c.u64()) else {
                    break;
                };
                fs.forget(node, n).await;
            }
            Outcome::NoReply
        }
        op::GETATTR => {
            let flags = c.u32().unwrap_or(0);
            let _ = c.u32();
            let fh = c.u64().filter(|_| flags & abi::GETATTR_FH != 0);
            Outcome::from_result(fs.getattr(&ctx, ino, fh).await, |a| encode::attr(&a))
        }
        op::READLINK => Outcome::from_result(fs.readlink(&ctx, ino).await, |t| t),
        op::OPEN => {
            let Some(flags) = c.u32() else {
                return malformed();
            };
            match fs.open_backed(&ctx, ino, flags).await {
                Ok(opened) => open_reply(conn, ino, opened),
                Err(e) => Outcome::Error(e.code()),
            }
        }
        op::READ => {
            let (Some(fh), Some(offset), Some(size)) = (c.u64(), c.u64(), c.u32()) else {
                return malformed();
            };
            match fs.read(&ctx, ino, fh, offset, size).await {
                Ok(ReadData::Bytes(mut b)) => {
                    b.truncate(size as usize);
                    Outcome::Data(b)
                }
                Ok(ReadData::File { file, offset }) => Outcome::File {
                    file,
                    offset,
                    len: size as usize,
                },
                Ok(ReadData::FileRange { file, offset, len }) => Outcome::File {
                    file,
                    offset,
                    len: usize::try_from(len.min(u64::from(size))).unwrap_or(0),
                },
                Err(e) => Outcome::Error(e.code()),
            }
        }
        op::RELEASE | op::RELEASEDIR => {
            let Some(fh) = c.u64() else {
                return malformed();
            };
            if h.opcode == op::RELEASE {
                if let Some(b) = &conn.backings {
                    b.release(ino, fh);
                }
                Outcome::unit(fs.release(&ctx, ino, fh).await)
            } else {
                Outcome::unit(fs.releasedir(&ctx, ino, fh).await)
            }
        }
        op::OPENDIR => {
            let Some(flags) = c.u32() else {
                return malformed();
            };
            Outcome::from_result(fs.opendir(&ctx, ino, flags).await, |o| {
                encode::open(o.fh, open_flags(o.keep_cache, o.direct_io), 0)
            })
        }
        op::READDIR | op::READDIRPLUS => {
            let (Some(fh), Some(offset), Some(size)) = (c.u64(), c.u64(), c.u32()) else {
                return malformed();
            };
            if h.opcode == op::READDIR {
                readdir(fs, &ctx, ino, fh, offset, size).await
            } else if conn.readdirplus {
                readdirplus(fs, &ctx, ino, fh, offset, size).await
            } else {
                Outcome::Error(libc::ENOSYS)
            }
        }
        op::GETXATTR | op::LISTXATTR => {
            let Some(size) = c.u32() else {
                return malformed();
            };
            let _ = c.u32();
            let res = if h.opcode == op::GETXATTR {
                let Some(name) = c.cstr() else {
                    return malformed();
                };
                fs.getxattr(&ctx, ino, name).await
            } else {
                fs.listxattr(&ctx, ino).await
            };
            match res {
                Ok(value) if size == 0 => match u32::try_from(value.len()) {
                    Ok(len) => Outcome::Data(encode::size_out(len)),
                    Err(_) => Outcome::Error(libc::E2BIG),
                },
                Ok(value) if value.len() > size as usize => Outcome::Error(libc::ERANGE),
                Ok(value) => Outcome::Data(value),
                Err(e) => Outcome::Error(e.code()),
            }
        }
        op::STATFS => Outcome::from_result(fs.statfs(&ctx, ino).await, |s| encode::statfs(&s)),
        op::ACCESS => {
            let Some(mask) = c.u32() else {
                return malformed();
            };
            Outcome::unit(fs.access(&ctx, ino, mask).await)
        }
        op::FLUSH => {
            let Some(fh) = c.u64() else {
                return malformed();
            };
            Outcome::unit(fs.flush(&ctx, ino, fh).await)
        }
        op::FSYNC | op::FSYNCDIR => {
            let (Some(fh), Some(flags)) = (c.u64(), c.u32()) else {
                return malformed();
            };
            Outcome::unit(fs.fsync(&ctx, ino, fh, flags & 1 != 0).await)
        }
        op::INTERRUPT => Outcome::NoReply,
        op::DESTROY => Outcome::Data(Vec::new()),
        _ => write_side(fs, &ctx, h, &mut c).await,
    }
}

fn open_flags(keep_cache: bool, direct_io: bool) -> u32 {
    let mut flags = 0;
    if keep_cache {
        flags |= fopen::KEEP_CACHE;
    }
    if direct_io {
        flags |= fopen::DIRECT_IO;
    }
    flags
}

/// The open reply; with a backing file registered for passthrough when the
/// connection allows it (falling back to a normal open if registering fails).
fn open_reply(conn: &ConnCtx, ino: u64, o: OpenedFile) -> Outcome {
    let mut flags = open_flags(o.opened.keep_cache, o.opened.direct_io);
    if o.noflush {
        flags |= fopen::NOFLUSH;
    }
    if let (Some(backings), Some(file)) = (&conn.backings, &o.backing) {
        match backings.open(ino, o.opened.fh, file) {
            Ok(id) => {
                let flags = fopen::PASSTHROUGH | (flags & fopen::NOFLUSH);
                return Outcome::Data(encode::open(o.opened.fh, flags, id));
            }
            Err(err) => tracing::debug!(ino, %err, "passthrough refused; serving reads"),
        }
    }
    Outcome::Data(encode::open(o.opened.fh, flags, 0))
}

async fn readdir<F: Filesystem>(
    fs: &F,
    ctx: &RequestContext,
    ino: u64,
    fh: u64,
    offset: u64,
    size: u32,
) -> Outcome {
    match fs.readdir(ctx, ino, fh, offset, size).await {
        Ok(entries) => {
            let limit = size as usize;
            let mut b = Vec::with_capacity(limit.min(64 * 1024));
            for e in &entries {
                if !encode::put_dirent(&mut b, limit, e) {
                    break;
                }
            }
            Outcome::Data(b)
        }
        Err(e) => Outcome::Error(e.code()),
    }
}

async fn readdirplus<F: Filesystem>(
    fs: &F,
    ctx: &RequestContext,
    ino: u64,
    fh: u64,
    offset: u64,
    size: u32,
) -> Outcome {
    match fs.readdirplus(ctx, ino, fh, offset, size).await {
        Ok(entries) => {
            let limit = size as usize;
            let mut b = Vec::with_capacity(limit.min(64 * 1024));
            let mut full = false;
            for e in &entries {
                if !full && encode::put_direntplus(&mut b, limit, &e.entry, e.lookup.as_ref()) {
                    continue;
                }
                full = true;
                // Not sent: undo the lookup it counted.
                if let Some(l) = &e.lookup {
                    fs.forget(l.attr.ino, 1).await;
                }
            }
            Outcome::Data(b)
        }
        Err(e) => Outcome::Error(e.code()),
    }
}

fn time_of(secs: u64, nsecs: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nsecs.min(999_999_999))
}

/// The write side (and anything unknown: `ENOSYS`).
async fn write_side<F: Filesystem>(
    fs: &F,
    ctx: &RequestContext,
    h: &InHeader,
    c: &mut Cursor<'_>,
) -> Outcome {
    let ino = h.nodeid;
    let entry = |e: crate::Entry| encode::entry(&e);
    match h.opcode {
        op::SETATTR => {
            let Some(fields) = c.bytes(88) else {
                return malformed();
            };
            let mut f = Cursor::new(fields);
            let valid = f.u32().unwrap_or(0);
            let _ = f.u32();
            let (fh, size, _owner, atime, mtime, _ctime) = (
                f.u64().unwrap_or(0),
                f.u64().unwrap_or(0),
                f.u64(),
                f.u64().unwrap_or(0),
                f.u64().unwrap_or(0),
                f.u64(),
            );
            let (atime_ns, mtime_ns, _ctime_ns) = (
                f.u32().unwrap_or(0),
                f.u32().unwrap_or(0),
                f.u32().unwrap_or(0),
            );
            let mode = f.u32().unwrap_or(0);
            let _ = f.u32();
            let (uid, gid) = (f.u32().unwrap_or(0), f.u32().unwrap_or(0));
            let set = |bit: u32| valid & bit != 0;
            let now = SystemTime::now();
            let changes = SetAttr {
                mode: set(1 << 0).then_some(mode),
                uid: set(1 << 1).then_some(uid),
                gid: set(1 << 2).then_some(gid),
                size: set(1 << 3).then_some(size),
                atime: if set(1 << 7) {
                    Some(now)
                } else {
                    set(1 << 4).then(|| time_of(atime, atime_ns))
                },
                mtime: if set(1 << 8) {
                    Some(now)
                } else {
                    set(1 << 5).then(|| time_of(mtime, mtime_ns))
                },
                fh: set(1 << 6).then_some(fh),
            };
            Outcome::from_result(fs.setattr(ctx, ino, changes).await, |a| encode::attr(&a))
        }
        op::MKNOD => {
            let (Some(mode), Some(rdev), Some(_), Some(_)) = (c.u32(), c.u32(), c.u32(), c.u32())
            else {
                return malformed();
            };
            let Some(name) = c.cstr() else {
                return malformed();
            };
            Outcome::from_result(fs.mknod(ctx, ino, name, mode, rdev).await, entry)
        }
        op::MKDIR => {
            let (Some(mode), Some(_)) = (c.u32(), c.u32()) else {
                return malformed();
            };
            let Some(name) = c.cstr() else {
                return malformed();
            };
            Outcome::from_result(fs.mkdir(ctx, ino, name, mode).await, entry)
        }
        op::UNLINK | op::RMDIR | op::REMOVEXATTR => {
            let Some(name) = c.cstr() else {
                return malformed();
            };
            let res = match h.opcode {
                op::UNLINK => fs.unlink(ctx, ino, name).await,
                op::RMDIR => fs.rmdir(ctx, ino, name).await,
                _ => fs.removexattr(ctx, ino, name).await,
            };
            Outcome::unit(res)
        }
        op::SYMLINK => {
            let (Some(name), Some(target)) = (c.cstr(), c.cstr()) else {
                return malformed();
            };
            Outcome::from_result(fs.symlink(ctx, ino, name, target).await, entry)
        }
        op::RENAME | op::RENAME2 => {
            let Some(new_parent) = c.u64() else {
                return malformed();
            };
            let flags = if h.opcode == op::RENAME2 {
                let flags = c.u32().unwrap_or(0);
                let _ = c.u32();
                flags
            } else {
                0
            };
            let (Some(name), Some(new_name)) = (c.cstr(), c.cstr()) else {
                return malformed();
            };
            Outcome::unit(fs.rename(ctx, ino, name, new_parent, new_name, flags).await)
        }
        op::LINK => {
            let (Some(old), Some(name)) = (c.u64(), c.cstr()) else {
                return malformed();
            };
            Outcome::from_result(fs.link(ctx, old, ino, name).await, entry)
        }
        op::CREATE => {
            let (Some(flags), Some(mode), Some(_), Some(_)) = (c.u32(), c.u32(), c.u32(), c.u32())
            else {
                return malformed();
            };
            let Some(name) = c.cstr() else {
                return malformed();
            };
            Outcome::from_result(fs.create(ctx, ino, name, mode, flags).await, |(e, o)| {
                let mut b = encode::entry(&e);
                b.extend(encode::open(o.fh, open_flags(o.keep_cache, o.direct_io), 0));
                b
            })
        }
        op::WRITE => {
            let (Some(fh), Some(offset), Some(size)) = (c.u64(), c.u64(), c.u32()) else {
                return malformed();
            };
            if c.skip(20).is_none() {
                return malformed();
            }
            let data = c.rest();
            let data = &data[..data.len().min(size as usize)];
            Outcome::from_result(fs.write(ctx, ino, fh, offset, data).await, encode::size_out)
        }
        op::SETXATTR => {
            let (Some(size), Some(flags)) = (c.u32(), c.u32()) else {
                return malformed();
            };
            let Some(name) = c.cstr() else {
                return malformed();
            };
            let value = c.rest();
            let value = &value[..value.len().min(size as usize)];
            Outcome::unit(fs.setxattr(ctx, ino, name, value, flags).await)
        }
        op::FALLOCATE | op::COPY_FILE_RANGE => Outcome::Error(Errno::EROFS.code()),
        _ => Outcome::Error(libc::ENOSYS),
    }
}

/// A name for logs.
pub(crate) fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        op::LOOKUP => "lookup",
        op::GETATTR => "getattr",
        op::OPEN => "open",
        op::READ => "read",
        op::READDIR => "readdir",
        op::READDIRPLUS => "readdirplus",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn names_are_read_up_to_the_nul() {
        let args = b"etc\0".to_vec();
        let mut c = Cursor::new(&args);
        assert_eq!(c.cstr(), Some(OsStr::new("etc")));
    }
}
