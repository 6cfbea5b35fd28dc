//! Read replies from a local file over `/dev/fuse`: spliced (header written
//! into a pipe, the file's pages spliced after it, the pipe spliced into the
//! device as one message), or read with `pread` and written with `writev`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::abi;
use crate::conn::Device;

/// A pipe sized for one whole reply.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new(capacity: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two ends.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh fds that we now own.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        let size = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl with integer arguments on our own fd.
        let got = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if (got as usize) < capacity {
            return Err(io::Error::other("pipe too small for a whole reply"));
        }
        Ok(pipe)
    }
}

/// Sends file-backed read replies on one connection.
#[derive(Debug)]
pub(crate) struct FileReplies {
    /// Splice at all (else always pread).
    splice: bool,
    /// Pipe capacity: one full reply.
    capacity: usize,
    /// Idle pipes, each empty.
    pipes: Mutex<Vec<Pipe>>,
}

impl FileReplies {
    /// Replies of at most `max_read` bytes of data; `splice` to use splice.
    pub fn new(splice: bool, max_read: usize) -> Self {
        let capacity = (max_read + abi::OUT_HEADER_LEN).next_power_of_two();
        FileReplies {
            splice,
            capacity,
            pipes: Mutex::new(Vec::new()),
        }
    }

    /// Answers request `unique` with up to `len` bytes of `file` at `offset`
    /// (fewer at its end). Blocking: call from a blocking thread.
    pub fn send(
        &self,
        device: &Device,
        unique: u64,
        file: &File,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let size = file.metadata()?.len();
        let n = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len);
        if self.splice && n > 0 {
            match self.splice_reply(device, unique, file, offset, n) {
                Ok(()) => return Ok(()),
                Err(SpliceError::Delivery(err)) => return Err(err),
                Err(SpliceError::Setup(err)) => {
                    tracing::debug!(%err, "splice unavailable; reading instead")
                }
            }
        }
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        buf.truncate(done);
        device.reply(unique, 0, &buf)
    }

    fn take_pipe(&self) -> io::Result<Pipe> {
        let idle = self.pipes.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(self.capacity),
        }
    }

    fn splice_reply(
        &self,
        device: &Device,
        unique: u64,
        file: &File,
        offset: u64,
        n: usize,
    ) -> Result<(), SpliceError> {
        let pipe = self.take_pipe().map_err(SpliceError::Setup)?;
        let header = abi::out_header(unique, 0, n);
        // SAFETY: `header` is valid for reads of its length.
        let w =
            unsafe { libc::write(pipe.write.as_raw_fd(), header.as_ptr().cast(), header.len()) };
        if w != header.len() as isize {
            return Err(SpliceError::Setup(io::Error::last_os_error()));
        }
        let mut off =
            i64::try_from(offset).map_err(|_| SpliceError::Setup(io::Error::other("offset")))?;
        let mut left = n;
        while left > 0 {
            // SAFETY: splice between fds we hold; `off` is a valid in/out offset.
            let k = unsafe {
                libc::splice(
                    file.as_raw_fd(),
                    &mut off,
                    pipe.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    0,
                )
            };
            if k < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SpliceError::Setup(err));
            }
            if k == 0 {
                return Err(SpliceError::Setup(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backing file shrank",
                )));
            }
            left -= k as usize;
        }
        let total = abi::OUT_HEADER_LEN + n;
        // SAFETY: splice between fds we hold, no offsets.
        let k = unsafe {
            libc::splice(
                pipe.read.as_raw_fd(),
                std::ptr::null_mut(),
                device.as_raw_fd(),
                std::ptr::null_mut(),
                total,
                // No SPLICE_F_MOVE: FUSE would try to steal the backing
                // file's page-cache pages, evicting them from its cache.
                0,
            )
        };
        if k < 0 {
            // The pipe may hold leftovers: drop it (the reply is lost; the
            // request was probably interrupted).
            return Err(SpliceError::Delivery(io::Error::last_os_error()));
        }
        if k as usize != total {
            return Err(SpliceError::Delivery(io::Error::other("short splice")));
        }
        self.pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pipe);
        Ok(())
    }
}

/// Why a spliced reply failed: before anything reached the device (fall
/// back to pread), or in the delivery itself (report).
enum SpliceError {
    Setup(io::Error),
    Delivery(io::Error),
}
