//! Issue 11's static order, end to end: an image nothing has ever run, whose
//! entrypoint is a dynamically linked executable (this machine's `tar`) in
//! an upper layer, with its interpreter and libraries in the base layer
//! behind hundreds of other files. Pushed to a real `docker-registry`,
//! indexed and served by the in-process proxy over QUIC: the bundle's first
//! payloads are the executable, its interpreter and every library `ldd`
//! lists; in layer order (an unordered bundle) they would come last.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;
mod serve_support;

use std::collections::HashSet;

use common::layout::OciLayout;
use common::registry::TestRegistry;
use serve_support::*;
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;

/// A tar of directories, symlinks and regular files, in the given order.
#[derive(Default)]
struct TarBuilder {
    b: Option<tar::Builder<Vec<u8>>>,
}

impl TarBuilder {
    fn builder(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.b.get_or_insert_with(|| tar::Builder::new(Vec::new()))
    }
    fn dir(&mut self, path: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        self.builder().append_data(&mut h, path, &[][..]).unwrap();
    }
    fn link(&mut self, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        self.builder().append_link(&mut h, path, target).unwrap();
    }
    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        self.builder().append_data(&mut h, path, data).unwrap();
    }
    fn finish(mut self) -> Vec<u8> {
        self.builder();
        self.b.take().unwrap().into_inner().unwrap()
    }
}

/// What `ldd` says `program` loads: (name in the image's library
/// directory, real host path).
fn ldd(program: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            let name = path.rsplit('/').next()?.to_string();
            path.starts_with('/').then(|| (name, path.to_string()))
        })
        .collect()
}

const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_run_image_sends_its_executable_interpreter_and_libraries_first() {
    // RUST_LOG=info shows the proxy's "static start-up order" line.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let program = "/usr/bin/tar";
    let libs = ldd(program);
    assert!(libs.len() >= 3, "ldd {program}: {libs:?}");
    let reg = TestRegistry::start();

    // Base layer: fillers first (layer order would send them first), then
    // the loader's configuration and the libraries under their sonames.
    let mut base = TarBuilder::default();
    for d in [
        "aaa",
        "etc",
        "etc/ld.so.conf.d",
        "usr",
        "usr/lib",
        LIBDIR,
        "usr/lib64",
    ] {
        base.dir(d);
    }
    let mut fillers = Vec::new();
    for i in 0..300 {
        let data = noise(i, 2_000 + (i as usize % 7) * 500);
        base.file(&format!("aaa/filler-{i:03}"), &data, 0o644);
        fillers.push(sha(&data));
    }
    base.file(
        "etc/ld.so.conf",
        b"include /etc/ld.so.conf.d/*.conf\n",
        0o644,
    );
    base.file(
        "etc/ld.so.conf.d/x86_64-linux-gnu.conf",
        format!("# multiarch\n/{LIBDIR}\n").as_bytes(),
        0o644,
    );
    base.link("bin", "usr/bin");
    base.link("lib64", "usr/lib64");
    let mut needed = Vec::new();
    for (name, host) in &libs {
        let data = std::fs::read(std::fs::canonicalize(host).unwrap()).unwrap();
        base.file(&format!("{LIBDIR}/{name}"), &data, 0o755);
        needed.push(sha(&data));
        if host.starts_with("/lib64/") {
            base.link(
                &format!("usr/lib64/{name}"),
                &format!("../lib/x86_64-linux-gnu/{name}"),
            );
        }
    }
    // Upper layer: more fillers, then the entrypoint.
    let mut app = TarBuilder::default();
    app.dir("usr");
    app.dir("usr/bin");
    app.dir("aab");
    for i in 300..400 {
        let data = noise(i, 3_000);
        app.file(&format!("aab/filler-{i:03}"), &data, 0o644);
        fillers.push(sha(&data));
    }
    let exe = std::fs::read(program).unwrap();
    app.file("usr/bin/app", &exe, 0o755);

    let layers = [
        starlight_layer(&base.finish(), Compression::Gzip),
        starlight_layer(&app.finish(), Compression::Zstd),
    ];
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, &["app", "--version"]);
    layout.tag("v1", &desc);
    let image = format!("{}/static-order:v1", reg.addr);
    layout.push("v1", &image, false);

    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();
    let ordered = fetch(&client, proxy.addr, &request(&image, &[]))
        .await
        .unwrap();
    verify(&ordered).unwrap();
    let order: Vec<[u8; 32]> = ordered.header.payloads.iter().map(|p| p.sha256).collect();
    // + the two loader configuration files.
    assert_eq!(order.len(), 1 + libs.len() + fillers.len() + 2);

    // The executable first, then its interpreter and libraries, before any filler.
    assert_eq!(
        order[0],
        sha(&exe),
        "the entrypoint is not the first payload"
    );
    let head: HashSet<[u8; 32]> = order[1..=libs.len()].iter().copied().collect();
    let want: HashSet<[u8; 32]> = needed.iter().copied().collect();
    assert_eq!(
        head, want,
        "the libraries are not right after the executable"
    );

    // Layer order (what a never-traced image got before) puts them last.
    let mut unordered = request(&image, &[]);
    unordered.unordered = true;
    let plain = fetch(&client, proxy.addr, &unordered).await.unwrap();
    let plain_order: Vec<[u8; 32]> = plain.header.payloads.iter().map(|p| p.sha256).collect();
    let exe_at = plain_order.iter().position(|s| *s == sha(&exe)).unwrap();
    assert_eq!(
        exe_at,
        plain_order.len() - 1,
        "layer order sends the upper layer's app last"
    );
    println!(
        "static order: executable at 0 and {} libraries at 1..={} of {} payloads; layer order: executable at {exe_at}",
        libs.len(),
        libs.len(),
        order.len()
    );
}
