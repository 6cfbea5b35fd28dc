//! Builds an image layer blob from a directory tree the way Docker and
//! BuildKit do: a depth-first walk with the children of every directory in
//! name order, ownership, modes and mtimes kept, hard links written as link
//! entries to the first path seen, device nodes with their numbers, the
//! whole tar stream compressed with gzip at level 6 (the default of both
//! zlib and Go's `compress/gzip`).

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::hashing::HashingWriter;

/// gzip level Docker's layer writer uses (Go's default compression).
pub const DOCKER_GZIP_LEVEL: u32 = 6;

/// Counts of the entries appended to a tar stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    /// All entries (directories, files, links, devices, fifos).
    pub entries: u64,
    /// Regular files with their own content (hard links excluded).
    pub files: u64,
}

/// What a layer blob is: the identifiers an image manifest and config carry,
/// plus the sizes and counts the benchmark needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// `sha256:` digest of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// `sha256:` digest of the uncompressed tar stream.
    pub diff_id: String,
    /// Size of the uncompressed tar stream in bytes.
    pub tar_size: u64,
    /// Entry counts.
    pub stats: TreeStats,
}

/// Appends every entry below `root` (not `root` itself) to `builder`, in
/// Docker's order, with paths relative to `root`.
pub fn append_tree<W: Write>(builder: &mut tar::Builder<W>, root: &Path) -> io::Result<TreeStats> {
    let mut walker = Walker {
        builder,
        root,
        links: HashMap::new(),
        stats: TreeStats::default(),
    };
    walker.walk_dir(root)?;
    Ok(walker.stats)
}

/// Writes the tar of the tree below `root`, gzip-compressed at `level`, to
/// `out`. Returns `out` (flushed) and the blob's description.
pub fn write_layer<W: Write>(root: &Path, out: W, level: u32) -> io::Result<(W, LayerBlob)> {
    let blob = HashingWriter::new(out);
    let gz = GzEncoder::new(blob, flate2::Compression::new(level));
    let mut builder = tar::Builder::new(HashingWriter::new(gz));
    let stats = append_tree(&mut builder, root)?;
    let tar_stream = builder.into_inner()?;
    let (gz, tar_size, diff_id) = tar_stream.finish();
    let blob = gz.finish()?;
    let (mut out, size, digest) = blob.finish();
    out.flush()?;
    Ok((
        out,
        LayerBlob {
            digest,
            size,
            diff_id,
            tar_size,
            stats,
        },
    ))
}

/// Writes the layer of `root` to the file `dest` atomically (through a
/// `.partial` sibling renamed at the end).
pub fn write_layer_file(root: &Path, dest: &Path, level: u32) -> io::Result<LayerBlob> {
    let partial = partial_path(dest);
    let file = File::create(&partial)?;
    let (out, blob) = write_layer(root, BufWriter::new(file), level)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&partial, dest)?;
    Ok(blob)
}

/// `dest` with `.partial` appended to its file name.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

struct Walker<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    root: &'a Path,
    /// First path seen for every (device, inode) with more than one link.
    links: HashMap<(u64, u64), PathBuf>,
    stats: TreeStats,
}

impl<W: Write> Walker<'_, W> {
    fn walk_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut children = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        children.sort();
        for name in children {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(&path)?;
            self.append(&path, &meta)?;
            if meta.is_dir() {
                self.walk_dir(&path)?;
            }
        }
        Ok(())
    }

    fn append(&mut self, path: &Path, meta: &Metadata) -> io::Result<()> {
        let rel = path
            .strip_prefix(self.root)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?
            .to_path_buf();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        header.set_size(0);
        self.stats.entries += 1;
        let ft = meta.file_type();
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(target) = self.links.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                let target = target.clone();
                return self.builder.append_link(&mut header, &rel, target);
            }
            self.links.insert(key, rel.clone());
        }
        if ft.is_file() {
            self.stats.files += 1;
            header.set_size(meta.len());
            let file = File::open(path)?;
            self.builder.append_data(&mut header, &rel, file)
        } else if ft.is_symlink() {
            let target = fs::read_link(path)?;
            self.builder.append_link(&mut header, &rel, target)
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_block_device() {
                let (major, minor) = dev_major_minor(meta.rdev());
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
            } else if ft.is_socket() {
                // Docker skips sockets; they cannot be carried in a layer.
                self.stats.entries -= 1;
                return Ok(());
            }
            self.builder.append_data(&mut header, &rel, io::empty())
        }
    }
}

