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
