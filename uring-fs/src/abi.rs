//! The FUSE kernel ABI (`include/uapi/linux/fuse.h`, protocol 7.42 and up)
//! as far as this crate speaks it: opcodes, flags, struct sizes, and a
//! little-endian-free byte cursor/writer (the ABI uses native byte order).
//!
//! Written here rather than taken from polyfuse because polyfuse 0.5 stops at
//! protocol 7.31: it has neither the `flags2` half of INIT (passthrough,
//! io_uring), nor `backing_id` in the open reply, nor the io_uring structs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Protocol major version.
pub(crate) const KERNEL_VERSION: u32 = 7;
/// The protocol minor version this crate speaks (FUSE-over-io_uring is 7.42).
pub(crate) const KERNEL_MINOR_VERSION: u32 = 42;
/// Oldest minor accepted: 7.23 (as polyfuse did).
pub(crate) const MIN_MINOR_VERSION: u32 = 23;

/// Request opcodes.
pub(crate) mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const STATX: u32 = 52;
}

/// INIT flags (the low 32 bits go in `flags`, the high ones in `flags2`).
pub(crate) mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// Open reply flags (`fuse_open_out.open_flags`).
pub(crate) mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `FUSE_GETATTR_FH`: getattr through an open file.
pub(crate) const GETATTR_FH: u32 = 1;

/// `sizeof(struct fuse_in_header)`.
pub(crate) const IN_HEADER_LEN: usize = 40;
/// `sizeof(struct fuse_out_header)`.
pub(crate) const OUT_HEADER_LEN: usize = 16;
/// `sizeof(struct fuse_attr)`.
pub(crate) const ATTR_LEN: usize = 88;
/// `sizeof(struct fuse_entry_out)`.
pub(crate) const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// `FUSE_MIN_READ_BUFFER`.
pub(crate) const MIN_READ_BUFFER: usize = 8192;

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
pub(crate) const DEV_IOC_BACKING_OPEN: u64 = ioc_w(229, 1, 16);
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
pub(crate) const DEV_IOC_BACKING_CLOSE: u64 = ioc_w(229, 2, 4);

const fn ioc_w(kind: u64, nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (kind << 8) | nr
}

/// The size of the fixed argument struct that leads the arguments of
/// `opcode` (its `in_args[0]`; 0 where the arguments are names only). Over
/// io_uring the kernel puts exactly this struct in the header's `op_in`
/// area and the rest in the payload.
pub(crate) fn fixed_arg_len(opcode: u32) -> usize {
    match opcode {
        op::GETATTR | op::FSYNC | op::FSYNCDIR | op::MKNOD | op::RENAME2 | op::CREATE => 16,
        op::SETATTR => 88,
        op::OPEN | op::OPENDIR | op::GETXATTR | op::LISTXATTR | op::SETXATTR | op::ACCESS => 8,
        op::MKDIR | op::RENAME | op::LINK | op::FORGET | op::INTERRUPT => 8,
        op::READ | op::READDIR | op::READDIRPLUS | op::WRITE => 40,
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::LSEEK | op::STATX => 24,
        op::FALLOCATE => 32,
        op::COPY_FILE_RANGE => 56,
        op::INIT => 64,
        op::BATCH_FORGET => 8,
        _ => 0,
    }
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    /// Decodes the header from the first 40 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Option<InHeader> {
        let mut c = Cursor::new(buf);
        Some(InHeader {
            len: c.u32()?,
            opcode: c.u32()?,
            unique: c.u64()?,
            nodeid: c.u64()?,
            uid: c.u32()?,
            gid: c.u32()?,
            pid: c.u32()?,
        })
    }
}

/// Reads native-endian fields off a byte slice; `None` past the end.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    /// The next `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_ne_bytes(a))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    /// A NUL-terminated name (the NUL is consumed, not returned).
    pub fn cstr(&mut self) -> Option<&'a OsStr> {
        let end = self.buf.iter().position(|&b| b == 0)?;
        let name = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Some(OsStr::from_bytes(name))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Appends native-endian fields to a reply body.
pub(crate) trait Put {
    /// Appends a `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends a `u64`.
    fn put_u64(&mut self, v: u64);
    /// Appends `n` zero bytes.
    fn put_zeros(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// A `fuse_out_header` for a reply of `body_len` bytes (or an error).
pub(crate) fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    let len = (OUT_HEADER_LEN + body_len) as u32;
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// `struct fuse_init_in` (its `flags2` only when `INIT_EXT` is set).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
}

impl InitIn {
    /// Decodes the INIT arguments.
    pub fn parse(args: &[u8]) -> Option<InitIn> {
        let mut c = Cursor::new(args);
        let major = c.u32()?;
        let minor = c.u32()?;
        let max_readahead = c.u32().unwrap_or(0);
        let low = u64::from(c.u32().unwrap_or(0));
        let high = if low & init::INIT_EXT != 0 {
            u64::from(c.u32().unwrap_or(0))
        } else {
            0
        };
        Some(InitIn {
            major,
            minor,
            max_readahead,
            flags: low | (high << 32),
        })
    }
}

/// `struct fuse_init_out`, 64 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub max_stack_depth: u32,
}

impl InitOut {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.put_u32(self.major);
        b.put_u32(self.minor);
        b.put_u32(self.max_readahead);
        b.put_u32(self.flags as u32);
        b.put_u16(self.max_background);
        b.put_u16(self.congestion_threshold);
        b.put_u32(self.max_write);
        b.put_u32(self.time_gran);
        b.put_u16(self.max_pages);
        b.put_u16(0); // map_alignment
        b.put_u32((self.flags >> 32) as u32);
        b.put_u32(self.max_stack_depth);
        b.put_zeros(64 - b.len());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }

    #[test]
    fn init_out_is_64_bytes_with_flags2_at_offset_32() {
        let out = InitOut {
            flags: init::PASSTHROUGH | init::ASYNC_READ,
            max_stack_depth: 1,
            ..Default::default()
        };
        let b = out.encode();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[12..16], &1u32.to_ne_bytes());
        assert_eq!(&b[32..36], &(1u32 << 5).to_ne_bytes());
        assert_eq!(&b[36..40], &1u32.to_ne_bytes());
    }

    #[test]
    fn cursor_reads_fields_and_names() {
        let mut buf = Vec::new();
        buf.put_u32(7);
        buf.put_u64(9);
        buf.extend_from_slice(b"name\0rest");
        let mut c = Cursor::new(&buf);
        assert_eq!(c.u32(), Some(7));
        assert_eq!(c.u64(), Some(9));
        assert_eq!(c.cstr(), Some(OsStr::new("name")));
        assert_eq!(c.rest(), b"rest");
        assert_eq!(c.u32(), None);
    }

    #[test]
    fn init_in_reads_flags2_only_with_init_ext() {
        let mut b = Vec::new();
        b.put_u32(7);
        b.put_u32(45);
        b.put_u32(131072);
        b.put_u32((init::INIT_EXT | init::ASYNC_READ) as u32);
        b.put_u32(1 << 9);
        let parsed = InitIn::parse(&b).unwrap();
        assert_eq!(parsed.minor, 45);
        assert_ne!(parsed.flags & init::OVER_IO_URING, 0);
    }
}
