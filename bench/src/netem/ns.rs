//! Network namespaces and TUN devices: creation, configuration, removal, and
//! running code or commands inside a namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::thread::JoinHandle;

use super::NetemError;

/// Directory where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `ip ARGS`, turning a failure into an error carrying its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetemError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetemError::Command(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetemError::Command(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Creates the namespace `name` (`ip netns add`).
pub fn add(name: &str) -> Result<(), NetemError> {
    ip(&["netns", "add", name])
}

/// Removes the namespace `name` (`ip netns del`); absent is not an error.
pub fn del(name: &str) -> Result<(), NetemError> {
    if !std::path::Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Names of all namespaces known to `ip netns`.
pub fn list() -> io::Result<Vec<String>> {
    match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Runs `f` on a new thread that has joined the network namespace `name`:
/// sockets it creates live in that namespace.
pub fn spawn_in<F, T>(name: &str, f: F) -> io::Result<JoinHandle<io::Result<T>>>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let handle = File::open(std::path::Path::new(NETNS_DIR).join(name))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd only changes this thread's
        // network namespace.
        if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        drop(handle);
        f()
    }))
}

/// Joins a thread from [`spawn_in`], mapping a panic to an error.
pub fn join<T>(handle: JoinHandle<io::Result<T>>) -> io::Result<T> {
    handle
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// Raises the TCP buffer limits of this thread's namespace so that long fat
/// links can be filled, and disables IPv6 there (the links carry IPv4 only;
/// router solicitations or MLD reports would be stray packets on them).
fn tune_namespace() -> io::Result<()> {
    for (knob, value) in [
        ("ipv4/tcp_rmem", "4096 131072 67108864"),
        ("ipv4/tcp_wmem", "4096 16384 67108864"),
    ] {
        std::fs::write(format!("/proc/sys/net/{knob}"), value)?;
    }
    for conf in ["all", "default"] {
        let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
        if std::path::Path::new(&knob).exists() {
            std::fs::write(knob, "1")?;
        }
    }
    Ok(())
}

/// Applies [`tune_namespace`] in namespace `ns`.
pub fn tune(ns: &str) -> Result<(), NetemError> {
    let thread = spawn_in(ns, tune_namespace)
        .map_err(|e| NetemError::Command(format!("entering namespace {ns}: {e}")))?;
    join(thread).map_err(|e| NetemError::Command(format!("in namespace {ns}: {e}")))
}

/// Opens a non-blocking TUN device `ifname` (IFF_TUN | IFF_NO_PI) from inside
/// namespace `ns`, after [`tune_namespace`] there.
pub fn open_tun(ns: &str, ifname: &str) -> Result<OwnedFd, NetemError> {
    let ifname = ifname.to_string();
    let thread = spawn_in(ns, move || {
        tune_namespace()?;
        tun(&ifname)
    })
    .map_err(|e| NetemError::Tun(format!("entering namespace {ns}: {e}")))?;
    join(thread).map_err(|e| NetemError::Tun(format!("in namespace {ns}: {e}")))
}

fn tun(ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a NUL-terminated path.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a freshly opened fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::other(format!(
            "interface name too long: {ifname}"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is, and fd is a TUN fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Whether `pid` names a live process.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}
