//! The spool of production traces: `<state>/traces`, mode 0700, one file
//! `<id>.json` (mode 0600) per trace, written atomically (a temporary file,
//! synced, renamed, the directory synced), kept until the proxy
//! acknowledged the trace. Ids start with the time they were made, so the
//! oldest trace lists first; the id stays the trace's across retries, so the
//! proxy counts it once however often it is sent.
//!
//! Files are read as hostile: a name that is no valid id, a symlink, a file
//! too large or that does not parse (or whose id is not its name) is
//! deleted with a warning and never sent.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use tracing::warn;
use transport_quic::Trace;

/// The largest spool file read (a trace at its caps is far smaller).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("trace spool {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The spool holds its maximum number of traces.
    #[error("the trace spool is full ({0} traces): trace dropped")]
    Full(usize),
    /// An id that cannot name a file.
    #[error("invalid trace id {0:?}")]
    Id(String),
    /// The trace cannot be encoded.
    #[error("encoding a trace: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `id` is a spool id: 1–128 ASCII letters, digits, `-` or `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new trace id: the time in milliseconds (sortable), then 32 hex
/// digits unique to this image, process, instant and call.
pub fn new_id(manifest_digest: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(manifest_digest.as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(now.as_nanos().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!(
        "{:013}-{}",
        now.as_millis(),
        hex::encode(&h.finalize()[..16])
    )
}

/// The trace spool.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max: usize,
}

impl Spool {
    /// The spool in `dir` holding at most `max` traces; creates `dir`
    /// (0700) and removes temporary files a crash left.
    pub fn open(dir: impl Into<PathBuf>, max: usize) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(&dir))?;
        let spool = Spool { dir, max };
        for entry in std::fs::read_dir(&spool.dir).map_err(io_err(&spool.dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `trace` atomically as `<id>.json`; refused when the spool is
    /// full or the id is invalid (nothing is left behind).
    pub fn write(&self, trace: &Trace) -> Result<PathBuf, SpoolError> {
        if !valid_id(&trace.id) {
            return Err(SpoolError::Id(trace.id.chars().take(140).collect()));
        }
        let held = self.list()?.len();
        if held >= self.max {
            return Err(SpoolError::Full(held));
        }
        let json = serde_json::to_vec(trace).map_err(|e| SpoolError::Encode(e.to_string()))?;
        let path = self.file(&trace.id);
        let tmp = self.dir.join(format!(".{}.tmp", trace.id));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// The spooled traces' files, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // being written
            }
            files.push(entry.path());
        }
        files.sort();
        Ok(files)
    }

    /// Reads a spooled trace; a file that is not one is deleted (with a
    /// warning) and gives `None`.
    pub fn read(&self, path: &Path) -> Option<Trace> {
        match read_checked(path) {
            Ok(t) => Some(t),
            Err(reason) => {
                warn!(file = %path.display(), "{reason}: not a trace, deleted");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Deletes the trace `id` (once acknowledged).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::Id(id.chars().take(140).collect()));
        }
        let path = self.file(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

fn read_checked(path: &Path) -> Result<Trace, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("a name that is not UTF-8")?;
    let id = name
        .strip_suffix(".json")
        .filter(|id| valid_id(id))
        .ok_or("a name that is no trace id")?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} bytes (at most {MAX_FILE_BYTES})", meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let trace: Trace = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if trace.id != id {
        return Err(format!("its id {:?} is not its name", trace.id));
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use transport_quic::TraceOpen;

    fn trace(id: &str) -> Trace {
        Trace {
            id: id.into(),
            image: "r/app:v1".into(),
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            opens: vec![TraceOpen {
                path: "bin/sh".into(),
                layer: 1,
                rank: 0,
                ms_since_start: 0,
                ms_waited: 3,
            }],
        }
    }

    #[test]
    fn traces_are_written_privately_and_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("traces"), 10).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(spool.dir()), 0o700);
        let a = new_id("sha256:x");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("sha256:x");
        assert!(valid_id(&a) && a < b, "{a} {b}");
        let pb = spool.write(&trace(&b)).unwrap();
        let pa = spool.write(&trace(&a)).unwrap();
        assert_eq!(mode(&pa), 0o600);
        assert_eq!(spool.list().unwrap(), vec![pa.clone(), pb]);
        assert_eq!(spool.read(&pa).unwrap(), trace(&a));
        // No temporary file stays.
        assert_eq!(std::fs::read_dir(spool.dir()).unwrap().count(), 2);
        spool.remove(&a).unwrap();
        spool.remove(&a).unwrap();
        assert_eq!(spool.list().unwrap().len(), 1);
    }

    #[test]
    fn bad_files_are_deleted_and_never_read_as_traces() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("traces"), 10).unwrap();
        let d = spool.dir().to_path_buf();
        std::fs::write(d.join("junk.json"), b"{not json").unwrap();
        std::fs::write(
            d.join("bad name!.json"),
            serde_json::to_vec(&trace("x")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            d.join("other.json"),
            serde_json::to_vec(&trace("mismatch")).unwrap(),
        )
        .unwrap();
        let outside = dir.path().join("secret");
        std::fs::write(&outside, serde_json::to_vec(&trace("link")).unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link.json")).unwrap();
        std::fs::create_dir(d.join("adir.json")).unwrap();
        let good = spool.write(&trace("good")).unwrap();
        let mut read = vec![];
        for path in spool.list().unwrap() {
            if let Some(t) = spool.read(&path) {
                read.push((path, t));
            }
        }
        assert_eq!(read, vec![(good.clone(), trace("good"))]);
        // Only the good trace and the directory (which remove_file cannot
        // delete, and is never read) stay; the symlink's target is untouched.
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["adir.json".to_string(), "good.json".to_string()]);
        assert!(outside.exists());
    }

    #[test]
    fn a_crash_leftover_is_cleaned_and_a_full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("traces");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(".torn.tmp"), b"{\"id\":").unwrap();
        let spool = Spool::open(&d, 2).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        spool.write(&trace("a")).unwrap();
        spool.write(&trace("b")).unwrap();
        assert!(matches!(spool.write(&trace("c")), Err(SpoolError::Full(2))));
        assert!(matches!(
            spool.write(&trace("../evil")),
            Err(SpoolError::Id(_))
        ));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        assert!(!dir.path().join("evil.json").exists());
    }
}
