//! Bounds on everything read from a layer, checked before allocating.

/// Longest accepted path or link target, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest accepted PAX extended header, in bytes.
pub const MAX_PAX_SIZE: u64 = 1 << 20;
/// Largest accepted GNU long name or long link record, in bytes.
pub const MAX_GNU_LONG_SIZE: u64 = 8 << 10;
/// Largest accepted extended-attribute value, in bytes.
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Most extended attributes accepted on one entry.
pub const MAX_XATTRS: usize = 1024;
/// Largest accepted total size of one entry's extended attributes (names and values).
pub const MAX_XATTR_TOTAL: usize = 1 << 20;
/// Largest accepted file size, in bytes (1 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Most entries accepted in one layer.
pub const MAX_ENTRIES: u64 = 10_000_000;
/// Most data chunks accepted in one sparse file's map.
pub const MAX_SPARSE_CHUNKS: usize = 1 << 16;
