//! uring-fs: a general asynchronous FUSE server.
//!
//! Implement [`Filesystem`] (every method has a default), then
//! [`Session::mount`] it: each request is served in its own tokio task, so a
//! slow request (an open waiting for content) never blocks the others.
//! Requests arrive over `/dev/fuse` for now (see [`Transport`] for the
//! io_uring and passthrough fast paths to come); reads of local backing files
//! are answered with `pread` ([`ReadData::File`]), where splicing will go.
//!
//! [`memfs`] is an in-memory tree whose file contents arrive later, used by
//! the tests and usable as a starting point.

mod dispatch;
mod errno;
mod fs;
pub mod memfs;
pub mod mounts;
mod reply;
mod session;
mod transport;

pub use errno::{Errno, Result};
pub use fs::{Filesystem, RequestContext, XattrValue};
pub use reply::{Attr, DirEntry, Entry, FileAttr, FileKind, Opened, ReadData, StatFs};
pub use session::{MountError, MountOptions, Session};
pub use transport::{KernelOffers, Transport};
