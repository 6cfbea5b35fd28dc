//! Writing one file through io_uring.
//!
//! [`UringWriter`] gathers what it is given into buffers of up to
//! [`BUF_SIZE`] bytes and submits each full buffer as one `IORING_OP_WRITE`
//! at the next offset of the file, with at most [`MAX_IN_FLIGHT`] writes
//! outstanding, so the caller (a decompressor) keeps producing while the
//! kernel copies. Completions are checked: a short write is resubmitted for
//! its remainder, a write that makes no progress or fails makes the writer
//! fail for good (the first error, e.g. `ENOSPC`, is what every later call
//! returns). [`UringWriter::finish`] waits for every write before it hands
//! the file back; dropping the writer waits too, so no buffer is freed
//! while the kernel may still read it.
//!
//! Rings (with their spare buffers) are pooled and reused across files:
//! a content store writes thousands of small files per image. Whether the
//! kernel offers io_uring at all is probed once ([`available`]); where it
//! does not (`io_uring_setup` fails with `ENOSYS`, `EPERM` under seccomp,
//! or `IORING_OP_WRITE` is missing) the store falls back to plain writes.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use io_uring::{opcode, types, IoUring, Probe};
use tracing::{debug, error, warn};

/// The largest write submitted at once.
pub const BUF_SIZE: usize = 256 << 10;
/// The most writes one file has outstanding.
pub const MAX_IN_FLIGHT: usize = 4;
/// The smallest buffer (small contents get small buffers).
const MIN_BUF: usize = 4 << 10;
/// Submission queue size: one entry per outstanding write is enough.
const RING_ENTRIES: u32 = 8;
/// Idle rings kept for reuse.
const MAX_IDLE_RINGS: usize = 4;
/// Spare buffers kept with an idle ring.
const MAX_SPARE_BUFS: usize = MAX_IN_FLIGHT + 1;

/// An io_uring with spare buffers, reused from file to file.
pub struct Ring {
    uring: IoUring,
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("spare", &self.spare.len())
            .finish_non_exhaustive()
    }
}

static IDLE: Mutex<Vec<Ring>> = Mutex::new(Vec::new());
static AVAILABLE: OnceLock<bool> = OnceLock::new();

/// A new ring, if the kernel offers io_uring with `IORING_OP_WRITE`.
pub(crate) fn new_ring() -> io::Result<Ring> {
    let uring = IoUring::new(RING_ENTRIES)?;
    let mut probe = Probe::new();
    uring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Write::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks IORING_OP_WRITE",
        ));
    }
    Ok(Ring {
        uring,
        spare: Vec::new(),
    })
}

/// Whether this process can write files through io_uring. Probed once;
/// the outcome is logged once (a warning when falling back).
pub fn available() -> bool {
    *AVAILABLE.get_or_init(|| match new_ring() {
        Ok(ring) => {
            debug!("content store writes go through io_uring");
            give_back(ring);
            true
        }
        Err(e) => {
            warn!("io_uring is unavailable ({e}): the content store falls back to plain write(2)");
            false
        }
    })
}

/// A ring for one file: an idle one if any, else a new one.
pub fn take_ring() -> io::Result<Ring> {
    let idle = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match idle {
        Some(ring) => Ok(ring),
        None => new_ring(),
    }
}

fn give_back(mut ring: Ring) {
    ring.spare.truncate(MAX_SPARE_BUFS);
    let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
    if idle.len() < MAX_IDLE_RINGS {
        idle.push(ring);
    }
}

/// A copy of `e` (the sticky error is returned more than once).
fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// A write submitted and not yet completed in full.
struct InFlight {
    /// Owned by the kernel's request until its completion is reaped: never
    /// touched (nor reallocated) in between.
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Bytes of `buf` written so far.
    done: usize,
}

/// Writes one file through io_uring; see the module documentation.
pub struct UringWriter<F: AsRawFd> {
    file: Option<F>,
    fd: RawFd,
    /// `None` only once leaked after a ring failure.
    ring: Option<Ring>,
    buf_size: usize,
    /// The buffer being filled.
    cur: Vec<u8>,
    /// File offset of `cur[0]`.
    offset: u64,
    slots: [Option<InFlight>; MAX_IN_FLIGHT],
    in_flight: usize,
    error: Option<io::Error>,
}

