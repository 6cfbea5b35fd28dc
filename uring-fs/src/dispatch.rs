//! Decodes one FUSE request, calls the filesystem and writes the reply.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use polyfuse::op::Operation;
use polyfuse::reply::{AttrOut, EntryOut, OpenOut, ReaddirOut, StatfsOut, XattrOut};
use polyfuse::Request;

use crate::errno::{Errno, Result};
use crate::fs::{Filesystem, RequestContext, XattrValue};
use crate::reply::{FileAttr, Opened, ReadData};

/// Serves one request to the end: decode, call `fs`, reply (or not, for
/// forget and interrupt). Errors writing the reply are logged: the caller
/// may have been interrupted or the connection aborted.
pub(crate) async fn serve<F: Filesystem>(fs: &F, req: &Request) {
    let ctx = RequestContext {
        unique: req.unique(),
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    };
    let op = match req.operation() {
        Ok(op) => op,
        Err(err) => {
            tracing::warn!(unique = ctx.unique, %err, "undecodable FUSE request");
            send(req, Err(Errno::ENOSYS), |()| ());
            return;
        }
    };
    match op {
        Operation::Lookup(op) => {
            let res = fs.lookup(&ctx, op.parent(), op.name()).await;
            send(req, res, |entry| {
                let mut out = EntryOut::default();
                fill_attr(out.attr(), &entry.attr);
                out.ino(entry.attr.ino);
                out.generation(entry.generation);
                out.ttl_attr(entry.attr_ttl);
                out.ttl_entry(entry.entry_ttl);
                out
            });
        }
        Operation::Forget(forgets) => {
            for forget in forgets.iter() {
                fs.forget(forget.ino(), forget.nlookup()).await;
            }
        }
        Operation::Getattr(op) => {
            let res = fs.getattr(&ctx, op.ino(), op.fh()).await;
            send(req, res, |attr| {
                let mut out = AttrOut::default();
                fill_attr(out.attr(), &attr.attr);
                out.ttl(attr.ttl);
                out
            });
        }
        Operation::Readlink(op) => {
            let res = fs.readlink(&ctx, op.ino()).await;
            send(req, res, |target| target);
        }
        Operation::Open(op) => {
            let res = fs.open(&ctx, op.ino(), op.flags()).await;
            send(req, res, open_out);
        }
        Operation::Read(op) => {
            let size = op.size();
            let res = match fs.read(&ctx, op.ino(), op.fh(), op.offset(), size).await {
                Ok(ReadData::Bytes(mut bytes)) => {
                    bytes.truncate(size as usize);
                    Ok(bytes)
                }
                Ok(ReadData::File { file, offset }) => pread_reply(file, offset, size).await,
                Err(err) => Err(err),
            };
            send(req, res, |bytes| bytes);
        }
        Operation::Release(op) => {
            let res = fs.release(&ctx, op.ino(), op.fh()).await;
            send(req, res, |()| ());
        }
        Operation::Opendir(op) => {
            let res = fs.opendir(&ctx, op.ino(), op.flags()).await;
            send(req, res, open_out);
        }
        Operation::Readdir(op) => {
            if matches!(op.mode(), polyfuse::op::ReaddirMode::Plus) {
                // READDIRPLUS is not negotiated at INIT; answer as the kernel expects.
                send(req, Err(Errno::ENOSYS), |()| ());
                return;
            }
            let size = op.size() as usize;
            let res = fs
                .readdir(&ctx, op.ino(), op.fh(), op.offset(), op.size())
                .await;
            send(req, res, |entries| {
                let mut out = ReaddirOut::new(size);
                for entry in &entries {
                    let full = out.entry(
                        &entry.name,
                        entry.ino,
                        entry.kind.dirent_type(),
                        entry.next_offset,
                    );
                    if full {
                        break;
                    }
                }
                out
            });
        }
        Operation::Releasedir(op) => {
            let res = fs.releasedir(&ctx, op.ino(), op.fh()).await;
            send(req, res, |()| ());
        }
        Operation::Getxattr(op) => {
            let res = fs.getxattr(&ctx, op.ino(), op.name()).await;
            send_xattr(req, res, op.size());
        }
        Operation::Listxattr(op) => {
            let res = fs.listxattr(&ctx, op.ino()).await;
            send_xattr(req, res, op.size());
        }
        Operation::Statfs(op) => {
            let res = fs.statfs(&ctx, op.ino()).await;
            send(req, res, |st| {
                let mut out = StatfsOut::default();
                let s = out.statfs();
                s.blocks(st.blocks);
                s.bfree(st.bfree);
                s.bavail(st.bavail);
                s.files(st.files);
                s.ffree(st.ffree);
                s.bsize(st.bsize);
                s.namelen(st.namelen);
                s.frsize(st.frsize);
                out
            });
        }
        Operation::Access(op) => {
            let res = fs.access(&ctx, op.ino(), op.mask()).await;
            send(req, res, |()| ());
        }
        Operation::Flush(_) => send(req, Ok(()), |()| ()),
        // The write side: this crate serves read-only mounts for now.
        Operation::Setattr(_)
        | Operation::Symlink(_)
        | Operation::Mknod(_)
        | Operation::Mkdir(_)
        | Operation::Unlink(_)
        | Operation::Rmdir(_)
        | Operation::Rename(_)
        | Operation::Link(_)
        | Operation::Write(..)
        | Operation::Setxattr(_)
        | Operation::Removexattr(_)
        | Operation::Create(_)
        | Operation::Fallocate(_)
        | Operation::CopyFileRange(_) => send(req, Err(Errno::EROFS), |()| ()),
        // No reply is sent to these.
        Operation::Interrupt(_) | Operation::NotifyReply(..) => {}
        _ => send(req, Err(Errno::ENOSYS), |()| ()),
    }
}

