//! Builds OCI image layouts (blobs, manifests, indexes) in a temporary
//! directory and pushes them to a registry with `skopeo copy`.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A layer blob with its media type and the digest of its uncompressed tar.
#[derive(Clone)]
pub struct Layer {
    /// The blob as stored in the registry.
    pub blob: Vec<u8>,
    /// OCI media type.
    pub media_type: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// A `tar+gzip` layer (gzip level 6, like Docker) from an uncompressed tar.
    pub fn gzip(tar: &[u8]) -> Layer {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(tar).expect("gzip");
        Layer {
            blob: enc.finish().expect("gzip"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: digest_of(tar),
        }
    }

    /// A `tar+zstd` layer from an uncompressed tar.
    pub fn zstd(tar: &[u8]) -> Layer {
        Layer {
            blob: zstd::encode_all(tar, 3).expect("zstd"),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            diff_id: digest_of(tar),
        }
    }

    /// An uncompressed `tar` layer.
    pub fn plain(tar: &[u8]) -> Layer {
        Layer {
            blob: tar.to_vec(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            diff_id: digest_of(tar),
        }
    }
}

/// An OCI image layout under construction.
pub struct OciLayout {
    dir: tempfile::TempDir,
    index: Vec<Value>,
}

impl Default for OciLayout {
    fn default() -> Self {
        Self::new()
    }
}

impl OciLayout {
    /// An empty layout.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("mkdir");
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        OciLayout { dir, index: vec![] }
    }

    /// The layout's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stores a blob; returns its descriptor (without media type).
    pub fn add_blob(&self, data: &[u8]) -> (String, u64) {
        let digest = digest_of(data);
        let path = self
            .dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(path, data).expect("write blob");
        (digest, data.len() as u64)
    }

    /// Adds an image manifest for `os/arch` running `cmd`; returns its
    /// descriptor (with platform). Not tagged: see [`OciLayout::tag`].
    pub fn add_image(&self, os: &str, arch: &str, layers: &[Layer], cmd: &[&str]) -> Value {
        // A Starlight layer commits to its table of contents, as
        // `starlight convert` writes it.
        let tocs: Vec<Option<String>> = layers
            .iter()
            .map(|l| starlight_proxy::format::commit::toc_annotation_of_blob(&l.blob))
            .collect();
        self.add_image_annotated(os, arch, layers, cmd, &tocs)
    }

    /// [`OciLayout::add_image`] with the given table-of-contents annotation
    /// on each layer (`None`: no annotation).
    pub fn add_image_annotated(
        &self,
        os: &str,
        arch: &str,
        layers: &[Layer],
        cmd: &[&str],
        tocs: &[Option<String>],
    ) -> Value {
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Cmd": cmd, "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| json!({"created_by": "starlight test"})).collect::<Vec<_>>(),
        });
        let config_raw = serde_json::to_vec(&config).expect("json");
        let (cd, cs) = self.add_blob(&config_raw);
        let mut descs = vec![];
        for (l, toc) in layers.iter().zip(tocs) {
            let (d, s) = self.add_blob(&l.blob);
            let mut desc = json!({"mediaType": l.media_type, "digest": d, "size": s});
            if let Some(toc) = toc {
                desc["annotations"] =
                    json!({ starlight_proxy::convert::TOC_DIGEST_ANNOTATION: toc });
            }
            descs.push(desc);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": descs,
        });
        let raw = serde_json::to_vec(&manifest).expect("json");
        let (md, ms) = self.add_blob(&raw);
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"os": os, "architecture": arch},
        })
    }

    /// Adds an image index over `manifests`; returns its descriptor.
    pub fn add_index(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let raw = serde_json::to_vec(&index).expect("json");
        let (d, s) = self.add_blob(&raw);
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    }

    /// Tags a manifest or index descriptor in `index.json`.
    pub fn tag(&mut self, tag: &str, descriptor: &Value) {
        let mut d = descriptor.clone();
        if let Some(obj) = d.as_object_mut() {
            obj.remove("platform");
            obj.insert(
                "annotations".into(),
                json!({"org.opencontainers.image.ref.name": tag}),
            );
        }
        self.index.push(d);
        let index = json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }

    /// Pushes tag `tag` of this layout to `dest` (`HOST:PORT/name:tag`),
    /// every platform, with skopeo. `docker_format` converts manifests to
    /// Docker schema 2.
    pub fn push(&self, tag: &str, dest: &str, docker_format: bool) {
        self.push_as(tag, dest, docker_format, None);
    }

    /// [`OciLayout::push`], presenting `creds` (`USER:PASSWORD`) to the
    /// registry when given.
    pub fn push_as(&self, tag: &str, dest: &str, docker_format: bool, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--retry-times",
            "2",
        ]);
        if let Some(creds) = creds {
            cmd.args(["--dest-creds", creds]);
        }
        if docker_format {
            cmd.args(["--format", "v2s2"]);
        } else {
            cmd.arg("--preserve-digests");
        }
        cmd.arg(format!("oci:{}:{tag}", self.dir.path().display()));
        cmd.arg(format!("docker://{dest}"));
        let out = cmd.output().expect("run skopeo (apt install skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
