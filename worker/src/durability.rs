//! How starlightd's RocksDB databases (the image database and the
//! snapshotter's) are opened and written so that a power loss never loses
//! an acknowledged record.
//!
//! - Every write is synced ([`synced`]): RocksDB appends it to its
//!   write-ahead log and `fdatasync`s the log before the write returns, so a
//!   record the daemon acted on (answered a pull, created a snapshot
//!   directory, handed out a snapshot id) is on disk first. The records are
//!   few (a handful per pull or container), so the cost is one log sync each.
//! - The log is replayed in point-in-time mode ([`options`]): a tail torn by
//!   a power loss (a write that never returned) is dropped and the database
//!   opens with every write before it, instead of refusing to open.

use rocksdb::{DBRecoveryMode, Options, WriteOptions};

/// Options for opening one of starlightd's databases (created if missing).
pub fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts
}

/// Write options that make a write durable before it returns.
pub fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// The newest write-ahead log of the database at `dir`.
    fn newest_log(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap()
    }

    #[test]
    fn a_torn_log_tail_is_dropped_and_every_earlier_write_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = rocksdb::DB::open(&options(), dir.path()).unwrap();
            for i in 0..50u32 {
                db.put_opt(i.to_be_bytes(), [7u8; 100], &synced()).unwrap();
            }
        }
        // Half a record, as a power loss in the middle of a write leaves it:
        // a real record header and body cut short, then garbage.
        let log = newest_log(dir.path());
        let bytes = std::fs::read(&log).unwrap();
        assert!(bytes.len() > 200, "the writes are in the log");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&bytes[bytes.len() - 150..bytes.len() - 40])
            .unwrap();
        f.write_all(&[0xa5; 77]).unwrap();
        drop(f);
        let db = rocksdb::DB::open(&options(), dir.path()).unwrap();
        for i in 0..50u32 {
            assert_eq!(
                db.get(i.to_be_bytes()).unwrap().as_deref(),
                Some(&[7u8; 100][..]),
                "write {i}"
            );
        }
        // And the database takes writes again.
        db.put_opt(b"after", b"x", &synced()).unwrap();
    }
}
