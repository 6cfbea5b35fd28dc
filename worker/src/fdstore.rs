//! systemd's file descriptor store, which keeps each mount's `/dev/fuse`
//! fd across a restart or a crash of starlightd.
//!
//! Storing: a datagram `FDSTORE=1\nFDNAME=<name>` with the fd attached
//! (`SCM_RIGHTS`) to `$NOTIFY_SOCKET` (the unit needs
//! `FileDescriptorStoreMax=`). Taking back: at start systemd passes the
//! stored fds from fd 3 on, with `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` (names joined by `:`). The name of a mount's fd is
//! `<image id hex>.<session state>` ([`MountFdName`]), so the fd and what
//! the first process negotiated with the kernel travel together.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use uring_fs::SessionState;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;
/// Most fds taken from `LISTEN_FDS` (one per image mount).
pub const MAX_INHERITED: usize = 4096;

/// A bad fd name or `LISTEN_*` environment.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// The name is not `<64 hex>.<session state>`.
    #[error("bad mount fd name {0:?}")]
    BadName(String),
    /// `LISTEN_FDS`/`LISTEN_FDNAMES` are malformed or disagree.
    #[error("bad LISTEN_* environment: {0}")]
    BadListen(String),
    /// Sending to the notify socket failed.
    #[error("notify socket: {0}")]
    Io(#[from] io::Error),
}

/// The fd name of one image's mount: the image id (64 lowercase hex) and
/// the session state, joined by `.`. At most 255 characters, no `:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountFdName {
    /// The image id, 64 lowercase hex digits.
    pub image_hex: String,
    /// What the session negotiated at INIT.
    pub state: SessionState,
}

impl MountFdName {
    /// The name sent as `FDNAME=`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.image_hex, self.state.encode())
    }

    /// Parses a name from `LISTEN_FDNAMES` (outside input).
    pub fn parse(name: &str) -> Result<Self, FdStoreError> {
        let bad = || FdStoreError::BadName(name.chars().take(80).collect());
        if name.len() > 255 {
            return Err(bad());
        }
        let (hex, state) = name.split_once('.').ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let state = SessionState::parse(state).map_err(|_| bad())?;
        Ok(MountFdName {
            image_hex: hex.to_owned(),
            state,
        })
    }
}

/// Whether an fd store is there to keep mounts: `$NOTIFY_SOCKET` is set
/// and systemd (254+) announced the store's size in `$FDSTORE`
/// (`FileDescriptorStoreMax=` above 0 in the unit).
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 0)
}

/// Stores `fd` under `name` in the fd store named by `$NOTIFY_SOCKET`.
/// Returns whether a socket was named (outside systemd nothing is sent).
pub fn store(name: &MountFdName, fd: BorrowedFd<'_>) -> Result<bool, FdStoreError> {
    let Some(target) = notify_addr()? else {
        return Ok(false);
    };
    let message = format!("FDSTORE=1\nFDNAME={}", name.encode());
    send_with_fd(&target, message.as_bytes(), Some(fd))?;
    Ok(true)
}

/// Drops the fds stored under `name` (`FDSTOREREMOVE=1`), for a stop
/// that is not a restart. Returns whether a socket was named.
pub fn remove(name: &MountFdName) -> Result<bool, FdStoreError> {
    let Some(target) = notify_addr()? else {
        return Ok(false);
    };
    let message = format!("FDSTOREREMOVE=1\nFDNAME={}", name.encode());
    send_with_fd(&target, message.as_bytes(), None)?;
    Ok(true)
}

fn notify_addr() -> io::Result<Option<SocketAddr>> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(None);
    };
    let addr = match target.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(&target))?,
    };
    Ok(Some(addr))
}

fn send_with_fd(target: &SocketAddr, message: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(target)?;
    sendmsg_with_fd(socket.as_fd(), message, fd)
}

