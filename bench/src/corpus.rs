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
    pub fn ensure_rootfs(&self) -> Result<()> {
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
        let before: Vec<&str> = below
            .iter()
            .flat_map(|l| l.packages.iter().copied())
            .collect();
        let rootfs = self.rootfs();
        self.build_custom_layer(layer.name, |work| {
            self.install_packages(apt, &rootfs, &before, layer.packages, layer.name, work)?;
            for (path, mode, content) in layer.files {
                write_app_file(work, path, *mode, content)?;
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// Builds the layer `name` (unless cached) from the tree `populate`
    /// writes into an empty work directory.
    pub fn build_custom_layer(
        &self,
        name: &str,
        populate: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<LayerBlob> {
        if self.is_built(name) {
            tracing::info!(layer = name, "cached");
            return self.load(name);
        }
        fs::create_dir_all(self.root.join("layers"))?;
        let start = Instant::now();
        let work = self.root.join("work").join(name);
        remove_dir_if_exists(&work)?;
        fs::create_dir_all(&work)?;
        populate(&work).with_context(|| format!("building layer {name}"))?;
        let blob = self.write_layer(name, &work)?;
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
        tracing::info!(
            layer = name,
            secs = start.elapsed().as_secs_f64(),
            "layer built"
        );
        Ok(blob)
    }

    /// Extracts into `work` the packages apt would install for `packages` on
    /// the system `rootfs` with `below` already installed (downloads cached
    /// under `debs/<key>/`).
    pub fn install_packages(
        &self,
        apt: &Apt,
        rootfs: &Path,
        below: &[&str],
        packages: &[&str],
        key: &str,
        work: &Path,
    ) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let status = rootfs.join("var/lib/dpkg/status");
        apt.update(&status)?;
        let mut all = below.to_vec();
        all.extend_from_slice(packages);
        let present: BTreeSet<String> = apt
            .resolve(&status, below)?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let new: Vec<_> = apt
            .resolve(&status, &all)?
            .into_iter()
            .filter(|p| !present.contains(&p.name))
            .collect();
        tracing::info!(layer = key, packages = new.len(), "downloading packages");
        let debs_dir = self.root.join("debs").join(key);
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
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(work))
                .with_context(|| format!("extracting {}", deb.display()))?;
        }
        usr_merge(rootfs, work)
    }

    /// The base root filesystem (debootstrapped by [`Corpus::build`]).
    pub fn base_rootfs(&self) -> PathBuf {
        self.rootfs()
    }

    /// The corpus root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The "rebuilt" base of version-2 images: a copy of the base with
    /// Debian's security archive added to its sources and `apt-get upgrade`
    /// run inside it (as a base image rebuilt later gets), minimized again.
    pub fn ensure_rootfs_v2(&self) -> Result<PathBuf> {
        self.ensure_rootfs()?;
        let dest = self.root.join("base/rootfs-v2");
        if dest.is_dir() {
            return Ok(dest);
        }
        let partial = layer_tar::partial_path(&dest);
        remove_dir_if_exists(&partial)?;
        run(Command::new("cp")
            .arg("-a")
            .arg(self.rootfs())
            .arg(&partial))
        .context("copying the base rootfs")?;
        let sources = partial.join("etc/apt/sources.list");
        let mut text = fs::read_to_string(&sources).unwrap_or_default();
        text.push_str(&format!(
            "deb {} {SUITE}-security main\n",
            crate::apt::SECURITY_MIRROR
        ));
        fs::write(&sources, text)?;
        let resolv = partial.join("etc/resolv.conf");
        let saved = fs::read(&resolv).ok();
        if let Ok(host) = fs::read("/etc/resolv.conf") {
            let _ = fs::remove_file(&resolv);
            fs::write(&resolv, host)?;
        }
        for args in [&["update"][..], &["-y", "upgrade"][..]] {
            run(Command::new("chroot")
                .arg(&partial)
                .args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q"])
                .args(args))
            .with_context(|| format!("apt-get {} in the v2 base", args.join(" ")))?;
        }
        match saved {
            Some(content) => fs::write(&resolv, content)?,
            None => {
                let _ = fs::remove_file(&resolv);
            }
        }
        minimize_rootfs(&partial)?;
        fs::rename(&partial, &dest)?;
        Ok(dest)
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

/// Moves top-level `bin`, `sbin` and `lib*` directories of a layer below
/// `usr/` where the base has them as symlinks (merged `/usr`), as dpkg
/// would write through the links: a real directory in an upper layer would
/// hide the base's whole `/bin` in the merged view.
fn usr_merge(rootfs: &Path, work: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let in_base = rootfs.join(dir);
        let in_layer = work.join(dir);
        let base_is_link = fs::symlink_metadata(&in_base).is_ok_and(|m| m.file_type().is_symlink());
        let layer_is_dir = fs::symlink_metadata(&in_layer).is_ok_and(|m| m.is_dir());
        if base_is_link && layer_is_dir {
            let dest = work.join("usr").join(dir);
            fs::create_dir_all(&dest)?;
            run(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", in_layer.display()))
                .arg(&dest))
            .with_context(|| format!("merging {} into usr/", in_layer.display()))?;
            fs::remove_dir_all(&in_layer)?;
        }
    }
    Ok(())
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
pub fn write_app_file(root: &Path, rel: &str, mode: u32, content: &str) -> Result<()> {
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