impl<F: AsRawFd> std::fmt::Debug for UringWriter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWriter")
            .field("fd", &self.fd)
            .field("offset", &self.offset)
            .field("in_flight", &self.in_flight)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<F: AsRawFd> UringWriter<F> {
    /// Writes `file` from its start through `ring`; `size_hint` (the
    /// expected size) picks the buffer size.
    pub fn new(mut ring: Ring, file: F, size_hint: u64) -> Self {
        let buf_size = usize::try_from(size_hint)
            .unwrap_or(BUF_SIZE)
            .clamp(MIN_BUF, BUF_SIZE);
        let cur = spare_buf(&mut ring, buf_size);
        UringWriter {
            fd: file.as_raw_fd(),
            file: Some(file),
            ring: Some(ring),
            buf_size,
            cur,
            offset: 0,
            slots: Default::default(),
            in_flight: 0,
            error: None,
        }
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.offset + self.cur.len() as u64
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is buffered, waits for every write and returns the file.
    /// Any write that failed fails this.
    pub fn finish(mut self) -> io::Result<F> {
        self.submit_cur(false)?;
        self.drain()?;
        self.check()?;
        self.file
            .take()
            .ok_or_else(|| io::Error::other("io_uring writer already finished"))
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some(e) => Err(copy_err(e)),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn ring(&mut self) -> io::Result<&mut Ring> {
        self.ring
            .as_mut()
            .ok_or_else(|| io::Error::other("the io_uring writer's ring failed"))
    }

    /// Queues the buffer being filled (waiting for a free slot), and
    /// submits it unless `enter` is false (the caller waits next, which
    /// submits in the same system call).
    fn submit_cur(&mut self, enter: bool) -> io::Result<()> {
        self.check()?;
        if self.cur.is_empty() {
            return Ok(());
        }
        while self.in_flight == MAX_IN_FLIGHT {
            self.reap(1)?;
        }
        self.check()?;
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return Err(io::Error::other("io_uring writer: no free slot"));
        };
        let buf_size = self.buf_size;
        let next = spare_buf(self.ring()?, buf_size);
        let buf = std::mem::replace(&mut self.cur, next);
        let offset = self.offset;
        self.offset += buf.len() as u64;
        self.slots[slot] = Some(InFlight {
            buf,
            offset,
            done: 0,
        });
        self.in_flight += 1;
        self.push(slot, enter)
    }

    /// Queues the rest of slot `slot`'s buffer, and submits it if `enter`.
    fn push(&mut self, slot: usize, enter: bool) -> io::Result<()> {
        let fd = self.fd;
        let Some(w) = &self.slots[slot] else {
            return Ok(());
        };
        let rest = &w.buf[w.done..];
        let entry = opcode::Write::new(
            types::Fd(fd),
            rest.as_ptr(),
            u32::try_from(rest.len()).unwrap_or(u32::MAX),
        )
        .offset(w.offset + w.done as u64)
        .build()
        .user_data(slot as u64);
        let ring = self.ring()?;
        // SAFETY: the entry points into a buffer held in `self.slots` until
        // its completion is reaped; `drop` waits for (or leaks) every
        // outstanding buffer, and `fd` stays open as long as `self.file`.
        let pushed = unsafe { ring.uring.submission().push(&entry) };
        if pushed.is_err() {
            self.release(slot);
            let e = io::Error::other("io_uring submission queue full");
            self.fail(copy_err(&e));
            return Err(e);
        }
        if !enter {
            return Ok(());
        }
        loop {
            match ring.uring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Still queued: the next wait submits it (and reports errors).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    return Ok(())
                }
                Err(e) => {
                    self.fail(copy_err(&e));
                    return Err(e);
                }
            }
        }
    }

    /// Frees slot `slot`, keeping its buffer as a spare.
    fn release(&mut self, slot: usize) {
        if let Some(w) = self.slots[slot].take() {
            self.in_flight -= 1;
            if let Some(ring) = self.ring.as_mut() {
                if ring.spare.len() < MAX_SPARE_BUFS {
                    let mut buf = w.buf;
                    buf.clear();
                    ring.spare.push(buf);
                }
            }
        }
    }

    /// Waits for at least `want` completions and handles every one ready.
    fn reap(&mut self, want: usize) -> io::Result<()> {
        let ring = self.ring()?;
        loop {
            match ring.uring.submit_and_wait(want) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        loop {
            let Some(cqe) = self.ring()?.uring.completion().next() else {
                return Ok(());
            };
            self.complete(cqe.user_data(), cqe.result());
        }
    }

    fn complete(&mut self, user_data: u64, res: i32) {
        let slot = usize::try_from(user_data).unwrap_or(usize::MAX);
        if self.slots.get(slot).and_then(Option::as_ref).is_none() {
            return;
        }
        if res < 0 {
            self.release(slot);
            self.fail(io::Error::from_raw_os_error(-res));
            return;
        }
        let n = usize::try_from(res).unwrap_or(0);
        if n == 0 {
            self.release(slot);
            self.fail(io::Error::new(
                io::ErrorKind::WriteZero,
                "io_uring write made no progress",
            ));
            return;
        }
        let complete = match &mut self.slots[slot] {
            Some(w) => {
                w.done = (w.done + n).min(w.buf.len());
                w.done == w.buf.len()
            }
            None => true,
        };
        if complete || self.error.is_some() {
            self.release(slot);
        } else {
            // A short write: the rest goes again at its offset.
            let _ = self.push(slot, true);
        }
    }

    /// Waits for every outstanding write.
    fn drain(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            self.reap(1)?;
        }
        Ok(())
    }
}

