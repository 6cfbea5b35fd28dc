//! `starlight-bench corpus build`: builds the layers of every image of
//! [`crate::suite`] (both versions), assembles OCI images, pushes them to
//! the corpus registry (storage under the cache) in the original format and
//! converted to Starlight's with `starlight convert`, and writes
//! `images.json` describing them. Idempotent: layers, layouts and pushed
//! tags found in the cache are reused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use starlight_bench::layer_tar::LayerBlob;

use crate::apt::Apt;
use crate::corpus::{write_app_file, Corpus};
use crate::daemon::Place;
use crate::images::BASE_LAYER;
use crate::registry::{free_port, push_layout, Registry};
use crate::run::run;
use crate::suite::{app_files, BenchImage, Deps, Version, ENTRYPOINT, READY};

/// Name of the rebuilt base layer of v2 images.
pub const BASE_LAYER_V2: &str = "debian-bookworm-minbase-v2";

/// Subdirectory of the cache holding the registry's storage.
pub const REGISTRY_DIR: &str = "registry";
/// The corpus description written at the end of a build.
pub const IMAGES_JSON: &str = "images.json";

/// One image of the built corpus, as the sweep reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorpusImage {
    /// Repository name (the registry path).
    pub name: String,
    /// The line the entrypoint prints once the service answers.
    pub ready: String,
    /// Tags of the original images (`v1`, `v2`).
    pub v1: String,
    /// See `v1`.
    pub v2: String,
    /// Tags of the Starlight-format images.
    pub v1_starlight: String,
    /// See `v1_starlight`.
    pub v2_starlight: String,
    /// Compressed size of the original layers (v1, v2), bytes.
    pub sizes: [u64; 2],
    /// Layer counts (v1, v2).
    pub layers: [usize; 2],
    /// Files (regular, all layers) of v1 and v2.
    pub files: [u64; 2],
}

/// Reads `images.json` from a corpus directory.
pub fn load_corpus(dir: &Path) -> Result<Vec<CorpusImage>> {
    let path = dir.join(IMAGES_JSON);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `starlight-bench corpus build` first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Builds (or reuses) the corpus for `images`; `starlight` is the
/// `starlight` CLI used to convert. Returns the images' descriptions
/// (merged into `images.json`, which keeps images built earlier).
pub fn build(
    corpus: &Corpus,
    images: &[&BenchImage],
    starlight: &Path,
) -> Result<Vec<CorpusImage>> {
    corpus.build(&[])?;
    let root = corpus.root().to_path_buf();
    let rootfs_v2 = corpus.ensure_rootfs_v2()?;
    corpus.build_custom_layer(BASE_LAYER_V2, |work| {
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", rootfs_v2.display()))
            .arg(work))
        .map(|_| ())
    })?;
    let apt_v1 = Apt::new(&root.join("apt"))?;
    let apt_v2 = Apt::with_sources(&root.join("apt-security"), true)?;

    let mut layouts = Vec::new();
    for image in images {
        for version in [Version::V1, Version::V2] {
            let (base_name, base_rootfs, apt) = match version {
                Version::V1 => (BASE_LAYER, corpus.base_rootfs(), &apt_v1),
                Version::V2 => (BASE_LAYER_V2, rootfs_v2.clone(), &apt_v2),
            };
            let mut blobs = vec![(base_name.to_string(), corpus.load(base_name)?)];
            let mut below: Vec<&str> = Vec::new();
            for (k, packages) in image.packages.iter().enumerate() {
                let name = format!("{}-pkgs{k}-{}", image.name, version.tag());
                let blob = corpus.build_custom_layer(&name, |work| {
                    corpus.install_packages(apt, &base_rootfs, &below, packages, &name, work)
                })?;
                blobs.push((name, blob));
                below.extend_from_slice(packages);
            }
            if !matches!(image.deps, Deps::None) {
                let name = format!("{}-deps-{}", image.name, version.tag());
                let blob = corpus
                    .build_custom_layer(&name, |work| install_deps(image.deps, version, work))?;
                blobs.push((name, blob));
            }
            let name = format!("{}-app-{}", image.name, version.tag());
            let blob = corpus.build_custom_layer(&name, |work| {
                for (path, mode, content) in app_files(image, version) {
                    write_app_file(work, &path, mode, &content)?;
                }
                Ok(())
            })?;
            blobs.push((name, blob));
            let layout = root
                .join("oci")
                .join(format!("{}-{}", image.name, version.tag()));
            write_layout(corpus, &layout, version.tag(), &blobs)?;
            layouts.push((image.name, version, layout, blobs));
        }
    }

    let place = Place::host();
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let registry = Registry::start(
        &root.join(REGISTRY_DIR),
        &addr,
        &addr,
        &place,
        &root.join("registry-run"),
    )?;
    let mut built = Vec::new();
    for (name, version, layout, blobs) in &layouts {
        let tag = version.tag();
        if !registry.has(name, tag) {
            tracing::info!(image = name, tag, "pushing");
            push_layout(layout, tag, &format!("{addr}/{name}:{tag}"))?;
        }
        let sl_tag = format!("{tag}-starlight");
        if !registry.has(name, &sl_tag) {
            tracing::info!(image = name, tag = sl_tag, "converting");
            run(Command::new(starlight)
                .args(["convert", "--plain-http", "--no-progress"])
                .arg(format!("{addr}/{name}:{tag}"))
                .arg(format!("{addr}/{name}:{sl_tag}")))
            .with_context(|| format!("converting {name}:{tag}"))?;
        }
        let size: u64 = blobs.iter().map(|(_, b)| b.size).sum();
        let files: u64 = blobs.iter().map(|(_, b)| b.stats.files).sum();
        match built
            .iter_mut()
            .find(|i: &&mut CorpusImage| i.name == *name)
        {
            Some(entry) => {
                entry.sizes[1] = size;
                entry.layers[1] = blobs.len();
                entry.files[1] = files;
            }
            None => built.push(CorpusImage {
                name: name.to_string(),
                ready: READY.to_string(),
                v1: "v1".into(),
                v2: "v2".into(),
                v1_starlight: "v1-starlight".into(),
                v2_starlight: "v2-starlight".into(),
                sizes: [size, 0],
                layers: [blobs.len(), 0],
                files: [files, 0],
            }),
        }
    }
    registry.stop();

    let mut all = load_corpus(&root).unwrap_or_default();
    for image in &built {
        all.retain(|i| i.name != image.name);
        all.push(image.clone());
    }
    fs::write(
        root.join(IMAGES_JSON),
        serde_json::to_string_pretty(&all)? + "\n",
    )?;
    Ok(built)
}

