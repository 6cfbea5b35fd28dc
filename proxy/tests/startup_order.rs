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

/// Files of a layer: (path, content).
type Files = Vec<(String, Vec<u8>)>;

/// The files of a small Python installation: (path, content), unique
/// contents, modules in the order the test's import runs them.
fn python_files() -> (Files, Files) {
    let std = "usr/lib/python3.11";
    let site = "usr/local/lib/python3.11/dist-packages";
    let f = |p: String, s: &str| (p, s.as_bytes().to_vec());
    // The standard library (base layer), in import order.
    let stdlib = vec![
        f(
            format!("{std}/encodings/__init__.py"),
            "from . import aliases  # encodings\n",
        ),
        f(format!("{std}/encodings/aliases.py"), "aliases = {}\n"),
        f(
            format!("{std}/encodings/utf_8.py"),
            "import codecs  # utf_8\n",
        ),
        f(format!("{std}/codecs.py"), "# codecs\n"),
        f(format!("{std}/os.py"), "import stat  # os\n"),
        f(format!("{std}/stat.py"), "# stat\n"),
        f(
            format!("{std}/json/__init__.py"),
            "from .decoder import JSONDecoder\n",
        ),
        f(format!("{std}/json/decoder.py"), "import re  # decoder\n"),
        f(format!("{std}/re.py"), "# re\n"),
    ];
    // Third-party packages (their own layer), in import order.
    let packages = vec![
        f(format!("{site}/dataframe/__init__.py"), "from dataframe.core import frame\nfrom . import io\n\ndef later():\n    import dataframe.plotting\n"),
        f(format!("{site}/dataframe/core/__init__.py"), "# core\n"),
        f(format!("{site}/dataframe/core/frame.py"), "import json\n"),
        f(format!("{site}/dataframe/io.py"), "import os.path  # io\n"),
    ];
    (stdlib, packages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_run_python_script_sends_its_interpreter_and_imported_modules_first() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let python = "/usr/bin/python3.11";
    assert!(
        std::path::Path::new(python).exists(),
        "this test needs {python} (a real CPython interpreter) on the host"
    );
    let libs = ldd(python);
    let reg = TestRegistry::start();
    let (stdlib, packages) = python_files();

    // Base layer: fillers, the interpreter, its libraries, the standard library.
    let mut base = TarBuilder::default();
    for d in [
        "aaa",
        "etc",
        "usr",
        "usr/bin",
        "usr/lib",
        LIBDIR,
        "usr/lib64",
        "usr/lib/python3.11",
        "usr/lib/python3.11/encodings",
        "usr/lib/python3.11/json",
    ] {
        base.dir(d);
    }
    let mut fillers = Vec::new();
    for i in 0..200 {
        let data = noise(i, 2_000);
        base.file(&format!("aaa/filler-{i:03}"), &data, 0o644);
        fillers.push(sha(&data));
    }
    base.file("etc/ld.so.conf", format!("/{LIBDIR}\n").as_bytes(), 0o644);
    base.link("lib64", "usr/lib64");
    base.link("bin", "usr/bin");
    let mut needed_libs = Vec::new();
    for (name, host) in &libs {
        let data = std::fs::read(std::fs::canonicalize(host).unwrap()).unwrap();
        base.file(&format!("{LIBDIR}/{name}"), &data, 0o755);
        needed_libs.push(sha(&data));
        if host.starts_with("/lib64/") {
            base.link(
                &format!("usr/lib64/{name}"),
                &format!("../lib/x86_64-linux-gnu/{name}"),
            );
        }
    }
    let interpreter = std::fs::read(python).unwrap();
    base.file("usr/bin/python3.11", &interpreter, 0o755);
    base.link("usr/bin/python3", "python3.11");
    base.file("usr/lib/python3.11/unused.py", b"# never imported\n", 0o644);
    for (path, data) in &stdlib {
        base.file(path, data, 0o644);
    }

    // Packages layer: fillers, then the packages.
    let mut deps = TarBuilder::default();
    for d in [
        "aab",
        "usr/local",
        "usr/local/lib",
        "usr/local/lib/python3.11",
        "usr/local/lib/python3.11/dist-packages",
        "usr/local/lib/python3.11/dist-packages/dataframe",
        "usr/local/lib/python3.11/dist-packages/dataframe/core",
    ] {
        deps.dir(d);
    }
    for i in 200..300 {
        let data = noise(i, 2_500);
        deps.file(&format!("aab/filler-{i:03}"), &data, 0o644);
        fillers.push(sha(&data));
    }
    let plotting = b"# imported lazily, not at start\n";
    deps.file(
        "usr/local/lib/python3.11/dist-packages/dataframe/plotting.py",
        plotting,
        0o644,
    );
    for (path, data) in &packages {
        deps.file(path, data, 0o644);
    }

    // Upper layer: the application script, run through its `#!` line.
    let mut app = TarBuilder::default();
    app.dir("app");
    let script = b"#!/usr/bin/python3\nimport os\nimport dataframe\nprint('ready')\n";
    app.file("app/report.py", script, 0o755);

    let layers = [
        starlight_layer(&base.finish(), Compression::Gzip),
        starlight_layer(&deps.finish(), Compression::Zstd),
        starlight_layer(&app.finish(), Compression::Zstd),
    ];
    let mut layout = OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &layers, &["/app/report.py"]);
    layout.tag("v1", &desc);
    let image = format!("{}/static-python:v1", reg.addr);
    layout.push("v1", &image, false);

    let proxy = Proxy::start(&reg, ServeOptions::default());
    let client = proxy.client();
    let ordered = fetch(&client, proxy.addr, &request(&image, &[]))
        .await
        .unwrap();
    verify(&ordered).unwrap();
    let order: Vec<[u8; 32]> = ordered.header.payloads.iter().map(|p| p.sha256).collect();
    let at = |data: &[u8], what: &str| {
        order
            .iter()
            .position(|s| *s == sha(data))
            .unwrap_or_else(|| panic!("{what} is not in the bundle"))
    };

    // The script, its interpreter, then the interpreter's libraries.
    assert_eq!(order[0], sha(script), "the script is not the first payload");
    assert_eq!(order[1], sha(&interpreter), "the interpreter is not second");
    let head: HashSet<[u8; 32]> = order[2..2 + libs.len()].iter().copied().collect();
    let want: HashSet<[u8; 32]> = needed_libs.iter().copied().collect();
    assert_eq!(
        head, want,
        "the libraries are not right after the interpreter"
    );
    // Then every module, in the order the imports run, before any filler.
    let expected: Vec<(&String, &Vec<u8>)> = [
        "encodings/__init__.py",
        "encodings/aliases.py",
        "encodings/utf_8.py",
        "codecs.py",
        "os.py",
        "stat.py",
        "dataframe/__init__.py",
        "dataframe/core/__init__.py",
        "dataframe/core/frame.py",
        "json/__init__.py",
        "json/decoder.py",
        "re.py",
        "dataframe/io.py",
    ]
    .iter()
    .map(|tail| {
        stdlib
            .iter()
            .chain(&packages)
            .find(|(p, _)| p.ends_with(tail))
            .map(|(p, d)| (p, d))
            .unwrap()
    })
    .collect();
    let positions: Vec<usize> = expected.iter().map(|(p, d)| at(d, p)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "modules out of import order: {:?}",
        expected
            .iter()
            .map(|(p, _)| p)
            .zip(&positions)
            .collect::<Vec<_>>()
    );
    let first_filler = order.iter().position(|s| fillers.contains(s)).unwrap();
    let last_module = *positions.last().unwrap();
    assert!(
        last_module < first_filler,
        "a filler (at {first_filler}) comes before the last module (at {last_module})"
    );
    // Neither the lazily imported module nor the unused one is in the prefix.
    assert!(at(plotting, "plotting.py") > first_filler);
    assert!(at(b"# never imported\n", "unused.py") > first_filler);
    println!(
        "static order: script, interpreter, {} libraries, {} modules at ..={last_module}; first filler at {first_filler} of {}",
        libs.len(),
        expected.len(),
        order.len()
    );
}
