//! `starlight rm` of an image that containers stand on is refused unless
//! forced: removing it would unmount the lower layer of their root
//! filesystems.

use tracing::warn;

use super::{ImageManager, ManagerError};
use crate::meta::ImageRecord;

impl ImageManager {
    /// `Err(InUse)` if snapshots stand on `record`'s image and `force` is
    /// not set. Without a snapshotter (none was given), nothing is in use.
    pub(super) async fn check_unused(
        &self,
        record: &ImageRecord,
        force: bool,
    ) -> Result<(), ManagerError> {
        let Some(users) = self.users.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let digest = record.digest().to_string();
        let found = tokio::task::spawn_blocking(move || users.users_of(&digest))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r.map_err(std::io::Error::other));
        let snapshots = match found {
            Ok(s) => s,
            Err(e) if force => {
                warn!(image = %record.reference, "cannot list the snapshots using it, removing anyway (forced): {e}");
                return Ok(());
            }
            Err(e) => {
                return Err(ManagerError::Io {
                    path: std::path::PathBuf::from("snapshotter"),
                    source: e,
                })
            }
        };
        if snapshots.is_empty() {
            return Ok(());
        }
        if force {
            warn!(
                image = %record.reference,
                snapshots = snapshots.len(),
                "removing an image snapshots stand on (forced): their containers lose its files"
            );
            return Ok(());
        }
        Err(ManagerError::InUse {
            image: record.reference.to_string(),
            snapshots,
        })
    }
}