/// Installs the PyPI or npm dependencies of `version` into `work`.
fn install_deps(deps: Deps, version: Version, work: &Path) -> Result<()> {
    let pick = |v1: &'static [&'static str], v2: &'static [&'static str]| match version {
        Version::V1 => v1,
        Version::V2 => v2,
    };
    match deps {
        Deps::None => Ok(()),
        Deps::Pip(v1, v2) => {
            let target = work.join("usr/local/lib/python3.11/dist-packages");
            fs::create_dir_all(&target)?;
            run(Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-compile"])
                .args(["--disable-pip-version-check", "--only-binary=:all:"])
                .args(["--python-version", "3.11", "--implementation", "cp"])
                .args(["--platform", "manylinux2014_x86_64", "--target"])
                .arg(&target)
                .args(pick(v1, v2)))
            .context("pip install (needs python3-pip and PyPI)")?;
            Ok(())
        }
        Deps::Npm(v1, v2) => {
            let app = work.join("app");
            fs::create_dir_all(&app)?;
            run(Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--omit=dev",
                    "--prefix",
                ])
                .arg(&app)
                .args(pick(v1, v2)))
            .context("npm install (needs npm and the npm registry)")?;
            Ok(())
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an OCI image layout at `dir` with one image tagged `tag`.
fn write_layout(
    corpus: &Corpus,
    dir: &Path,
    tag: &str,
    blobs: &[(String, LayerBlob)],
) -> Result<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for (name, blob) in blobs {
        let hex = blob
            .digest
            .strip_prefix("sha256:")
            .context("layer digest without sha256:")?;
        let dest = blob_dir.join(hex);
        if !dest.exists() {
            let src = corpus.blob_path(name);
            if fs::hard_link(&src, &dest).is_err() {
                fs::copy(&src, &dest).with_context(|| format!("copying {}", src.display()))?;
            }
        }
    }
    let config = json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8"
            ],
            "Entrypoint": [ENTRYPOINT],
            "WorkingDir": "/"
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": blobs.iter().map(|(_, b)| b.diff_id.clone()).collect::<Vec<_>>()
        },
        "history": blobs.iter().map(|(name, _)| json!({"created_by": format!("starlight-bench layer {name}")})).collect::<Vec<_>>()
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_hex = sha256_hex(&config_bytes);
    fs::write(blob_dir.join(&config_hex), &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_hex}"),
            "size": config_bytes.len()
        },
        "layers": blobs.iter().map(|(_, b)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": b.digest,
            "size": b.size
        })).collect::<Vec<_>>()
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_hex = sha256_hex(&manifest_bytes);
    fs::write(blob_dir.join(&manifest_hex), &manifest_bytes)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// The `starlight` binary next to this executable, or on PATH.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Fails unless `bin` can be run.
pub fn require_binary(bin: &Path, hint: &str) -> Result<()> {
    let ok = Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!("{} is not runnable ({hint})", bin.display());
    }
    Ok(())
}
