//! `starlight-bench corpus-layers`: builds the original (Docker-style gzip)
//! layer blobs of the corpus images under a cache directory. Idempotent:
//! every finished step leaves a file behind and is skipped next time.
//!
//! Layout of the cache:
//! - `base/rootfs/`: the debootstrapped Debian base (minimized like the
//!   official image: no apt lists, no downloaded packages);
//! - `apt/`: private apt lists and caches (see [`crate::apt`]);
//! - `debs/<layer>/`: the packages of each package layer;
//! - `layers/<layer>.tar.gz` and `layers/<layer>.json`: the layer blobs and
//!   their descriptions.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use starlight_bench::layer_tar::{self, LayerBlob, DOCKER_GZIP_LEVEL};

use crate::apt::{Apt, MIRROR, SUITE};
use crate::images::{ImageSpec, LayerSpec, BASE_LAYER};
use crate::run::run;

/// The corpus cache directory.
pub struct Corpus {
    root: PathBuf,
}

impl Corpus {
    /// A corpus cached under `root` (created if missing). The path is made
    /// absolute: apt reads relative paths as relative to its own directories.
    pub fn new(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let root =
            fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
        Ok(Self { root })
    }

    /// Path of a layer's original blob.
    pub fn blob_path(&self, layer: &str) -> PathBuf {
        self.root.join("layers").join(format!("{layer}.tar.gz"))
    }

    fn meta_path(&self, layer: &str) -> PathBuf {
        self.root.join("layers").join(format!("{layer}.json"))
    }

    fn rootfs(&self) -> PathBuf {
        self.root.join("base/rootfs")
    }

    /// Directory for derived files (converted blobs).
    pub fn scratch_dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// The description of a built layer; checks the blob is still there
    /// with the recorded size.
    pub fn load(&self, layer: &str) -> Result<LayerBlob> {
        let meta_path = self.meta_path(layer);
        let text = fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "reading {} (run `starlight-bench corpus-layers` first)",
                meta_path.display()
            )
        })?;
        let blob: LayerBlob = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", meta_path.display()))?;
        let blob_path = self.blob_path(layer);
        let size = fs::metadata(&blob_path)
            .with_context(|| format!("reading {}", blob_path.display()))?
            .len();
        if size != blob.size {
            bail!(
                "{}: size {size} differs from the recorded {}",
                blob_path.display(),
                blob.size
            );
        }
        Ok(blob)
    }

    fn is_built(&self, layer: &str) -> bool {
        self.meta_path(layer).exists() && self.blob_path(layer).exists()
    }

    /// Builds every layer of `images` that is not cached yet.
    pub fn build(&self, images: &[&ImageSpec]) -> Result<()> {
        fs::create_dir_all(self.root.join("layers"))
            .with_context(|| format!("creating {}", self.root.display()))?;
        self.ensure_rootfs()?;
        if !self.is_built(BASE_LAYER) {
            self.write_layer(BASE_LAYER, &self.rootfs())?;
        }
        let mut apt = None;
        for image in images {
            for (k, layer) in image.layers.iter().enumerate() {
                if self.is_built(layer.name) {
                    tracing::info!(layer = layer.name, "cached");
                    continue;
                }
                let apt = match &apt {
                    Some(apt) => apt,
                    None => apt.insert(Apt::new(&self.root.join("apt"))?),
                };
                self.build_layer(apt, &image.layers[..k], layer)?;
            }
        }
        Ok(())
    }

    /// Debootstraps the base root filesystem unless cached.
    fn ensure_rootfs(&self) -> Result<()> {
        let rootfs = self.rootfs();
        if rootfs.is_dir() {
            return Ok(());
        }
        let partial = layer_tar::partial_path(&rootfs);
        remove_dir_if_exists(&partial)?;
        fs::create_dir_all(self.root.join("base"))?;
        tracing::info!(dir = %partial.display(), "debootstrap --variant=minbase {SUITE} (a few minutes)");
        let start = Instant::now();
        run(Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(SUITE)
            .arg(&partial)
            .arg(MIRROR))
        .context("debootstrap of the Debian base (needs root and debootstrap)")?;
        minimize_rootfs(&partial)?;
        fs::rename(&partial, &rootfs)?;
        tracing::info!(secs = start.elapsed().as_secs_f64(), "base rootfs ready");
        Ok(())
    }

    /// Builds one package/application layer on top of the base and `below`.
    fn build_layer(&self, apt: &Apt, below: &[LayerSpec], layer: &LayerSpec) -> Result<()> {
        let start = Instant::now();
        let status = self.rootfs().join("var/lib/dpkg/status");
        let work = self.root.join("work").join(layer.name);
        remove_dir_if_exists(&work)?;
        fs::create_dir_all(&work)?;
        if !layer.packages.is_empty() {
            apt.update(&status)?;
            let before: Vec<&str> = below
                .iter()
                .flat_map(|l| l.packages.iter().copied())
                .collect();
            let mut all = before.clone();
            all.extend_from_slice(layer.packages);
            let present: BTreeSet<String> = apt
                .resolve(&status, &before)?
                .into_iter()
                .map(|p| p.name)
                .collect();
            let new: Vec<_> = apt
                .resolve(&status, &all)?
                .into_iter()
                .filter(|p| !present.contains(&p.name))
                .collect();
            tracing::info!(
                layer = layer.name,
                packages = new.len(),
                "downloading packages"
            );
            let debs_dir = self.root.join("debs").join(layer.name);
            let marker = debs_dir.join(".complete");
            let debs = if marker.exists() {
                list_debs(&debs_dir)?
            } else {
                remove_dir_if_exists(&debs_dir)?;
                let debs = apt.download(&status, &new, &debs_dir)?;
                fs::write(&marker, b"")?;
                debs
            };
            for deb in &debs {
                run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&work))
                    .with_context(|| format!("extracting {}", deb.display()))?;
            }
        }
        for (path, mode, content) in layer.files {
            write_app_file(&work, path, *mode, content)?;
        }
        self.write_layer(layer.name, &work)?;
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
        tracing::info!(
            layer = layer.name,
            secs = start.elapsed().as_secs_f64(),
            "layer built"
        );
        Ok(())
    }

    pub(crate) fn write_layer(&self, name: &str, dir: &Path) -> Result<LayerBlob> {
        let dest = self.blob_path(name);
        let blob = layer_tar::write_layer_file(dir, &dest, DOCKER_GZIP_LEVEL)
            .with_context(|| format!("writing layer {name} from {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&blob)?;
        fs::write(self.meta_path(name), json + "\n")?;
        tracing::info!(
            layer = name,
            tar_mb = blob.tar_size as f64 / 1e6,
            gzip_mb = blob.size as f64 / 1e6,
            entries = blob.stats.entries,
            "layer written"
        );
        Ok(blob)
    }
}

/// Removes what the official Debian image does not ship: apt's package
/// lists and caches, downloaded packages, the debootstrap log.
fn minimize_rootfs(rootfs: &Path) -> Result<()> {
    for dir in [
        "var/lib/apt/lists",
        "var/cache/apt/archives",
        "var/cache/apt",
    ] {
        let dir = rootfs.join(dir);
        if !dir.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                fs::remove_file(&path)?;
            }
        }
    }
    let log = rootfs.join("var/log/bootstrap.log");
    if log.exists() {
        fs::remove_file(log)?;
    }
    Ok(())
}

