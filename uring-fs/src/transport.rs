//! How requests travel between the kernel and this server.
//!
//! Today there is one transport: reading requests from the `/dev/fuse`
//! session fd with several reader tasks ([`Transport::DevFuse`]). This is the
//! extension point for the kernel's fast paths, neither of which is built
//! yet: FUSE-over-io_uring (`URING_CMD` registration and commit-and-fetch,
//! one queue per core; the kernel offers it when
//! `/sys/module/fuse/parameters/enable_uring` is `Y`), and FUSE passthrough
//! (backing file ids, so reads of a local file bypass userspace).

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
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::DevFuse { readers } => write!(f, "/dev/fuse with {readers} reader tasks"),
        }
    }
}

/// What the running kernel offers beyond `/dev/fuse` (reported, not yet used).
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
