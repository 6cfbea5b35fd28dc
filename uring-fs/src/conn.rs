//! The `/dev/fuse` connection: mounting through `fusermount3` (which
//! receives the mount options and hands back the session fd over a unix
//! socket), the INIT handshake, and plain reads and writes of the device.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::abi::{self, init, InHeader, InitIn, InitOut};

/// The open `/dev/fuse` session fd.
#[derive(Debug)]
pub(crate) struct Device {
    fd: OwnedFd,
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Device {
    /// A device around an fd that is already a negotiated session fd.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Device { fd }
    }

    /// Reads one request into `buf`; the length read.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one reply made of `parts` in a single `writev`.
    pub fn write_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live slice of its length.
        let n = unsafe { libc::writev(self.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a reply: `error` (0 or a positive errno) and a body.
    pub fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
        let header = abi::out_header(unique, -error, if error == 0 { body.len() } else { 0 });
        if error == 0 {
            self.write_parts(&[&header, body])
        } else {
            self.write_parts(&[&header])
        }
    }
}

/// A mount made by `fusermount3`, which stays alive (auto_unmount) and
/// unmounts when this process's end of its socket closes — also when this
/// process is killed.
#[derive(Debug)]
pub(crate) struct Mounted {
    /// The session fd.
    pub device: Device,
    /// Our end of fusermount's socket: closing it makes fusermount unmount.
    pub socket: OwnedFd,
    /// The fusermount3 process, reaped on close.
    pub child: Child,
}

/// Mounts at `mountpoint` with `options` (comma-separated, as for
/// `mount -o`) through `fusermount`: in auto_unmount mode (fusermount stays
/// and unmounts once this process is gone), or, with `auto_unmount` off,
/// leaving a mount that lives as long as some copy of its fd does.
pub(crate) fn mount(
    fusermount: &str,
    mountpoint: &Path,
    options: &str,
    auto_unmount: bool,
) -> io::Result<Mounted> {
    let mut pair = [0 as libc::c_int; 2];
    // SAFETY: `pair` has room for the two fds.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh fds that we now own.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(fusermount);
    command
        .arg("-o")
        .arg(if auto_unmount {
            format!("{options},auto_unmount")
        } else {
            options.to_owned()
        })
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl (async-signal-safe) runs between fork and exec; it
    // lets the child's end of the socket survive exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop(theirs);
    // fusermount's messages go to the log (it complains, for example, when
    // the session has already detached the mount it meant to unmount).
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                tracing::debug!(target: "fusermount", "{line}");
                lines.push(line);
            }
            lines.join("; ")
        })
    });
    match receive_fd(&ours) {
        Ok(fd) => Ok(Mounted {
            device: Device { fd },
            socket: ours,
            child,
        }),
        Err(err) => {
            let status = child.wait();
            let said = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
            Err(io::Error::new(
                err.kind(),
                format!(
                    "{fusermount} did not hand over the fuse fd ({err}; exit {status:?}): {said}"
                ),
            ))
        }
    }
}

/// Receives one fd (SCM_RIGHTS) on `socket`, close-on-exec from the start.
fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsg carrying one int, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    loop {
        // SAFETY: `msg` points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fusermount closed the socket",
            ));
        }
        break;
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR/CMSG_DATA walk it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no fd in fusermount's message",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The unmount watcher's script: waits for EOF on stdin (this process
/// gone), then looks at the mount every 50 ms for up to 20 s: unmounts it
/// lazily once it reports "not connected", stops as soon as the path is no
/// longer a FUSE mount (clean shutdown) or is gone.
const WATCHER: &str = r#"read _
i=0
while [ $i -lt 400 ]; do
  t=$(stat -f -c %t "$1" 2>&1)
  case "$t" in
    65735546) ;;
    *"not connected"*) exec umount -l "$1" ;;
    *"abort"*|*"interrupted"*) ;;
    *) exit 0 ;;
  esac
  sleep 0.05
  i=$((i+1))
done"#;

/// Starts a watcher process (a small `sh` script, [`WATCHER`]) that
/// lazily unmounts `mountpoint` once this process is gone and the
/// connection reports `ENOTCONN`.
///
/// fusermount's own auto_unmount checks the mount once, right when this
/// process dies; with the io_uring transport the kernel aborts the
/// connection a moment later (the rings are torn down asynchronously), so
/// that check can see a live mount and leave it. The watcher retries.
/// It is exec'd at once (not a lingering fork of this process, which would
/// hold copies of every fd, `/dev/fuse` ones included). Returns the write
/// end of its stdin, whose closing starts the watch, and the process.
pub(crate) fn spawn_unmount_watcher(mountpoint: &Path) -> io::Result<(OwnedFd, Child)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHER)
        .arg("uring-fs-unmount-watcher")
        .arg(mountpoint)
        .env("LC_ALL", "C")
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((write_end, child))
}

/// What the kernel and this server agreed on at INIT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Negotiated {
    /// The protocol minor version in use.
    pub minor: u32,
    /// The flags both sides set.
    pub flags: u64,
    /// Largest write (and read) request.
    pub max_write: u32,
    /// `max_pages` as sent (0 if not negotiated).
    pub max_pages: u16,
}

