//! A synthetic layer generated in memory for the criterion benchmarks:
//! directories of files of mixed sizes (most small, a few up to 256 KiB)
//! with text-like, compressible content, deterministic for a given seed.

use std::io::{self, Write};

use flate2::write::GzEncoder;

use crate::layer_tar::DOCKER_GZIP_LEVEL;

/// Largest file the generator writes.
pub const MAX_FILE_SIZE: usize = 256 * 1024;

/// A synthetic layer: its uncompressed tar stream and the gzip blob of it.
pub struct SynthLayer {
    /// The uncompressed tar stream.
    pub tar: Vec<u8>,
    /// The tar stream compressed with gzip at Docker's level.
    pub gzip: Vec<u8>,
    /// Number of regular files.
    pub files: usize,
}

/// xorshift64*: a tiny deterministic generator (no cryptographic use).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "import",
    "def",
    "return",
    "self",
    "class",
    "for",
    "in",
    "if",
    "else",
    "None",
    "True",
    "False",
    "value",
    "result",
    "config",
    "layer",
    "image",
    "container",
    "path",
    "file",
    "buffer",
    "offset",
    "length",
    "error",
    "while",
    "static",
    "const",
    "struct",
    "fn",
    "let",
    "match",
    "0x7f",
    "42",
    "1024",
    "{",
    "}",
    "(",
    ")",
    "=",
    "+=",
    "->",
    "::",
    "\n",
    "\n    ",
];

/// Size of the `i`-th file: 60% up to 4 KiB, 30% up to 64 KiB, 10% up to
/// [`MAX_FILE_SIZE`]; about one in fifty is empty.
fn file_size(rng: &mut Rng) -> usize {
    let bucket = rng.below(100);
    let max = match bucket {
        0..=1 => return 0,
        2..=61 => 4 * 1024,
        62..=91 => 64 * 1024,
        _ => MAX_FILE_SIZE,
    };
    rng.below(max as u64 + 1) as usize
}

/// Text-like content of exactly `size` bytes; every tenth file gets a run of
/// pseudo-random bytes too, as binaries would.
fn content(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 16);
    let binary = rng.below(10) == 0;
    while out.len() < size {
        if binary && rng.below(8) == 0 {
            let run = rng.below(64) as usize;
            out.extend((0..run).map(|_| rng.next() as u8));
        } else {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(size);
    out
}

/// Generates a layer of `files` regular files spread over nested directories.
pub fn generate(files: usize, seed: u64) -> io::Result<SynthLayer> {
    let mut rng = Rng(seed | 1);
    let mut builder = tar::Builder::new(Vec::new());
    let dirs = (files / 50).max(1);
    let mut written = 0;
    for d in 0..dirs {
        let dir = format!("usr/lib/synth/pkg{:03}", d);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        builder.append_data(&mut header, &dir, io::empty())?;
        let here = if d + 1 == dirs {
            files - written
        } else {
            files / dirs
        };
        for f in 0..here {
            let size = file_size(&mut rng);
            let data = content(&mut rng, size);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if f % 7 == 0 { 0o755 } else { 0o644 });
            header.set_mtime(1_700_000_000);
            header.set_size(size as u64);
            builder.append_data(&mut header, format!("{dir}/file{f:04}.py"), &data[..])?;
        }
        written += here;
    }
    let tar = builder.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::new(DOCKER_GZIP_LEVEL));
    gz.write_all(&tar)?;
    let gzip = gz.finish()?;
    Ok(SynthLayer {
        tar,
        gzip,
        files: written,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generates_the_requested_files_deterministically() {
        let a = generate(120, 7).unwrap();
        let b = generate(120, 7).unwrap();
        assert_eq!(a.tar, b.tar);
        assert_eq!(a.files, 120);
        let mut archive = tar::Archive::new(&a.tar[..]);
        let mut files = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type() == tar::EntryType::Regular {
                files += 1;
                assert!(entry.size() <= MAX_FILE_SIZE as u64);
            }
        }
        assert_eq!(files, 120);
        // Compressible, but not trivially so.
        let ratio = a.gzip.len() as f64 / a.tar.len() as f64;
        assert!(ratio > 0.05 && ratio < 0.6, "ratio {ratio}");
    }

    #[test]
    fn content_has_exact_size() {
        let mut rng = Rng(3);
        for size in [0, 1, 17, 4096, 100_000] {
            assert_eq!(content(&mut rng, size).len(), size);
        }
    }
}
