//! uring-fs: a general asynchronous FUSE server.
//!
//! Implement [`Filesystem`] (every method has a default), then
//! [`Session::mount`] it: each request is served in its own tokio task, so a
//! slow request (an open waiting for content) never blocks the others.
//!
//! The kernel's fast paths, each used where the kernel offers it:
//! - transports ([`Transport`]): FUSE-over-io_uring (one ring per CPU,
//!   `URING_CMD` register and commit-and-fetch) or `/dev/fuse` with several
//!   reader tasks, chosen at mount time ([`TransportChoice`]);
//! - spliced read replies from local files ([`ReadData::File`]);
//! - FUSE passthrough: a backing file named at open
//!   ([`Filesystem::open_backed`]) is then read by the kernel directly.
//!
//! The FUSE protocol itself (protocol 7.42: INIT with `flags2`, open replies
//! with backing ids, the io_uring ring structs) is spoken by this crate:
//! polyfuse 0.5, which it started from, stops at 7.31 and can express
//! neither passthrough nor io_uring. Mounting goes through `fusermount3`
//! (auto_unmount), plus a small watcher process that lazily unmounts once
//! the connection reports `ENOTCONN` after the server died.
//!
//! [`memfs`] is an in-memory tree whose file contents arrive later, used by
//! the tests and usable as a starting point.

mod abi;
mod conn;
mod dispatch;
mod encode;
mod errno;
mod fs;
mod handover;
pub mod memfs;
pub mod mounts;
mod passthrough;
mod reply;
mod session;
mod splice;
mod transport;
mod uring;

pub use errno::{Errno, Result};
pub use fs::{Filesystem, RequestContext, XattrValue};
pub use handover::{HandOver, SessionState, StateError};
pub use reply::{
    Attr, DirEntry, DirEntryPlus, Entry, FileAttr, FileKind, Opened, OpenedFile, ReadData, SetAttr,
    StatFs,
};
pub use session::{MountError, MountOptions, Session};
pub use transport::{KernelOffers, Transport, TransportChoice};
