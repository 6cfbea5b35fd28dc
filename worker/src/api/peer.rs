//! Who may use starlightd's sockets. Each socket file gets an explicit mode
//! (0600, or 0660 with a group), and every connection is checked against
//! the peer's credentials as the kernel recorded them at `connect`
//! (`SO_PEERCRED`, `SO_PEERGROUPS`): root, or a member of the configured
//! group. So a socket left open by a umask, or reached through a bind race,
//! still serves no one else.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The credentials of a socket's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its process id.
    pub pid: i32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

/// A peer the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: uid {uid} (pid {pid}) is not root{}", match .group {
    Some(g) => format!(" nor in group {g} (api_group)"),
    None => " (set api_group in starlightd.toml to let a group in)".to_string(),
})]
pub struct PeerRefused {
    /// The peer's user id.
    pub uid: u32,
    /// The peer's process id.
    pub pid: i32,
    /// The group that would have let it in.
    pub group: Option<u32>,
}

/// Who may connect: root, and the members of `group` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    group: Option<u32>,
}

impl PeerPolicy {
    /// Root only (the snapshotter's socket: containerd runs as root).
    pub fn root_only() -> Self {
        PeerPolicy { group: None }
    }

    /// Root and the members of group `gid` (if any).
    pub fn root_or_group(gid: Option<u32>) -> Self {
        PeerPolicy { group: gid }
    }

    /// The socket file's mode: 0660 with a group, 0600 without.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Gives the bound socket at `path` its group (if any) and mode.
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.socket_mode()))
    }

    /// Whether `peer` may use the socket.
    pub fn allows(&self, peer: &Peer) -> Result<(), PeerRefused> {
        let member = self
            .group
            .is_some_and(|g| peer.gid == g || peer.groups.contains(&g));
        if peer.uid == 0 || member {
            return Ok(());
        }
        Err(PeerRefused {
            uid: peer.uid,
            pid: peer.pid,
            group: self.group,
        })
    }

    /// Checks the peer of the connected socket `socket`; the refusal (or a
    /// failure to read its credentials) is logged.
    pub fn check(&self, socket: &impl AsRawFd, what: &str) -> Result<Peer, String> {
        let peer = peer_of(socket.as_raw_fd()).map_err(|e| {
            tracing::warn!("{what}: cannot read the peer's credentials, closing: {e}");
            format!("cannot read the peer's credentials: {e}")
        })?;
        self.allows(&peer).map_err(|e| {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "{what}: refused: {e}"
            );
            e.to_string()
        })?;
        Ok(peer)
    }
}

/// The credentials of the peer of the connected unix socket `fd`.
pub fn peer_of(fd: RawFd) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid ucred and `len` its size, for the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
        groups: peer_groups(fd)?,
    })
}

/// The supplementary groups of the peer of `fd` (`SO_PEERGROUPS`).
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` has room for `len` bytes, for the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: `len` says how much room the list needs (at most NGROUPS_MAX).
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

/// The gid of `group`: a number, or a name looked up in the group database.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| format!("group {group:?} has a NUL byte"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `group` (null pointers, gid 0).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is
        // the buffer's size; the result only points into `entry`/`buf`.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(format!(
                "looking up group {group:?}: {}",
                io::Error::from_raw_os_error(r)
            ));
        }
        if found.is_null() {
            return Err(format!("no group named {group:?}"));
        }
        return Ok(entry.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 42,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_or_the_group_only() {
        let root_only = PeerPolicy::root_only();
        assert_eq!(root_only.socket_mode(), 0o600);
        assert!(root_only.allows(&peer(0, 0, &[])).is_ok());
        let e = root_only.allows(&peer(1000, 1000, &[27])).unwrap_err();
        assert!(
            e.to_string().contains("uid 1000 (pid 42) is not root"),
            "{e}"
        );
        assert!(e.to_string().contains("api_group"), "{e}");

        let group = PeerPolicy::root_or_group(Some(27));
        assert_eq!(group.socket_mode(), 0o660);
        assert!(group.allows(&peer(0, 0, &[])).is_ok());
        assert!(group.allows(&peer(1000, 27, &[])).is_ok());
        assert!(group.allows(&peer(1000, 1000, &[4, 27])).is_ok());
        let e = group.allows(&peer(1000, 1000, &[4])).unwrap_err();
        assert!(e.to_string().contains("nor in group 27"), "{e}");
    }

    #[test]
    fn credentials_of_a_real_peer() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer_of(a.as_raw_fd()).unwrap();
        // SAFETY: getuid/getpid have no preconditions.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        assert_eq!((p.uid, p.pid), (uid, pid));
        assert!(PeerPolicy::root_or_group(Some(p.gid))
            .check(&a, "test")
            .is_ok());
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-starlight")
            .unwrap_err()
            .contains("no group named"));
        assert!(group_id("a\0b").is_err());
    }
}