/// A cleared buffer of at least `size` bytes' capacity.
fn spare_buf(ring: &mut Ring, size: usize) -> Vec<u8> {
    match ring.spare.iter().position(|b| b.capacity() >= size) {
        Some(i) => {
            let mut buf = ring.spare.swap_remove(i);
            buf.clear();
            buf
        }
        None => Vec::with_capacity(size),
    }
}

impl<F: AsRawFd> Write for UringWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(self.buf_size - self.cur.len());
        self.cur.extend_from_slice(&data[..n]);
        if self.cur.len() >= self.buf_size {
            self.submit_cur(true)?;
        }
        Ok(n)
    }

    /// Submits what is buffered and waits until every write completed.
    fn flush(&mut self) -> io::Result<()> {
        self.submit_cur(false)?;
        self.drain()?;
        self.check()
    }
}

impl<F: AsRawFd> Drop for UringWriter<F> {
    fn drop(&mut self) {
        let mut failures = 0;
        while self.in_flight > 0 && failures < 100 {
            if self.reap(1).is_err() {
                failures += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.in_flight > 0 {
            // The kernel may still read these buffers: leak them (and the
            // ring) rather than free memory it could be using.
            error!(
                outstanding = self.in_flight,
                "io_uring writes never completed; leaking their buffers"
            );
            for slot in &mut self.slots {
                if let Some(w) = slot.take() {
                    std::mem::forget(w.buf);
                }
            }
            if let Some(ring) = self.ring.take() {
                std::mem::forget(ring);
            }
            return;
        }
        if let Some(mut ring) = self.ring.take() {
            let cur = std::mem::take(&mut self.cur);
            if ring.spare.len() < MAX_SPARE_BUFS && cur.capacity() > 0 {
                ring.spare.push(cur);
            }
            give_back(ring);
        }
    }
}

/// Test helpers: a kernel that refuses io_uring.
#[cfg(test)]
pub(crate) mod test_support {
    /// Installs a seccomp filter on the calling thread (only) under which
    /// `io_uring_setup` fails with `EPERM`, as under Docker's default
    /// profile; every other system call is allowed.
    pub(crate) fn refuse_io_uring_setup_on_this_thread() {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let mut filter = [
            // seccomp_data.nr
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jeq(libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with a valid, live filter program; without TSYNC
        // the filter applies to this thread alone.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog as libc::c_ulong,
                    0,
                    0
                ),
                0,
                "seccomp: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::test_support::Tmpfs;
    use std::fs::File;

    /// Deterministic bytes that differ at every offset of a page.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// A ring; these tests are ignored by default and fail, saying why,
    /// where io_uring is unavailable (e.g. `kernel.io_uring_disabled`).
    fn ring() -> Ring {
        assert!(available(), "needs io_uring: it is unavailable here");
        take_ring().unwrap()
    }

    #[test]
    #[ignore = "needs io_uring (kernel.io_uring_disabled = 0)"]
    fn exact_bytes_for_every_size_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0, 1, 4095, 4096, (1 << 20) + 17] {
            let data = pattern(size);
            for hint in [0, size as u64, BUF_SIZE as u64] {
                for chunk in [size.max(1), 1000, 65536 + 3] {
                    let ring = ring();
                    let path = dir.path().join(format!("f-{size}-{hint}-{chunk}"));
                    let mut w = UringWriter::new(ring, File::create(&path).unwrap(), hint);
                    for piece in data.chunks(chunk) {
                        w.write_all(piece).unwrap();
                    }
                    assert_eq!(w.len(), size as u64);
                    let file = w.finish().unwrap();
                    drop(file);
                    let back = std::fs::read(&path).unwrap();
                    assert_eq!(back.len(), size, "size {size} hint {hint} chunk {chunk}");
                    assert!(back == data, "size {size} hint {hint} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn a_kernel_refusing_io_uring_is_an_error_not_a_crash() {
        let err = std::thread::spawn(|| {
            test_support::refuse_io_uring_setup_on_this_thread();
            new_ring().unwrap_err()
        })
        .join()
        .unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        // Other threads are unaffected.
        if available() {
            new_ring().unwrap();
        }
    }

    #[test]
    #[ignore = "needs io_uring (kernel.io_uring_disabled = 0)"]
    fn many_small_writes_keep_their_order() {
        let ring = ring();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        let mut w = UringWriter::new(ring, File::create(&path).unwrap(), 0);
        let mut want = Vec::new();
        for i in 0..200_000u32 {
            let piece = &i.to_le_bytes()[..(i % 4 + 1) as usize];
            w.write_all(piece).unwrap();
            want.extend_from_slice(piece);
            if i % 50_000 == 0 {
                // A flush in the middle waits for everything so far.
                w.flush().unwrap();
                assert_eq!(std::fs::metadata(&path).unwrap().len(), want.len() as u64);
            }
        }
        drop(w.finish().unwrap());
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    #[ignore = "needs io_uring (kernel.io_uring_disabled = 0)"]
    fn rings_and_buffers_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let ring = ring();
            let path = dir.path().join(format!("r{i}"));
            let mut w = UringWriter::new(ring, File::create(&path).unwrap(), 700_000);
            w.write_all(&pattern(700_000)).unwrap();
            drop(w.finish().unwrap());
        }
        let idle = IDLE.lock().unwrap();
        assert!(!idle.is_empty() && idle.len() <= MAX_IDLE_RINGS);
        assert!(idle.iter().all(|r| r.spare.len() <= MAX_SPARE_BUFS));
    }

    #[test]
    #[ignore = "needs io_uring (kernel.io_uring_disabled = 0)"]
    fn dropping_with_writes_outstanding_waits_for_them() {
        let ring = ring();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropped");
        let mut w = UringWriter::new(ring, File::create(&path).unwrap(), 0);
        w.write_all(&pattern((3 << 20) + 100)).unwrap();
        drop(w);
        // Every write submitted before the drop landed; the 100 bytes still
        // buffered were discarded.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
    }

    #[test]
    #[ignore = "needs root: mounts a small tmpfs"]
    fn a_full_filesystem_reports_enospc_every_time() {
        let Some(fs) = Tmpfs::mount("64k") else {
            return;
        };
        let ring = ring();
        let path = fs.path().join("big");
        let mut w = UringWriter::new(ring, File::create(&path).unwrap(), 1 << 20);
        let data = pattern(1 << 20);
        let first = w.write_all(&data).and_then(|()| w.flush()).unwrap_err();
        assert_eq!(first.raw_os_error(), Some(libc::ENOSPC), "{first}");
        // The error sticks: later writes and finish fail the same way.
        let again = w.write_all(b"more").unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::ENOSPC));
        let last = w.finish().unwrap_err();
        assert_eq!(last.kind(), io::ErrorKind::StorageFull, "{last}");
        assert!(std::fs::metadata(&path).unwrap().len() <= 64 << 10);
    }
}
