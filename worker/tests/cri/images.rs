//! The test images: busybox-static in one layer (with the mount points
//! runc wants) and `/etc/greeting` in a second, pushed in the Starlight
//! format or as plain gzip layers; and a pause image for pod sandboxes.

use crate::common::layout::{digest_of, Layer, OciLayout};
use crate::common::registry::TestRegistry;
use crate::serve_support::starlight_layer;
use crate::tar_support::{tar_of, TarEntry};
use starlight_proxy::format::Compression;

/// The greeting the app's second layer holds.
pub const GREETING: &str = "hello from the starlight layer";

/// An image pushed to the test registry.
pub struct Pushed {
    /// `REGISTRY/name:v1`.
    pub reference: String,
    /// The repository name.
    pub repo: String,
    /// The layer blobs' digests, bottom first.
    pub layer_digests: Vec<String>,
    /// The layers' chain ids, bottom first.
    pub chain_ids: Vec<String>,
}

fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut entries: Vec<TarEntry<'_>> = vec![
        ("bin", None, None, 0o755),
        ("bin/busybox", Some(&busybox), None, 0o755),
        ("tmp", None, None, 0o1777),
        ("etc", None, None, 0o755),
        ("dev", None, None, 0o755),
        ("proc", None, None, 0o755),
        ("sys", None, None, 0o755),
    ];
    for applet in ["bin/sh", "bin/cat", "bin/echo", "bin/sleep"] {
        entries.push((applet, None, Some("busybox"), 0o777));
    }
    tar_of(&entries)
}

fn greeting_tar() -> Vec<u8> {
    let greeting = format!("{GREETING}\n");
    tar_of(&[
        ("etc", None, None, 0o755),
        ("etc/greeting", Some(greeting.as_bytes()), None, 0o644),
    ])
}

/// Chain ids of layers with these diff ids, as containerd computes them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => digest_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn push_layers(reg: &TestRegistry, repo: &str, layers: &[Layer], cmd: &[&str]) -> Pushed {
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", layers, cmd);
    layout.tag("v1", &desc);
    let reference = format!("{}/{repo}:v1", reg.addr);
    layout.push("v1", &reference, false);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    Pushed {
        reference,
        repo: repo.to_string(),
        layer_digests: layers.iter().map(|l| digest_of(&l.blob)).collect(),
        chain_ids: chain_ids(&diff_ids),
    }
}

/// The two-layer app image as `REGISTRY/repo:v1`, in the Starlight format
/// (`starlight`) or with plain gzip layers.
pub fn push_app(reg: &TestRegistry, repo: &str, starlight: bool) -> Pushed {
    let tars = [busybox_tar(), greeting_tar()];
    let layers: Vec<Layer> = tars
        .iter()
        .map(|t| {
            if starlight {
                starlight_layer(t, Compression::Gzip)
            } else {
                Layer::gzip(t)
            }
        })
        .collect();
    push_layers(reg, repo, &layers, &["/bin/sh"])
}

/// A pause image (plain gzip: pulling it exercises the fallback) as
/// `REGISTRY/pause:v1`: busybox sleeping.
pub fn push_pause(reg: &TestRegistry) -> Pushed {
    push_layers(
        reg,
        "pause",
        &[Layer::gzip(&busybox_tar())],
        &["/bin/sleep", "86400"],
    )
}

/// The registry's access-log lines after byte `from` that are full GETs
/// (status 200) of one of `image`'s layer blobs.
pub fn full_blob_gets(registry_log: &str, from: usize, image: &Pushed) -> Vec<String> {
    registry_log
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            image.layer_digests.iter().any(|d| {
                l.contains(&format!("\"GET /v2/{}/blobs/{d} ", image.repo)) && l.contains("\" 200 ")
            })
        })
        .map(str::to_string)
        .collect()
}
