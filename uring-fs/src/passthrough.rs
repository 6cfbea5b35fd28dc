//! FUSE passthrough (kernel 6.9+): a local file registered with the
//! connection (`FUSE_DEV_IOC_BACKING_OPEN` → backing id) and named in the
//! open reply (`FOPEN_PASSTHROUGH`), after which the kernel reads it
//! directly. Needs `CAP_SYS_ADMIN`.
//!
//! The kernel allows one backing file per inode at a time, so the id is
//! shared by all passthrough opens of an inode and closed
//! (`FUSE_DEV_IOC_BACKING_CLOSE`) when the last of them is released.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::abi;
use crate::conn::Device;

/// Backing ids registered on one connection.
#[derive(Debug)]
pub(crate) struct Backings {
    device: Arc<Device>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// inode → (backing id, passthrough opens).
    by_ino: HashMap<u64, (u32, usize)>,
    /// (inode, fh) → passthrough opens with that handle.
    handles: HashMap<(u64, u64), usize>,
}

impl Backings {
    /// A registry on `device`.
    pub fn new(device: Arc<Device>) -> Self {
        Backings {
            device,
            state: Mutex::new(State::default()),
        }
    }

    /// The backing id for an open of `ino` with handle `fh` backed by
    /// `file` (registering it if the inode has none yet).
    pub fn open(&self, ino: u64, fh: u64, file: &File) -> io::Result<u32> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = match state.by_ino.get_mut(&ino) {
            Some((id, refs)) => {
                *refs += 1;
                *id
            }
            None => {
                let id = backing_open(self.device.as_raw_fd(), file.as_raw_fd())?;
                state.by_ino.insert(ino, (id, 1));
                id
            }
        };
        *state.handles.entry((ino, fh)).or_default() += 1;
        Ok(id)
    }

    /// A handle of `ino` was released: drops its share of the backing id.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.handles.get_mut(&(ino, fh)) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                state.handles.remove(&(ino, fh));
            }
            None => return,
        }
        if let Some((id, refs)) = state.by_ino.get_mut(&ino) {
            *refs -= 1;
            if *refs == 0 {
                let id = *id;
                state.by_ino.remove(&ino);
                if let Err(err) = backing_close(self.device.as_raw_fd(), id) {
                    tracing::debug!(ino, id, %err, "closing backing id");
                }
            }
        }
    }
}

/// `struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

fn backing_open(device: RawFd, file: RawFd) -> io::Result<u32> {
    let map = BackingMap {
        fd: file,
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads a `fuse_backing_map` from the pointer, which
    // is valid for the call.
    let id = unsafe {
        libc::ioctl(
            device,
            abi::DEV_IOC_BACKING_OPEN as libc::Ioctl,
            &map as *const BackingMap,
        )
    };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(id).map_err(|_| io::Error::other("negative backing id"))
}

fn backing_close(device: RawFd, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads a u32 from the pointer, valid for the call.
    let rc = unsafe {
        libc::ioctl(
            device,
            abi::DEV_IOC_BACKING_CLOSE as libc::Ioctl,
            &id as *const u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
