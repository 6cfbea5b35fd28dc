//! Handing a live FUSE connection to another process.
//!
//! A session mounted with [`MountOptions::survive_exit`] keeps its mount
//! when the process ends: the mount lives as long as any copy of its
//! `/dev/fuse` fd does (systemd's fd store, a successor process, a test).
//! A new process serves it again with [`Session::from_fd`] and the
//! [`SessionState`] recorded at INIT, without a second handshake. On start it
//! sends `FUSE_NOTIFY_RESEND` (protocol 7.40+): the kernel puts the requests
//! that the old process had read but not answered back in the queue.
//!
//! [`MountOptions::survive_exit`]: crate::MountOptions::survive_exit
//! [`Session::from_fd`]: crate::Session::from_fd

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::abi::init;
use crate::conn::Negotiated;

/// `FUSE_NOTIFY_RESEND`: the notify code asking the kernel to queue again
/// every request read from this fd and not answered yet.
pub(crate) const NOTIFY_RESEND: i32 = 7;
/// The first protocol minor with `FUSE_NOTIFY_RESEND`.
pub(crate) const RESEND_MINOR: u32 = 40;

/// Why an inherited connection cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state text is not `v1.<minor>.<flags hex>.<max_write>.<max_pages>`.
    #[error("malformed session state {0:?}")]
    Malformed(String),
    /// The state names values this crate would never have negotiated.
    #[error("session state out of range: {0}")]
    OutOfRange(&'static str),
}

/// What the first process agreed with the kernel at INIT, all that a later
/// process needs to serve the same connection. Its text form
/// ([`SessionState::encode`]) uses only `[0-9a-fv.]`, so it fits in a
/// systemd `FDNAME=` (which forbids `:`) next to other names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub(crate) minor: u32,
    pub(crate) flags: u64,
    pub(crate) max_write: u32,
    pub(crate) max_pages: u16,
}

/// Largest `max_write` accepted from a state record (16 MiB).
const MAX_WRITE_LIMIT: u32 = 16 << 20;

impl SessionState {
    pub(crate) fn from_negotiated(n: &Negotiated) -> Self {
        SessionState {
            minor: n.minor,
            flags: n.flags,
            max_write: n.max_write,
            max_pages: n.max_pages,
        }
    }

    pub(crate) fn negotiated(&self) -> Negotiated {
        Negotiated {
            minor: self.minor,
            flags: self.flags,
            max_write: self.max_write,
            max_pages: self.max_pages,
        }
    }

    /// The protocol minor version in use.
    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// Whether the kernel can re-send unanswered requests (7.40+).
    pub fn can_resend(&self) -> bool {
        self.minor >= RESEND_MINOR
    }

    /// The text form: `v1.<minor>.<flags hex>.<max_write>.<max_pages>`.
    pub fn encode(&self) -> String {
        format!(
            "v1.{}.{:x}.{}.{}",
            self.minor, self.flags, self.max_write, self.max_pages
        )
    }

    /// Parses [`SessionState::encode`]'s form, bounded: a record from
    /// elsewhere (an fd name, a file) is outside input.
    pub fn parse(text: &str) -> Result<Self, StateError> {
        let bad = || StateError::Malformed(text.chars().take(64).collect());
        if text.len() > 64 {
            return Err(bad());
        }
        let mut parts = text.split('.');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let mut next = || parts.next().ok_or_else(bad);
        let minor: u32 = next()?.parse().map_err(|_| bad())?;
        let flags = u64::from_str_radix(next()?, 16).map_err(|_| bad())?;
        let max_write: u32 = next()?.parse().map_err(|_| bad())?;
        let max_pages: u16 = next()?.parse().map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        if !(crate::abi::MIN_MINOR_VERSION..=crate::abi::KERNEL_MINOR_VERSION).contains(&minor) {
            return Err(StateError::OutOfRange("protocol minor"));
        }
        if !(4096..=MAX_WRITE_LIMIT).contains(&max_write) {
            return Err(StateError::OutOfRange("max_write"));
        }
        if flags & init::OVER_IO_URING != 0 {
            // Rings belong to the process that registered them.
            return Err(StateError::OutOfRange(
                "io_uring sessions cannot be handed over",
            ));
        }
        Ok(SessionState {
            minor,
            flags,
            max_write,
            max_pages,
        })
    }
}

/// A connection taken out of a session ([`Session::hand_over`]): the
/// `/dev/fuse` fd (close-on-exec) and its state.
///
/// [`Session::hand_over`]: crate::Session::hand_over
#[derive(Debug)]
pub struct HandOver {
    /// The session's `/dev/fuse` fd.
    pub fd: OwnedFd,
    /// What was negotiated at INIT.
    pub state: SessionState,
}

/// A close-on-exec duplicate of `fd`.
pub(crate) fn dup_fd(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with F_DUPFD_CLOEXEC on a live fd, integer arguments.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_records_are_refused() {
        let state = SessionState {
            minor: 42,
            flags: init::ASYNC_READ | init::PASSTHROUGH,
            max_write: 128 * 1024,
            max_pages: 32,
        };
        let text = state.encode();
        assert!(text.bytes().all(|b| b"0123456789abcdefv.".contains(&b)));
        assert_eq!(SessionState::parse(&text).unwrap(), state);
        for bad in [
            "",
            "v2.42.1.131072.32",
            "v1.42.1.131072",
            "v1.42.1.131072.32.9",
            "v1.42.zz.131072.32",
            "v1.-1.1.131072.32",
            "v1.42.1.131072.99999999",
        ] {
            assert!(
                matches!(SessionState::parse(bad), Err(StateError::Malformed(_))),
                "{bad}"
            );
        }
        for bad in [
            "v1.99.1.131072.32",
            "v1.42.1.1.32",
            "v1.42.1.999999999.32",
            &format!("v1.42.{:x}.131072.32", init::OVER_IO_URING),
        ] {
            assert!(
                matches!(SessionState::parse(bad), Err(StateError::OutOfRange(_))),
                "{bad}"
            );
        }
        assert!(SessionState::parse(&"v1.".repeat(40)).is_err());
    }
}
