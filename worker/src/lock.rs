//! The state directory's lock: one starlightd per state directory.
//!
//! [`StateLock::acquire`] takes an exclusive `flock(2)` on
//! `<state>/starlightd.lock` before anything else touches the state (the
//! store removes leftover temporaries at open, restore deletes torn
//! contents, RocksDB replays its log): a second daemon on the same state
//! fails here, naming the holder's pid, and changes nothing. The kernel
//! drops the lock when the holder's process dies (even by `kill -9`), so a
//! crashed daemon never leaves a stale lock behind; the pid written into the
//! file is only a hint for the error message.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "starlightd.lock";

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "the state directory {dir} is in use by another starlightd{} (lock {lock})",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The pid the holder wrote, if readable.
        holder: Option<u32>,
    },
    /// The state directory or its lock file is unusable.
    #[error("locking the state directory {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// Locks the state directory `dir` (created 0700 if missing; a symlink
    /// or non-directory is refused), without waiting: fails with
    /// [`LockError::Busy`] if another process holds it.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
        if !meta.is_dir() {
            return Err(io_err(dir)(io::Error::other("not a directory")));
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(io_err(dir)(io::Error::other(format!(
                "owned by uid {}, starlightd runs as uid {euid}",
                meta.uid()
            ))));
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))?;
        let fmeta = file.metadata().map_err(io_err(&path))?;
        if !fmeta.is_file() || fmeta.nlink() != 1 {
            return Err(io_err(&path)(io::Error::other(
                "not a regular file with one link",
            )));
        }
        // SAFETY: flock on a descriptor we own, for the call's duration.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            return Err(io_err(&path)(e));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(io_err(&path))?;
        Ok(StateLock { file, path })
    }

    /// [`StateLock::acquire`], retried every 50 ms while another process
    /// holds the lock, for at most `within` (for a successor started while
    /// its predecessor hands over and exits). Other errors fail at once.
    pub fn acquire_within(dir: &Path, within: Duration) -> Result<StateLock, LockError> {
        let deadline = Instant::now() + within;
        loop {
            match StateLock::acquire(dir) {
                Err(LockError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked file's descriptor (for handing the lock to a successor).
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks are per open file description: a second open in the
        // same process conflicts like another process would.
        let err = StateLock::acquire(&state).unwrap_err();
        let LockError::Busy { holder, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(*holder, Some(std::process::id()));
        assert!(
            err.to_string().contains("in use by another starlightd"),
            "{err}"
        );
        drop(first);
        let again = StateLock::acquire(&state).unwrap();
        assert_eq!(again.path(), state.join(LOCK_FILE));
        // A successor waits for the holder to let go, within a bound.
        let err = StateLock::acquire_within(&state, Duration::from_millis(120)).unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                drop(again);
            });
            let next = StateLock::acquire_within(&state, Duration::from_secs(10)).unwrap();
            assert!(t.elapsed() >= Duration::from_millis(200));
            drop(next);
        });
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", state.join(LOCK_FILE)).unwrap();
        assert!(matches!(
            StateLock::acquire(&state),
            Err(LockError::Io { .. })
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        std::fs::remove_file(state.join(LOCK_FILE)).unwrap();
        assert!(StateLock::acquire(&link).is_err());
    }
}
