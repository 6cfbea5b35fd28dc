//! The manager's side of a hand-over through the socket
//! ([`crate::handover`]): copies of every mount's connection for the new
//! daemon, then stopping without unmounting what it took.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use tracing::warn;

use super::ImageManager;
use crate::fdstore::MountFdName;

impl ImageManager {
    /// A copy of every mounted image's `/dev/fuse` fd, named
    /// `<image hex>.<session state>` (as in systemd's fd store). Mounts
    /// that cannot be handed over (not made to survive the process) are
    /// left out and logged.
    pub async fn connections(&self) -> Vec<(String, OwnedFd)> {
        let mounts = self.mounts.lock().await;
        let mut out = Vec::with_capacity(mounts.len());
        for (digest, m) in mounts.iter() {
            match m.session.clone_fd() {
                Ok(fd) => {
                    let name = MountFdName {
                        image_hex: digest.hex(),
                        state: m.session.state(),
                    };
                    out.push((name.encode(), fd));
                }
                Err(e) => warn!(image = %m.reference, "cannot hand this mount over: {e}"),
            }
        }
        out
    }

    /// After a hand-over: stops serving the mounts whose fds were handed
    /// (named in `handed`) without unmounting them, and unmounts any other
    /// (mounted since the copies were taken).
    pub async fn finish_hand_over(&self, handed: &[String]) {
        let hexes: HashSet<&str> = handed
            .iter()
            .filter_map(|n| n.split_once('.').map(|(hex, _)| hex))
            .collect();
        let mut mounts = self.mounts.lock().await;
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for (digest, m) in mounts.drain() {
            if hexes.contains(digest.hex().as_str()) {
                if let Err(e) = m.session.hand_over().await {
                    warn!(image = %m.reference, "stopping the handed-over mount: {e}");
                }
            } else {
                m.session.shutdown().await;
            }
        }
    }
}
