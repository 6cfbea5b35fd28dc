//! The FUSE-over-io_uring transport (kernel 6.14+, protocol 7.42).
//!
//! After INIT (over `/dev/fuse`, with `FUSE_OVER_IO_URING`), one queue per
//! possible CPU: a thread with its own io_uring (128-byte SQEs, 32-byte
//! CQEs) registers `depth` ring entries (`IORING_OP_URING_CMD` +
//! `FUSE_IO_URING_CMD_REGISTER`, `sqe->addr` = two iovecs: a 288-byte
//! `fuse_uring_req_header` and a payload buffer). The kernel completes an
//! entry's command when it puts a request in it; the reply is written into
//! the same buffers and sent back with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`,
//! which also re-arms the entry. Forgets and interrupts still come over
//! `/dev/fuse`, which the session keeps reading.
//!
//! A request whose future completes at once is answered on the queue thread
//! (no thread hop); one that waits (a parked open) continues on the tokio
//! runtime and hands its entry back through an eventfd. Each waiting request
//! holds one entry, so `depth` bounds how many requests per queue can wait
//! at the same time (the kernel queues the rest).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::abi::{self, InHeader};
use crate::conn::Device;
use crate::dispatch::{Outcome, Request};

/// `sizeof(struct fuse_uring_req_header)`.
const HEADER_LEN: usize = 288;
/// Offset of `op_in` in the header.
const OP_IN: usize = 128;
/// Offset of `ring_ent_in_out` in the header.
const ENT_IN_OUT: usize = 256;
/// `FUSE_IO_URING_CMD_REGISTER`.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// user_data of the eventfd read.
const EVENT: u64 = u64::MAX;
/// File-backed reads up to this size are copied on the queue thread.
const INLINE_READ: usize = 32 * 1024;

/// The number of queues the kernel expects: one per possible CPU.
pub(crate) fn queue_count() -> usize {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list_max(s.trim()));
    match possible {
        Some(max) => max + 1,
        None => {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            usize::try_from(n).unwrap_or(1).max(1)
        }
    }
}

/// The highest CPU number in a list like `0-3,5`.
fn parse_cpu_list_max(list: &str) -> Option<usize> {
    list.split(',')
        .filter_map(|part| part.rsplit('-').next()?.trim().parse::<usize>().ok())
        .max()
}

/// Whether this process can create an io_uring with 128-byte SQEs.
pub(crate) fn rings_available() -> bool {
    IoUring::<squeue::Entry128, cqueue::Entry32>::builder()
        .build(4)
        .is_ok()
}

/// Serves one request and says what to reply; the session's dispatcher.
pub(crate) type Serve =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// An anonymous memory mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; access is coordinated by entry
// ownership (one request per entry at a time).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping; no file, no fixed address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One queue's entry buffers.
struct Buffers {
    headers: Mapping,
    payloads: Mapping,
    payload_len: usize,
}

impl Buffers {
    fn header(&self, i: usize) -> *mut u8 {
        // SAFETY: `i` < depth, within the mapping.
        unsafe { self.headers.ptr.add(i * HEADER_LEN) }
    }

    fn payload(&self, i: usize) -> *mut u8 {
        // SAFETY: `i` < depth, within the mapping.
        unsafe { self.payloads.ptr.add(i * self.payload_len) }
    }

    /// Reads the request the kernel put in entry `i`.
    ///
    /// # Safety
    /// Entry `i` must be owned by the caller (its command completed and not
    /// yet committed).
    unsafe fn request(&self, i: usize) -> Option<Request> {
        // SAFETY: the caller owns entry `i`; the slices are inside the maps.
        let hdr = unsafe { std::slice::from_raw_parts(self.header(i), HEADER_LEN) };
        let header = InHeader::parse(&hdr[..abi::IN_HEADER_LEN])?;
        let payload_sz = u32::from_ne_bytes(hdr[ENT_IN_OUT + 16..ENT_IN_OUT + 20].try_into().ok()?);
        let payload_sz = (payload_sz as usize).min(self.payload_len);
        let fixed = abi::fixed_arg_len(header.opcode).min(HEADER_LEN - OP_IN - 32);
        let mut args = Vec::with_capacity(fixed + payload_sz);
        args.extend_from_slice(&hdr[OP_IN..OP_IN + fixed]);
        // SAFETY: as above.
        let payload = unsafe { std::slice::from_raw_parts(self.payload(i), payload_sz) };
        args.extend_from_slice(payload);
        Some(Request { header, args })
    }