impl Negotiated {
    /// Whether `flag` is in effect.
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }

    /// The largest payload a request or reply carries over io_uring
    /// (the kernel's `max_payload_sz`).
    pub fn max_payload(&self) -> usize {
        let pages = usize::from(self.max_pages) * page_size();
        abi::MIN_READ_BUFFER.max(self.max_write as usize).max(pages)
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// What this server asks for at INIT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    pub max_write: u32,
    pub readdirplus: bool,
    pub passthrough: bool,
    pub io_uring: bool,
}

/// Runs the INIT handshake on a blocking fd: answers the kernel's INIT
/// request (and a first one with a newer major version, if any).
pub(crate) fn handshake(device: &Device, wanted: Wanted) -> io::Result<Negotiated> {
    let mut buf = vec![0u8; (wanted.max_write as usize + 4096).max(abi::MIN_READ_BUFFER) * 2];
    for _ in 0..10 {
        let n = match device.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let header = InHeader::parse(&buf[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short request"))?;
        let args = &buf[abi::IN_HEADER_LEN.min(n)..n];
        if header.opcode != abi::op::INIT {
            tracing::warn!(opcode = header.opcode, "request before INIT");
            device.reply(header.unique, libc::EIO, &[])?;
            continue;
        }
        let init_in = InitIn::parse(args)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short INIT"))?;
        if init_in.major > abi::KERNEL_VERSION {
            let out = InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            device.reply(header.unique, 0, &out.encode())?;
            continue;
        }
        if init_in.major < abi::KERNEL_VERSION || init_in.minor < abi::MIN_MINOR_VERSION {
            device.reply(header.unique, libc::EPROTO, &[])?;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "kernel FUSE protocol {}.{} is too old",
                    init_in.major, init_in.minor
                ),
            ));
        }
        let (out, negotiated) = init_reply(&init_in, wanted);
        tracing::debug!(
            minor = negotiated.minor,
            flags = format_args!("{:#x}", negotiated.flags),
            offered = format_args!("{:#x}", init_in.flags),
            "FUSE INIT"
        );
        device.reply(header.unique, 0, &out.encode())?;
        return Ok(negotiated);
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "no usable INIT request",
    ))
}

/// The INIT reply for the kernel's offer.
fn init_reply(init_in: &InitIn, wanted: Wanted) -> (InitOut, Negotiated) {
    let offered = init_in.flags;
    let mut want = init::ASYNC_READ
        | init::ATOMIC_O_TRUNC
        | init::BIG_WRITES
        | init::AUTO_INVAL_DATA
        | init::ASYNC_DIO
        | init::PARALLEL_DIROPS
        | init::MAX_PAGES
        | init::INIT_EXT;
    if wanted.readdirplus {
        want |= init::DO_READDIRPLUS | init::READDIRPLUS_AUTO;
    }
    if wanted.passthrough {
        want |= init::PASSTHROUGH;
    }
    if wanted.io_uring {
        want |= init::OVER_IO_URING;
    }
    let flags = want & offered;
    let minor = init_in.minor.min(abi::KERNEL_MINOR_VERSION);
    let max_pages = if flags & init::MAX_PAGES != 0 {
        u16::try_from(wanted.max_write.div_ceil(page_size() as u32)).unwrap_or(u16::MAX)
    } else {
        0
    };
    let out = InitOut {
        major: abi::KERNEL_VERSION,
        minor,
        max_readahead: init_in.max_readahead,
        flags,
        max_background: 64,
        congestion_threshold: 48,
        max_write: wanted.max_write,
        time_gran: 1,
        max_pages,
        max_stack_depth: if flags & init::PASSTHROUGH != 0 { 1 } else { 0 },
    };
    let negotiated = Negotiated {
        minor,
        flags,
        max_write: wanted.max_write,
        max_pages,
    };
    (out, negotiated)
}

/// `fusermount3` where it is installed (fuse3), else `fusermount`.
pub(crate) fn fusermount_program() -> &'static str {
    ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("fusermount")
}

/// `-o` option text: rejects commas and NULs inside one value.
pub(crate) fn check_option(value: &str) -> Result<(), OsString> {
    if value.contains([',', '\0']) || OsString::from(value).as_bytes().is_empty() {
        Err(OsString::from(value))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reply_takes_only_what_the_kernel_offers() {
        let init_in = InitIn {
            major: 7,
            minor: 45,
            max_readahead: 1 << 17,
            flags: init::ASYNC_READ | init::MAX_PAGES | init::INIT_EXT | init::PASSTHROUGH,
        };
        let wanted = Wanted {
            max_write: 128 * 1024,
            readdirplus: true,
            passthrough: true,
            io_uring: true,
        };
        let (out, negotiated) = init_reply(&init_in, wanted);
        assert_eq!(negotiated.minor, abi::KERNEL_MINOR_VERSION);
        assert!(negotiated.has(init::PASSTHROUGH));
        assert!(!negotiated.has(init::OVER_IO_URING), "not offered");
        assert!(!negotiated.has(init::DO_READDIRPLUS), "not offered");
        assert_eq!(out.max_stack_depth, 1);
        assert_eq!(usize::from(out.max_pages) * page_size(), 128 * 1024);
        assert_eq!(negotiated.max_payload(), 128 * 1024);
    }

    #[test]
    fn option_values_with_commas_are_refused() {
        assert!(check_option("uring-fs").is_ok());
        assert!(check_option("a,b").is_err());
        assert!(check_option("").is_err());
    }
}
