//! Writers that count and hash the bytes written through them.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// Passes writes through to `inner`, counting the bytes and hashing them
/// with SHA-256 (the digest of a blob, or the diff id of a tar stream).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Returns the inner writer, the byte count and the digest as
    /// `sha256:<hex>`.
    pub fn finish(self) -> (W, u64, String) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, self.count, digest)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sink that only counts the bytes written to it.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingSink {
    /// Bytes written so far.
    pub count: u64,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.count += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        assert_eq!(w.count(), 11);
        let (inner, count, digest) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(count, 11);
        assert_eq!(
            digest,
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[test]
    fn counting_sink_counts() {
        let mut s = CountingSink::default();
        s.write_all(&[0u8; 1000]).unwrap();
        s.write_all(b"x").unwrap();
        assert_eq!(s.count, 1001);
    }
}
