//! The error type a filesystem answers with: a POSIX error number.

use std::fmt;
use std::io;

/// A POSIX error number sent back to the kernel in a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(i32);

/// The result type of every [`crate::Filesystem`] method.
pub type Result<T> = std::result::Result<T, Errno>;

impl Errno {
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// Input/output error: for example content that could not be fetched.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Function not implemented: the default of every operation.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// Read-only file system: the default of the write-side operations.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// Permission denied.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// Bad file handle.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// No such extended attribute.
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    /// The reply buffer offered by the caller is too small.
    pub const ERANGE: Errno = Errno(libc::ERANGE);

    /// An error number from its raw value (for example `libc::EPERM`).
    pub const fn new(code: i32) -> Self {
        Errno(code)
    }

    /// The raw error number.
    pub const fn code(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    /// The error's own number when it has one, EIO otherwise.
    fn from(err: io::Error) -> Self {
        Errno(err.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_number_or_become_eio() {
        assert_eq!(
            Errno::from(io::Error::from_raw_os_error(libc::ENOENT)),
            Errno::ENOENT
        );
        assert_eq!(Errno::from(io::Error::other("no number")), Errno::EIO);
        assert!(Errno::EIO.to_string().contains("errno 5"));
    }
}
