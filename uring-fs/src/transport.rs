//! How requests travel between the kernel and this server.
//!
//! Two transports, chosen at mount time ([`TransportChoice`]) and reported
//! by [`crate::Session::transport`]:
//! - [`Transport::DevFuse`]: `read(2)`/`writev(2)` on the `/dev/fuse`
//!   session fd by several reader tasks; file-backed read replies are
//!   spliced from the file into the device.
//! - [`Transport::IoUring`]: FUSE-over-io_uring (kernel 6.14+, offered when
//!   `/sys/module/fuse/parameters/enable_uring` is `Y`): one ring per
//!   possible CPU, `URING_CMD` registration and commit-and-fetch. The
//!   `/dev/fuse` readers keep running for what the kernel still sends there
//!   (forgets, interrupts).
//!
//! FUSE passthrough (backing files, kernel 6.9+) works with both.

use std::fmt;

/// The transport a session serves requests over, as chosen at mount time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// `read(2)`/`writev(2)` on the `/dev/fuse` session fd, polled by
    /// `readers` tasks; every request is then served in a task of its own.
    DevFuse {
        /// Number of reader tasks.
        readers: usize,
    },
    /// FUSE-over-io_uring: `queues` rings (one per possible CPU) of `depth`
    /// entries each, plus `/dev/fuse` readers for forgets and interrupts.
    IoUring {
        /// Number of queues.
        queues: usize,
        /// Ring entries per queue (requests that can wait at once per queue).
        depth: usize,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::DevFuse { readers } => write!(f, "/dev/fuse with {readers} reader tasks"),
            Transport::IoUring { queues, depth } => {
                write!(f, "io_uring with {queues} queues of {depth} entries")
            }
        }
    }
}

/// Which transport a mount should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportChoice {
    /// io_uring where the kernel offers it, otherwise `/dev/fuse`.
    #[default]
    Auto,
    /// Always `/dev/fuse`.
    DevFuse,
    /// io_uring or fail the mount ([`crate::MountError::TransportUnavailable`]).
    IoUring,
}

/// What the running kernel offers beyond `/dev/fuse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffers {
    /// FUSE-over-io_uring is enabled (`enable_uring` is `Y`).
    pub io_uring: bool,
}

impl KernelOffers {
    /// Reads the fuse module's parameters.
    pub fn probe() -> Self {
        let io_uring = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
            .map(|v| v.trim() == "Y")
            .unwrap_or(false);
        KernelOffers { io_uring }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_is_reported_readably() {
        assert_eq!(
            Transport::DevFuse { readers: 4 }.to_string(),
            "/dev/fuse with 4 reader tasks"
        );
        // Probing never fails, whatever the kernel.
        let _ = KernelOffers::probe();
    }
}