    /// Writes the reply to request `unique` into entry `i`.
    ///
    /// # Safety
    /// As for [`Buffers::request`].
    unsafe fn reply(&self, i: usize, unique: u64, outcome: Outcome) {
        // SAFETY: the caller owns entry `i`.
        let payload = unsafe { std::slice::from_raw_parts_mut(self.payload(i), self.payload_len) };
        let (error, len) = match outcome {
            Outcome::NoReply => (libc::ENOSYS, 0),
            Outcome::Error(e) => (e, 0),
            Outcome::Data(body) if body.len() <= payload.len() => {
                payload[..body.len()].copy_from_slice(&body);
                (0, body.len())
            }
            Outcome::Data(_) => (libc::EIO, 0),
            Outcome::File { file, offset, len } => {
                let want = len.min(payload.len());
                match read_full(&file, &mut payload[..want], offset) {
                    Ok(n) => (0, n),
                    Err(err) => (err.raw_os_error().unwrap_or(libc::EIO), 0),
                }
            }
        };
        // SAFETY: as above.
        let hdr = unsafe { std::slice::from_raw_parts_mut(self.header(i), HEADER_LEN) };
        hdr[..abi::OUT_HEADER_LEN].copy_from_slice(&abi::out_header(unique, -error, len));
        let ent = &mut hdr[ENT_IN_OUT..ENT_IN_OUT + 32];
        ent.fill(0);
        ent[16..20].copy_from_slice(&(len as u32).to_ne_bytes());
    }
}

fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

/// State shared by a queue thread and the requests it handed to the runtime.
struct QueueShared {
    buffers: Buffers,
    /// Entries whose reply is written: (entry, request unique).
    done: Mutex<Vec<(usize, u64)>>,
    event: OwnedFd,
    stop: AtomicBool,
}

impl QueueShared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn finish(&self, i: usize, unique: u64, outcome: Outcome) {
        // SAFETY: the request future owns entry `i` until it pushes it here.
        unsafe { self.buffers.reply(i, unique, outcome) };
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((i, unique));
    }
}

/// The running queues of one session.
pub(crate) struct Queues {
    queues: Vec<Arc<QueueShared>>,
    threads: Vec<JoinHandle<()>>,
    /// Entries per queue.
    pub depth: usize,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("queues", &self.queues.len())
            .field("depth", &self.depth)
            .finish()
    }
}

impl Queues {
    /// Number of queues.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Tells every queue thread to stop (closing its ring cancels its
    /// commands, so the kernel lets go of `/dev/fuse`).
    pub fn signal_stop(&self) {
        for q in &self.queues {
            q.stop.store(true, Ordering::SeqCst);
            q.wake();
        }
    }