/// Sends one message on the connected socket `sock`, with `fd` attached
/// (`SCM_RIGHTS`) if given. Shared with the hand-over socket.
pub(crate) fn sendmsg_with_fd(
    sock: BorrowedFd<'_>,
    message: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // Room for one cmsg carrying one int, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: `control` is large enough for one cmsg with one int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (as read from
/// the environment) for process `pid`: the fd numbers and names passed,
/// or nothing if they are not meant for this process.
pub fn parse_listen(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(i32, String)>, FdStoreError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let bad = |what: &str| FdStoreError::BadListen(what.to_owned());
    let for_pid: u32 = listen_pid.parse().map_err(|_| bad("LISTEN_PID"))?;
    if for_pid != pid {
        return Ok(Vec::new());
    }
    let count: usize = listen_fds.parse().map_err(|_| bad("LISTEN_FDS"))?;
    if count > MAX_INHERITED {
        return Err(bad("LISTEN_FDS above the bound"));
    }
    let names: Vec<&str> = match listen_fdnames {
        Some(names) if count > 0 => names.split(':').collect(),
        _ => Vec::new(),
    };
    if names.len() != count {
        return Err(bad("LISTEN_FDNAMES does not name every fd"));
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as i32, name.to_owned()))
        .collect())
}

/// Takes the fds systemd passed to this process (close-on-exec from now
/// on), with their names. Call once. The `LISTEN_*` variables stay (a child
/// ignores them: `LISTEN_PID` names this process).
pub fn take_inherited() -> Result<Vec<(String, OwnedFd)>, FdStoreError> {
    let var = |name: &str| std::env::var(name).ok();
    let passed = parse_listen(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let mut taken = Vec::with_capacity(passed.len());
    for (fd, name) in passed {
        // SAFETY: fcntl on an fd number with integer arguments.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(FdStoreError::BadListen(format!("fd {fd} is not open")));
        }
        // SAFETY: systemd passed this fd to this process (LISTEN_PID
        // matched); nothing else in the process owns it.
        taken.push((name, unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn name() -> MountFdName {
        MountFdName {
            image_hex: HEX.to_owned(),
            state: SessionState::parse("v1.42.1.131072.32").unwrap(),
        }
    }

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        let text = name().encode();
        assert!(text.len() <= 255 && !text.contains(':'));
        assert_eq!(MountFdName::parse(&text).unwrap(), name());
        for bad in [
            String::new(),
            HEX.to_owned(),
            format!("{}.v1.42.1.131072.32", &HEX[1..]),
            format!("{}.v1.42.1.131072.32", HEX.to_uppercase()),
            format!("{HEX}.v9"),
            format!("{HEX}.v1.42.1.131072.32{}", "0".repeat(300)),
        ] {
            assert!(MountFdName::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_environment_is_checked() {
        let ok = parse_listen(Some("7"), Some("2"), Some("a:b"), 7).unwrap();
        assert_eq!(ok, vec![(3, "a".to_owned()), (4, "b".to_owned())]);
        assert!(parse_listen(Some("8"), Some("2"), Some("a:b"), 7)
            .unwrap()
            .is_empty());
        assert!(parse_listen(None, None, None, 7).unwrap().is_empty());
        assert!(parse_listen(Some("7"), Some("0"), None, 7)
            .unwrap()
            .is_empty());
        assert!(parse_listen(Some("7"), Some("2"), Some("a"), 7).is_err());
        assert!(parse_listen(Some("7"), Some("2"), None, 7).is_err());
        assert!(parse_listen(Some("7"), Some("x"), None, 7).is_err());
        assert!(parse_listen(Some("x"), Some("1"), Some("a"), 7).is_err());
        assert!(parse_listen(Some("7"), Some("99999"), None, 7).is_err());
    }

    /// The test plays systemd: it owns the notify socket and receives the
    /// stored fd, which must be the very file sent.
    #[test]
    fn store_sends_the_fd_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        // SAFETY: the only test in this binary touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let sent = store(&name(), file.as_fd());
        let removed = remove(&name());
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(sent.unwrap() && removed.unwrap());

        let mut buf = [0u8; 512];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: plain data, filled by recvmsg below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert!(n > 0);
        let text = std::str::from_utf8(&buf[..n as usize]).unwrap();
        assert_eq!(text, format!("FDSTORE=1\nFDNAME={}", name().encode()));
        // SAFETY: the kernel filled the control buffer.
        let got = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null());
            assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
            ))
        };
        let got = std::fs::File::from(got);
        assert_eq!(
            got.metadata().unwrap().ino(),
            file.metadata().unwrap().ino()
        );

        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("FDSTOREREMOVE=1\nFDNAME={}", name().encode())
        );
    }
}
