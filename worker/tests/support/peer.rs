//! A client of a unix socket running as another user: for the tests that
//! check starlightd's sockets refuse peers that are not root.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The user `nobody`'s uid and gid.
pub const NOBODY: u32 = 65_534;

/// Connects to the unix socket `socket` (of type `kind`: `SOCK_STREAM`,
/// `SOCK_SEQPACKET`) as `uid`/`gid` with no supplementary groups, sends
/// `message` and returns the connect's errno (0: connected) and what the
/// server sent back until it closed (or 10 s passed). The client runs in
/// a forked child after its uid and gid changed (a `pre_exec` hook that
/// exits instead of exec'ing), with async-signal-safe calls only.
pub fn connect_as(uid: u32, gid: u32, socket: &Path, kind: i32, message: &[u8]) -> (i32, String) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let message = message.to_vec();
    let mut cmd = Command::new("/bin/true");
    cmd.uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: the hook runs in the forked child and only makes
    // async-signal-safe calls (socket, setsockopt, connect, send, read,
    // write, _exit) on memory it owns.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::socket(libc::AF_UNIX, kind, 0);
            if fd < 0 {
                libc::_exit(200);
            }
            let timeout = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let r = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if r != 0 {
                libc::_exit(*libc::__errno_location());
            }
            libc::send(
                fd,
                message.as_ptr().cast(),
                message.len(),
                libc::MSG_NOSIGNAL,
            );
            let mut buf = [0u8; 1024];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(1, buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0)
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