    /// Stops the threads and waits for them.
    pub fn stop(mut self) {
        self.signal_stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts one queue per possible CPU with `depth` entries each, and waits
/// until every entry is registered (or one registration failed).
pub(crate) fn start(
    device: Arc<Device>,
    serve: Serve,
    payload_len: usize,
    depth: usize,
    runtime: tokio::runtime::Handle,
) -> io::Result<Queues> {
    let count = queue_count();
    let mut queues = Vec::with_capacity(count);
    let mut threads = Vec::with_capacity(count);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let mut failure = None;
    for qid in 0..count {
        let shared = match new_queue(depth, payload_len) {
            Ok(s) => Arc::new(s),
            Err(err) => {
                failure = Some(err);
                break;
            }
        };
        let thread = {
            let (shared, device, serve, runtime, ready) = (
                Arc::clone(&shared),
                Arc::clone(&device),
                Arc::clone(&serve),
                runtime.clone(),
                ready_tx.clone(),
            );
            std::thread::Builder::new()
                .name(format!("fuse-uring-{qid}"))
                .spawn(move || {
                    let _enter = runtime.enter();
                    pin_to_cpu(qid);
                    if let Err(err) = run_queue(qid as u16, &device, &shared, &serve, depth, &ready)
                    {
                        let _ = ready.send(Err(io::Error::new(err.kind(), err.to_string())));
                        tracing::error!(qid, %err, "io_uring queue stopped");
                    }
                })
        };
        match thread {
            Ok(t) => {
                queues.push(shared);
                threads.push(t);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let started = Queues {
        queues,
        threads,
        depth,
    };
    if let Some(err) = failure {
        started.stop();
        return Err(err);
    }
    for _ in 0..started.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                started.stop();
                return Err(err);
            }
            Err(_) => {
                started.stop();
                return Err(io::Error::other("an io_uring queue thread died"));
            }
        }
    }
    Ok(started)
}

fn new_queue(depth: usize, payload_len: usize) -> io::Result<QueueShared> {
    // SAFETY: eventfd with flags only.
    let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if event < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(QueueShared {
        buffers: Buffers {
            headers: Mapping::new(depth * HEADER_LEN)?,
            payloads: Mapping::new(depth * payload_len)?,
            payload_len,
        },
        done: Mutex::new(Vec::new()),
        // SAFETY: a fresh fd we own.
        event: unsafe { OwnedFd::from_raw_fd(event) },
        stop: AtomicBool::new(false),
    })
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A URING_CMD SQE on `fd` with the 80-byte command and two iovecs at `addr`.
fn uring_cmd(
    fd: RawFd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: *const libc::iovec,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let entry = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(iov as u64))
        .build();
    // The io-uring crate has no setter for `sqe->len`, which FUSE requires
    // to be the iovec count (2): patch it in the raw 128 bytes (offset 24).
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is a repr(C) 128-byte plain-data SQE; every bit
    // pattern is valid for it and for the byte array.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry32>;

fn push(ring: &mut Ring, sqe: &squeue::Entry128) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an SQE names (iovecs, eventfd counter) lives
        // in the queue's shared state for as long as the ring.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn run_queue(
    qid: u16,
    device: &Device,
    q: &Arc<QueueShared>,
    serve: &Serve,
    depth: usize,
    ready: &mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    let entries = u32::try_from((depth + 2).next_power_of_two()).unwrap_or(u32::MAX);
    let mut ring: Ring = IoUring::builder().build(entries)?;
    let fd = device.as_raw_fd();
    let iovecs: Vec<[libc::iovec; 2]> = (0..depth)
        .map(|i| {
            [
                libc::iovec {
                    iov_base: q.buffers.header(i).cast(),
                    iov_len: HEADER_LEN,
                },
                libc::iovec {
                    iov_base: q.buffers.payload(i).cast(),
                    iov_len: q.buffers.payload_len,
                },
            ]
        })
        .collect();
    for (i, iov) in iovecs.iter().enumerate() {
        let sqe = uring_cmd(fd, CMD_REGISTER, qid, 0, iov.as_ptr()).user_data(i as u64);
        push(&mut ring, &sqe)?;
    }
    let mut counter = [0u8; 8];
    let arm_event = |ring: &mut Ring, counter: &mut [u8; 8]| {
        let read = opcode::Read::new(types::Fd(q.event.as_raw_fd()), counter.as_mut_ptr(), 8)
            .build()
            .user_data(EVENT);
        push(ring, &read.into())
    };
    arm_event(&mut ring, &mut counter)?;
    ring.submit()?;
    // Registration errors complete at once; success completes only when a
    // request arrives.
    let mut early: Vec<cqueue::Entry32> = ring.completion().collect();
    if let Some(bad) = early
        .iter()
        .find(|c| c.user_data() != EVENT && c.result() < 0)
    {
        let err = io::Error::from_raw_os_error(-bad.result());
        return Err(io::Error::new(
            err.kind(),
            format!("FUSE_IO_URING_CMD_REGISTER on queue {qid}: {err}"),
        ));
    }
    let _ = ready.send(Ok(()));
    let waker = Waker::noop();
    let mut dead = 0usize;
    loop {
        for cqe in early.drain(..) {
            let i = cqe.user_data();
            if i == EVENT {
                if q.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                arm_event(&mut ring, &mut counter)?;
                continue;
            }
            let i = i as usize;
            if cqe.result() < 0 {
                dead += 1;
                tracing::debug!(qid, entry = i, errno = -cqe.result(), "ring entry ended");
                if dead >= depth {
                    return Ok(());
                }
                continue;
            }
            // SAFETY: the command of entry `i` completed: we own it.
            let Some(request) = (unsafe { q.buffers.request(i) }) else {
                // SAFETY: as above.
                unsafe { q.buffers.reply(i, 0, Outcome::Error(libc::EIO)) };
                continue;
            };
            let unique = request.header.unique;
            let mut fut = serve(request);
            let mut cx = Context::from_waker(waker);
            match fut.as_mut().poll(&mut cx) {
                // A large read from a local file: copy it on a blocking
                // thread, so that reads (readahead) of one queue overlap.
                Poll::Ready(outcome @ Outcome::File { len, .. }) if len > INLINE_READ => {
                    let q = Arc::clone(q);
                    tokio::task::spawn_blocking(move || {
                        q.finish(i, unique, outcome);
                        q.wake();
                    });
                }
                Poll::Ready(outcome) => q.finish(i, unique, outcome),
                Poll::Pending => {
                    let q = Arc::clone(q);
                    tokio::spawn(async move {
                        let outcome = fut.await;
                        q.finish(i, unique, outcome);
                        q.wake();
                    });
                }
            }
        }
        let finished: Vec<(usize, u64)> =
            std::mem::take(&mut *q.done.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, unique) in finished {
            let sqe = uring_cmd(fd, CMD_COMMIT_AND_FETCH, qid, unique, iovecs[i].as_ptr())
                .user_data(i as u64);
            push(&mut ring, &sqe)?;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(err)
                if err.kind() == io::ErrorKind::Interrupted
                    || err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => return Err(err),
        }
        early.extend(ring.completion());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_give_the_highest_cpu() {
        assert_eq!(parse_cpu_list_max("0-1"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3,8-11"), Some(11));
        assert!(queue_count() >= 1);
    }

    #[test]
    fn register_sqe_carries_the_iovec_count_and_queue() {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let sqe = uring_cmd(5, CMD_COMMIT_AND_FETCH, 1, 77, iov.as_ptr());
        // SAFETY: reading the plain-data SQE as bytes.
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(&raw[4..8], &5i32.to_ne_bytes(), "fd");
        assert_eq!(&raw[8..12], &2u32.to_ne_bytes(), "cmd_op");
        assert_eq!(&raw[16..24], &(iov.as_ptr() as u64).to_ne_bytes(), "addr");
        assert_eq!(&raw[24..28], &2u32.to_ne_bytes(), "len");
        assert_eq!(&raw[48 + 8..48 + 16], &77u64.to_ne_bytes(), "commit_id");
        assert_eq!(&raw[48 + 16..48 + 18], &1u16.to_ne_bytes(), "qid");
    }
}