fn list_debs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    debs.sort();
    Ok(debs)
}

/// Writes an application file below `root` with `mode`, creating parents.
fn write_app_file(root: &Path, rel: &str, mode: u32, content: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minimize_removes_apt_state_but_keeps_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("var/lib/apt/lists/partial")).unwrap();
        fs::create_dir_all(root.join("var/cache/apt/archives/partial")).unwrap();
        fs::create_dir_all(root.join("var/log")).unwrap();
        fs::write(root.join("var/lib/apt/lists/x_Packages"), b"p").unwrap();
        fs::write(root.join("var/cache/apt/archives/a.deb"), b"d").unwrap();
        fs::write(root.join("var/cache/apt/pkgcache.bin"), b"c").unwrap();
        fs::write(root.join("var/log/bootstrap.log"), b"l").unwrap();
        fs::write(root.join("var/log/dpkg.log"), b"l").unwrap();
        minimize_rootfs(root).unwrap();
        assert!(root.join("var/lib/apt/lists/partial").is_dir());
        assert!(root.join("var/cache/apt/archives/partial").is_dir());
        assert!(!root.join("var/lib/apt/lists/x_Packages").exists());
        assert!(!root.join("var/cache/apt/archives/a.deb").exists());
        assert!(!root.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!root.join("var/log/bootstrap.log").exists());
        assert!(root.join("var/log/dpkg.log").exists());
    }

    #[test]
    fn app_files_get_their_mode_and_parents() {
        let dir = tempfile::tempdir().unwrap();
        write_app_file(dir.path(), "a/b/run.sh", 0o755, "#!/bin/sh\n").unwrap();
        let meta = fs::metadata(dir.path().join("a/b/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_to_string(dir.path().join("a/b/run.sh")).unwrap(),
            "#!/bin/sh\n"
        );
    }

    #[test]
    fn load_reports_missing_and_mismatched_layers() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = Corpus::new(dir.path()).unwrap();
        let err = corpus.load("x").unwrap_err();
        assert!(format!("{err:#}").contains("corpus-layers"));
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"data").unwrap();
        fs::create_dir_all(dir.path().join("layers")).unwrap();
        let written = corpus.write_layer("x", &src).unwrap();
        assert!(corpus.is_built("x"));
        assert_eq!(corpus.load("x").unwrap(), written);
        fs::write(corpus.blob_path("x"), b"truncated").unwrap();
        assert!(format!("{:#}", corpus.load("x").unwrap_err()).contains("differs"));
    }
}
