//! Handing the image mounts to a new starlightd through a unix socket,
//! where systemd's fd store is not there to keep them.
//!
//! The running daemon listens on `<state>/handover.sock` (a `SOCK_SEQPACKET`
//! socket, mode 0600, in the 0700 state directory). A new daemon started
//! with `starlightd run --take-over` connects before it takes the state
//! lock and sends [`HELLO`]. The old one answers with one message per
//! image mount, `FD <image hex>.<session state>` with a copy of the mount's
//! `/dev/fuse` fd attached (`SCM_RIGHTS`), then `END <count>`; the new one
//! answers `OK` once it holds them all. Only then does the old one stop
//! serving (without unmounting) and exit, releasing the lock; the new one
//! takes the lock and serves the same connections, as after a restart
//! through the fd store (`FUSE_NOTIFY_RESEND` answers what was in flight).
//! If anything fails before `OK`, the old daemon keeps serving.
//!
//! Both ends check the peer's credentials (`SO_PEERCRED`: root, or the
//! daemon's own user) and bound every message ([`MAX_MESSAGE`] bytes, one
//! fd, at most [`MAX_FDS`] fds, a timeout on every receive).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fdstore::MAX_INHERITED;

/// The socket's name inside the state directory.
pub const SOCKET: &str = "handover.sock";
/// What the new daemon sends first.
pub const HELLO: &[u8] = b"starlight-handover 1";
/// The longest message either side accepts, in bytes.
pub const MAX_MESSAGE: usize = 512;
/// Most fds one hand-over carries.
pub const MAX_FDS: usize = MAX_INHERITED;
/// The environment variable that turns the hand-over socket off (`0`).
pub const ENV: &str = "STARLIGHT_HANDOVER";

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// A socket call failed.
    #[error("hand-over socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The peer is not root (nor the daemon's own user).
    #[error("hand-over peer refused: uid {uid} (pid {pid})")]
    Peer {
        /// The peer's uid.
        uid: u32,
        /// The peer's pid.
        pid: i32,
    },
    /// The peer broke the protocol.
    #[error("hand-over protocol: {0}")]
    Protocol(String),
}

/// Whether mounts are made to be handed over (and the socket served):
/// unless `STARLIGHT_HANDOVER=0`. Such mounts use the `/dev/fuse`
/// transport, as those kept in systemd's fd store.
pub fn enabled() -> bool {
    std::env::var(ENV).map_or(true, |v| v != "0")
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> HandOverError + '_ {
    move |source| HandOverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new `SOCK_SEQPACKET` unix socket and the address of `path`.
fn socket_for(path: &Path) -> io::Result<(OwnedFd, libc::sockaddr_un)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::other("socket path too long"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket with integer arguments.
    let fd = check(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: a fresh fd that we own.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, addr))
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

/// The peer's credentials, refused unless root or our own user.
fn check_peer(fd: BorrowedFd<'_>) -> Result<(), HandOverError> {
    // SAFETY: ucred is plain data, filled by getsockopt.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(HandOverError::Protocol(format!(
            "no peer credentials: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid != 0 && cred.uid != me {
        return Err(HandOverError::Peer {
            uid: cred.uid,
            pid: cred.pid,
        });
    }
    Ok(())
}

fn set_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: setsockopt reads a timeval of the stated size.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Sends one message, with `fd` attached if given.
fn send(sock: BorrowedFd<'_>, message: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    crate::fdstore::sendmsg_with_fd(sock, message, fd)
}

/// Receives one message (at most [`MAX_MESSAGE`] bytes) and the fds it
/// carried (close-on-exec). A truncated message or control part is an
/// error (the fds that did arrive are closed).
fn recv(sock: BorrowedFd<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), HandOverError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for two fds: a message with more is truncated, hence refused.
    let mut control = [0u64; 8];
    // SAFETY: plain data, filled by recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(8) } as usize;
    // SAFETY: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(HandOverError::Protocol(format!(
            "receive: {}",
            io::Error::last_os_error()
        )));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control part; CMSG_* walk it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(HandOverError::Protocol("a message too long".into()));
    }
    Ok((buf[..n as usize].to_vec(), fds))
}

/// The old daemon's listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