/// Splits a Linux `dev_t` into its major and minor numbers (glibc's encoding).
pub fn dev_major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn entries_of(blob: &[u8]) -> Vec<(String, tar::EntryType, u64, u64, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if let Some(link) = entry.link_name().unwrap() {
                data = link.to_string_lossy().into_owned().into_bytes();
            }
            out.push((
                path,
                h.entry_type(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap(),
                data,
            ));
        }
        out
    }

    #[test]
    fn walks_in_docker_order_and_keeps_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("etc/a-b"), b"x").unwrap();
        fs::create_dir(root.join("etc/a")).unwrap();
        fs::write(root.join("etc/a/c"), b"").unwrap();
        fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
        symlink("tool", root.join("usr/bin/link")).unwrap();
        // Ownership is kept (the test runs as root here; chown only if allowed).
        let chowned = std::os::unix::fs::chown(root.join("etc/a-b"), Some(1234), Some(567)).is_ok();

        let (blob, desc) = write_layer(root, Vec::new(), DOCKER_GZIP_LEVEL).unwrap();
        assert_eq!(desc.size, blob.len() as u64);
        let entries = entries_of(&blob);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        // Children of each directory in name order, depth first: "a" < "a-b".
        assert_eq!(
            paths,
            [
                "etc",
                "etc/a",
                "etc/a/c",
                "etc/a-b",
                "usr",
                "usr/bin",
                "usr/bin/link",
                "usr/bin/tool",
                "usr/bin/tool2"
            ]
        );
        assert_eq!(
            desc.stats,
            TreeStats {
                entries: 9,
                files: 3
            }
        );
        let tool = &entries[7];
        assert_eq!(tool.1, tar::EntryType::Regular);
        assert_eq!(tool.4 & 0o7777, 0o755);
        assert_eq!(tool.5, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[8].1, tar::EntryType::Link);
        assert_eq!(entries[8].5, b"usr/bin/tool");
        assert_eq!(entries[6].1, tar::EntryType::Symlink);
        assert_eq!(entries[6].5, b"tool");
        if chowned {
            assert_eq!((entries[3].2, entries[3].3), (1234, 567));
        }
        let uncompressed = {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut v)
                .unwrap();
            v
        };
        assert_eq!(desc.tar_size, uncompressed.len() as u64);
        let mut w = HashingWriter::new(io::sink());
        w.write_all(&uncompressed).unwrap();
        assert_eq!(desc.diff_id, w.finish().2);
    }

    #[test]
    fn layer_file_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), vec![7u8; 5000]).unwrap();
        let dest = dir.path().join("layer.tar.gz");
        let desc = write_layer_file(&src, &dest, DOCKER_GZIP_LEVEL).unwrap();
        assert_eq!(fs::metadata(&dest).unwrap().len(), desc.size);
        assert!(!partial_path(&dest).exists());
        assert_eq!(
            partial_path(&dest).file_name().unwrap(),
            "layer.tar.gz.partial"
        );
    }

    #[test]
    fn splits_device_numbers() {
        // /dev/null is 1:3, /dev/tty 5:0; a large minor spills into the high bits.
        assert_eq!(dev_major_minor(0x103), (1, 3));
        assert_eq!(dev_major_minor(0x500), (5, 0));
        assert_eq!(
            dev_major_minor((259 << 8) | 0x12 | (0x3 << 20)),
            (259, 0x312)
        );
    }
}