/// Sends `res`: the value converted by `to_bytes`, or the error number.
fn send<T, B: polyfuse::bytes::Bytes>(
    req: &Request,
    res: Result<T>,
    to_bytes: impl FnOnce(T) -> B,
) {
    let written = match res {
        Ok(value) => req.reply(to_bytes(value)),
        Err(errno) => req.reply_error(errno.code()),
    };
    if let Err(err) = written {
        tracing::debug!(unique = req.unique(), %err, "reply not delivered");
    }
}

fn open_out(opened: Opened) -> OpenOut {
    let mut out = OpenOut::default();
    out.fh(opened.fh);
    out.keep_cache(opened.keep_cache);
    out.direct_io(opened.direct_io);
    out
}

/// Xattr replies: a zero `size` asks for the length only.
fn send_xattr(req: &Request, res: Result<XattrValue>, size: u32) {
    match res {
        Ok(value) if size == 0 => match u32::try_from(value.len()) {
            Ok(len) => send(req, Ok(()), |()| {
                let mut out = XattrOut::default();
                out.size(len);
                out
            }),
            Err(_) => send(req, Err(Errno::ERANGE), |()| ()),
        },
        Ok(value) if value.len() > size as usize => send(req, Err(Errno::ERANGE), |()| ()),
        other => send(req, other, |value| value),
    }
}

/// Reads `size` bytes of `file` at `offset` with pread, on a blocking thread.
/// A short result means end of file.
async fn pread_reply(file: Arc<File>, offset: u64, size: u32) -> Result<Vec<u8>> {
    let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        buf.truncate(done);
        Ok(buf)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            tracing::warn!(%err, "pread of backing file failed");
            Err(Errno::from(err))
        }
        Err(_) => Err(Errno::EIO),
    }
}

fn fill_attr(out: &mut polyfuse::reply::FileAttr, attr: &FileAttr) {
    out.ino(attr.ino);
    out.size(attr.size);
    out.mode(attr.mode());
    out.nlink(attr.nlink);
    out.uid(attr.uid);
    out.gid(attr.gid);
    out.rdev(attr.rdev);
    out.blksize(attr.blksize);
    out.blocks(attr.blocks);
    out.atime(since_epoch(attr.atime));
    out.mtime(since_epoch(attr.mtime));
    out.ctime(since_epoch(attr.ctime));
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}
