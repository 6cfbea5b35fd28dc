//! Pulls cut short by a stop or a crash of starlightd, resumed at the next
//! start without any command.
//!
//! [`ImageManager::restore`] announces every content of an image recorded
//! incomplete as expected ([`ContentWaiters::announce`]) before its mount is
//! served, so an open of a file that has not arrived waits instead of
//! failing. [`ImageManager::resume_incomplete`] then pulls each such image
//! again in the background: [`ImageManager::pull`] names the contents
//! already verified in `held_payloads`, so only what is missing travels.
//! Once that pull's receive announced its own expectations, the restore's
//! are released; if no pull gets through within `grace_secs` (with the
//! configured reconnect backoff between attempts), they are released as
//! given up and the opens still waiting fail with `EIO`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{contents_of, ImageManager, ManagerError, PullOptions};
use crate::meta::ImageRecord;

/// How long a resumed image's registration is retried while containerd
/// reconnects to the snapshotter (gRPC's reconnect backoff reaches 2 min).
const REGISTER_FOR: Duration = Duration::from_secs(300);

impl ImageManager {
    /// Every content of the images recorded incomplete (announced by
    /// [`ImageManager::expect_resumes`], released by the resumes).
    fn resumable(&self, records: &[ImageRecord]) -> Vec<(ImageRecord, Vec<[u8; 32]>)> {
        records
            .iter()
            .filter(|r| !r.complete)
            .map(|r| {
                let mut shas: Vec<[u8; 32]> = contents_of(&r.header).into_keys().collect();
                shas.sort_unstable();
                (r.clone(), shas)
            })
            .collect()
    }

    /// Marks every content of each incomplete image as expected, before
    /// any mount is served: opens of its missing files wait for the resume.
    pub(super) fn expect_resumes(&self, records: &[ImageRecord]) {
        for (_, shas) in self.resumable(records) {
            for sha in shas {
                self.waiters.announce(sha);
            }
        }
    }

    /// Starts, in the background, one pull of each image recorded
    /// incomplete in `records` (as [`ImageManager::expect_resumes`] saw
    /// them). Returns how many were started.
    pub(super) fn resume_incomplete(self: &Arc<Self>, records: &[ImageRecord]) -> usize {
        let resumable = self.resumable(records);
        let n = resumable.len();
        for (record, shas) in resumable {
            let this = self.clone();
            tokio::spawn(async move {
                let gave_up = this.resume_one(&record).await;
                for sha in &shas {
                    this.waiters.release(sha, gave_up);
                }
            });
        }
        n
    }

    /// Pulls `record`'s image until one pull is admitted, with backoff;
    /// returns whether it gave up (no pull within `grace_secs`).
    async fn resume_one(self: &Arc<Self>, record: &ImageRecord) -> bool {
        let image = record.reference.to_string();
        let digest = record.digest();
        let began = Instant::now();
        let mut delay = self.config.backoff.initial;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (progress, _ignored) = mpsc::unbounded_channel();
            // containerd may not have reconnected to the snapshotter yet:
            // the image is registered once the receive goes on.
            let options = PullOptions {
                skip_registration: true,
                ..PullOptions::default()
            };
            let err = match self.pull(&image, options, progress).await {
                Ok(report) => {
                    info!(
                        image = %image,
                        %digest,
                        attempt,
                        held = report.held_payloads,
                        payloads = report.payloads,
                        "resumed the pull cut short by the last stop"
                    );
                    self.register_again(record).await;
                    return false;
                }
                Err(e) => e,
            };
            if !matches!(self.meta.get(&digest), Ok(Some(_))) {
                return true; // removed meanwhile
            }
            if began.elapsed() >= self.config.grace {
                error!(
                    image = %image,
                    attempt,
                    "cannot resume the pull cut short by the last stop: {err}; opens of its missing files fail with EIO (pull it again)"
                );
                return true;
            }
            warn!(image = %image, attempt, "resuming the pull failed, trying again: {err}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.config.backoff.max);
        }
    }

    /// Registers a resumed image in containerd again (idempotent; it was
    /// registered before the stop, unless that stop cut its registration),
    /// retrying while containerd reconnects, for at most [`REGISTER_FOR`].
    async fn register_again(&self, record: &ImageRecord) {
        let began = Instant::now();
        let mut delay = self.config.backoff.initial;
        loop {
            match self
                .registry
                .register(record.reference.as_str(), &record.header)
                .await
            {
                Ok(()) => return,
                Err(e) if began.elapsed() >= REGISTER_FOR => {
                    error!(image = %record.reference, "cannot register the resumed image in containerd: {e}");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.backoff.max);
                }
            }
        }
    }

    /// Registers `image` in containerd; while containerd answers
    /// `Unavailable` (its connection to our snapshotter socket is in gRPC's
    /// reconnect backoff, e.g. right after starlightd started), retries
    /// with the reconnect backoff for at most [`UNAVAILABLE_FOR`].
    pub(super) async fn register_retrying(
        &self,
        image: &str,
        header: &transport_quic::Header,
    ) -> Result<(), ManagerError> {
        let began = Instant::now();
        let mut delay = self.config.backoff.initial;
        loop {
            match self.registry.register(image, header).await {
                Ok(()) => return Ok(()),
                Err(reason) if reason.is_unavailable() && began.elapsed() < UNAVAILABLE_FOR => {
                    debug!(
                        image,
                        "containerd cannot reach the snapshotter yet: {reason}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.backoff.max);
                }
                Err(source) => {
                    return Err(ManagerError::Register {
                        image: image.to_string(),
                        source,
                    })
                }
            }
        }
    }
}

/// How long a registration is retried while containerd's connection to
/// the snapshotter is unavailable.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(20);
