//! Traces waiting for the proxy's acknowledgement: one JSON file each, named
//! by trace id, written atomically (temporary file, fsync, rename) before
//! the upload and deleted only once the proxy acknowledged the trace. A
//! failed upload loses nothing; the proxy counts a trace id once, so a
//! trace whose acknowledgement was lost is not counted twice on retry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};
use transport_quic::{Trace, TraceAck, TraceUpload};

use super::proxy::ProxyTarget;

/// How long one upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory of pending traces.
#[derive(Debug, Clone)]
pub struct PendingDir {
    dir: PathBuf,
}

/// Whether a trace id is safe as a file name.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl PendingDir {
    /// The pending directory `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> PendingDir {
        PendingDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Stores `trace` durably; returns its file.
    pub fn write(&self, trace: &Trace) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(valid_id(&trace.id), "invalid trace id {:?}", trace.id);
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.file(&trace.id);
        let tmp = self.dir.join(format!(".{}.tmp", trace.id));
        let json = serde_json::to_vec_pretty(trace).context("encoding the trace")?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(&json)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            // Makes the rename durable; harmless if the filesystem refuses.
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// The pending trace files, oldest name first (missing directory: none).
    pub fn list(&self) -> anyhow::Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("listing {}", self.dir.display()))?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json") && !name.starts_with('.') {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Reads a pending trace file.
    pub fn read(path: &Path) -> anyhow::Result<Trace> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    /// Uploads the trace in `path`; deletes the file once the proxy
    /// acknowledged it (also when it had the trace already).
    pub async fn upload(&self, path: &Path, proxy: &ProxyTarget) -> anyhow::Result<TraceAck> {
        let trace = Self::read(path)?;
        let upload = TraceUpload {
            token: proxy.token.clone(),
            trace,
        };
        let ack = tokio::time::timeout(
            UPLOAD_TIMEOUT,
            proxy
                .client
                .upload_trace(proxy.addr, &proxy.server_name, &upload),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no acknowledgement within {UPLOAD_TIMEOUT:?}"))?
        .with_context(|| format!("uploading trace {} to {}", upload.trace.id, proxy.addr))?;
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        Ok(ack)
    }

    /// Uploads every pending trace; returns (delivered, still pending).
    pub async fn upload_all(&self, proxy: &ProxyTarget) -> anyhow::Result<(usize, usize)> {
        let (mut delivered, mut failed) = (0, 0);
        for path in self.list()? {
            match self.upload(&path, proxy).await {
                Ok(ack) => {
                    delivered += 1;
                    if ack.duplicate {
                        info!(trace = %ack.id, "the proxy already had this trace: removed");
                    } else {
                        info!(
                            trace = %ack.id,
                            folded = ack.folded,
                            ignored = ack.ignored,
                            "trace delivered"
                        );
                    }
                }
                Err(e) => {
                    failed += 1;
                    warn!(file = %path.display(), "{e:#}; kept for a later --upload-pending");
                }
            }
        }
        Ok((delivered, failed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use transport_quic::TraceOpen;

    #[test]
    fn traces_survive_a_round_trip_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingDir::new(dir.path().join("pending"));
        assert!(pending.list().unwrap().is_empty());
        let trace = Trace {
            id: "abc-1".into(),
            image: "r/app:v1".into(),
            manifest_digest: "sha256:m".into(),
            opens: vec![TraceOpen {
                path: "a".into(),
                layer: 0,
                rank: 0,
                ms_since_start: 0,
                ms_waited: 4,
            }],
        };
        let path = pending.write(&trace).unwrap();
        assert_eq!(pending.list().unwrap(), vec![path.clone()]);
        assert_eq!(PendingDir::read(&path).unwrap(), trace);
        let bad = Trace {
            id: "../x".into(),
            ..trace
        };
        assert!(pending.write(&bad).is_err());
    }
}