/// A new daemon asking for the mounts (its [`HELLO`] checked).
#[derive(Debug)]
pub struct Request {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens on `path` (a leftover socket file is replaced: the caller
    /// holds the state lock), mode 0600.
    pub fn bind(path: &Path) -> Result<Listener, HandOverError> {
        let _ = std::fs::remove_file(path);
        let (fd, addr) = socket_for(path).map_err(io_at(path))?;
        // SAFETY: bind with a sockaddr_un of the stated size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                ADDR_LEN,
            )
        })
        .map_err(io_at(path))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_at(path))?;
        // SAFETY: listen with integer arguments.
        check(unsafe { libc::listen(fd.as_raw_fd(), 4) }).map_err(io_at(path))?;
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Waits for the next new daemon whose credentials and hello pass
    /// (blocking; peers that fail are logged and dropped).
    pub fn accept(&self) -> Result<Request, HandOverError> {
        loop {
            // SAFETY: accept4 with null address pointers.
            let r = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_at(&self.path)(e));
            }
            // SAFETY: a fresh fd that we own.
            let fd = unsafe { OwnedFd::from_raw_fd(r) };
            let request = Request {
                fd,
                path: self.path.clone(),
            };
            match request.check_hello() {
                Ok(()) => return Ok(request),
                Err(e) => tracing::warn!("hand-over request refused: {e}"),
            }
        }
    }

    /// Accepts requests on a thread of its own, passing them to the
    /// returned channel (one at a time).
    pub fn spawn(self) -> tokio::sync::mpsc::Receiver<Request> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        std::thread::spawn(move || loop {
            match self.accept() {
                Ok(r) => {
                    if tx.blocking_send(r).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("the hand-over socket stopped: {e}");
                    return;
                }
            }
        });
        rx
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Request {
    fn check_hello(&self) -> Result<(), HandOverError> {
        use std::os::fd::AsFd;
        check_peer(self.fd.as_fd())?;
        set_timeout(self.fd.as_fd(), Duration::from_secs(10)).map_err(io_at(&self.path))?;
        let (hello, fds) = recv(self.fd.as_fd())?;
        if hello != HELLO || !fds.is_empty() {
            return Err(HandOverError::Protocol("not a hand-over hello".into()));
        }
        Ok(())
    }

    /// Sends each `(name, fd)` and `END`, then waits for the new daemon's
    /// `OK`: once this returns `Ok`, it holds every fd.
    pub fn send(&self, fds: &[(String, OwnedFd)]) -> Result<(), HandOverError> {
        use std::os::fd::AsFd;
        if fds.len() > MAX_FDS {
            return Err(HandOverError::Protocol(format!("{} mounts", fds.len())));
        }
        let sock = self.fd.as_fd();
        for (name, fd) in fds {
            let message = format!("FD {name}");
            if message.len() > MAX_MESSAGE {
                return Err(HandOverError::Protocol("a name too long".into()));
            }
            send(sock, message.as_bytes(), Some(fd.as_fd())).map_err(io_at(&self.path))?;
        }
        send(sock, format!("END {}", fds.len()).as_bytes(), None).map_err(io_at(&self.path))?;
        match recv(sock)? {
            (ok, extra) if ok == b"OK" && extra.is_empty() => Ok(()),
            _ => Err(HandOverError::Protocol("no OK from the new daemon".into())),
        }
    }
}

/// The new daemon's side: connects to the old one's socket at `path`,
/// receives every mount's fd with its name, and acknowledges. Each
/// receive waits at most `timeout`.
pub fn take_over(path: &Path, timeout: Duration) -> Result<Vec<(String, OwnedFd)>, HandOverError> {
    use std::os::fd::AsFd;
    let (sock, addr) = socket_for(path).map_err(io_at(path))?;
    // SAFETY: connect with a sockaddr_un of the stated size.
    check(unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            ADDR_LEN,
        )
    })
    .map_err(io_at(path))?;
    check_peer(sock.as_fd())?;
    set_timeout(sock.as_fd(), timeout).map_err(io_at(path))?;
    send(sock.as_fd(), HELLO, None).map_err(io_at(path))?;
    let mut taken: Vec<(String, OwnedFd)> = Vec::new();
    loop {
        let (message, mut fds) = recv(sock.as_fd())?;
        let text = std::str::from_utf8(&message)
            .map_err(|_| HandOverError::Protocol("a message that is not UTF-8".into()))?;
        if let Some(name) = text.strip_prefix("FD ") {
            if fds.len() != 1 || taken.len() >= MAX_FDS || name.is_empty() || name.len() > 255 {
                return Err(HandOverError::Protocol(format!(
                    "a bad fd message ({} fds, {} taken)",
                    fds.len(),
                    taken.len()
                )));
            }
            let fd = fds
                .pop()
                .ok_or_else(|| HandOverError::Protocol("no fd".into()))?;
            taken.push((name.to_owned(), fd));
        } else if let Some(count) = text.strip_prefix("END ") {
            if !fds.is_empty() || count.parse::<usize>().ok() != Some(taken.len()) {
                return Err(HandOverError::Protocol(format!(
                    "END {count:?} after {} fds",
                    taken.len()
                )));
            }
            send(sock.as_fd(), b"OK", None).map_err(io_at(path))?;
            return Ok(taken);
        } else {
            return Err(HandOverError::Protocol(format!(
                "unexpected message {:?}",
                text.chars().take(40).collect::<String>()
            )));
        }
    }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
