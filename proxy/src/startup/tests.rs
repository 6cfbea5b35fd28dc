//! Start-up analysis on real ELF files of this machine, and on crafted trees.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::db::TocEntry;
use crate::format::{ContentRef, Entry, EntryKind};

/// A tree of entries with their contents (read from memory).
#[derive(Default)]
struct Image {
    toc: Vec<TocEntry>,
    contents: HashMap<String, Content>,
}

/// A file's bytes: in memory, or a host file read when asked for.
enum Content {
    Memory(Vec<u8>),
    Host(std::path::PathBuf),
}

impl Image {
    fn dir(&mut self, path: &str) {
        self.toc.push(TocEntry {
            entry: Entry::new(path, EntryKind::Dir, 0o755),
            layer: 0,
        });
    }
    fn link(&mut self, path: &str, target: &str) {
        self.toc.push(TocEntry {
            entry: Entry {
                link: Some(target.to_string()),
                ..Entry::new(path, EntryKind::Symlink, 0o777)
            },
            layer: 0,
        });
    }
    fn file(&mut self, path: &str, bytes: Vec<u8>) {
        let size = bytes.len() as u64;
        self.entry(path, size, Content::Memory(bytes));
    }
    fn entry(&mut self, path: &str, size: u64, content: Content) {
        self.toc.push(TocEntry {
            entry: Entry {
                size,
                content: (size > 0).then_some(ContentRef {
                    sha256: [0; 32],
                    offset: 0,
                    compressed_len: 0,
                }),
                ..Entry::new(path, EntryKind::File, 0o755)
            },
            layer: 1,
        });
        self.contents.insert(path.to_string(), content);
    }
    /// Copies host directory `dir` (not recursive; links kept as links).
    fn host_dir(&mut self, dir: &str) {
        self.dir(dir.trim_start_matches('/'));
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.to_str().unwrap().trim_start_matches('/').to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                self.link(&rel, target.to_str().unwrap());
            } else if meta.is_file() && meta.permissions().mode() & 0o444 != 0 {
                self.entry(&rel, meta.len(), Content::Host(path.clone()));
            }
        }
    }
    fn host_link_or_dir(&mut self, path: &str) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            self.link(path.trim_start_matches('/'), target.to_str().unwrap());
        } else {
            self.host_dir(path);
        }
    }
    async fn analyze(&self, config: serde_json::Value) -> StartupOrder {
        let mut toc = self.toc.clone();
        toc.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        toc.dedup_by(|a, b| a.entry.path == b.entry.path);
        analyze(
            config.to_string().as_bytes(),
            &toc,
            self,
            StartupLimits::default(),
        )
        .await
        .unwrap()
    }
}

impl ContentReader for Image {
    fn read<'a>(
        &'a self,
        entry: &'a TocEntry,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<u8>, StartupError>> {
        Box::pin(async move {
            let absent = || StartupError::Read {
                path: entry.entry.path.clone(),
                reason: "absent".into(),
            };
            let mut bytes = match self.contents.get(&entry.entry.path).ok_or_else(absent)? {
                Content::Memory(b) => b.clone(),
                Content::Host(p) => std::fs::read(p).map_err(|_| absent())?,
            };
            bytes.truncate(bytes.len().min(limit as usize));
            Ok(bytes)
        })
    }
}

fn config(entrypoint: &[&str], cmd: &[&str], env: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": "/app" },
        "rootfs": { "type": "layers", "diff_ids": [] }
    })
}

/// The host's root as an image: the loader's configuration, the library
/// directories and the programs directory, with the top-level links of a
/// merged-/usr system.
fn host_image() -> Image {
    let mut img = Image::default();
    img.dir("");
    img.dir("etc");
    img.dir("usr");
    for d in [
        "/bin",
        "/lib",
        "/lib64",
        "/usr/lib64",
        "/usr/lib",
        "/usr/bin",
    ] {
        if Path::new(d).exists() {
            img.host_link_or_dir(d);
        }
    }
    for d in ["/usr/lib/x86_64-linux-gnu", "/etc/ld.so.conf.d"] {
        if Path::new(d).is_dir() {
            img.host_dir(d);
        }
    }
    for f in [
        "/etc/ld.so.conf",
        "/etc/ld.so.cache",
        "/etc/passwd",
        "/etc/group",
    ] {
        if let Ok(bytes) = std::fs::read(f) {
            img.file(f.trim_start_matches('/'), bytes);
        }
    }
    img
}

/// What `ldd` says `program` loads, as real paths relative to the root.
fn ldd(program: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap();
    assert!(out.status.success(), "ldd {program} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| {
                std::fs::canonicalize(path)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string()
            })
        })
        .collect()
}

#[tokio::test]
async fn a_dynamic_executable_brings_its_interpreter_and_every_library_ldd_lists() {
    let img = host_image();
    for program in ["ls", "tar", "cp"] {
        let host = format!("/usr/bin/{program}");
        if !Path::new(&host).exists() {
            continue;
        }
        let order = img.analyze(config(&[], &[program], &[])).await;
        let real = std::fs::canonicalize(&host).unwrap();
        let real = real.to_str().unwrap().trim_start_matches('/');
        assert_eq!(
            order.executable.as_deref(),
            Some(format!("usr/bin/{program}").as_str())
        );
        assert_eq!(order.paths[0], real, "{order:?}");
        let expected = ldd(&host);
        assert!(!expected.is_empty());
        for lib in &expected {
            assert!(
                order.paths.contains(lib),
                "{program}: {lib} missing from {:?}",
                order.paths
            );
        }
        // The executable and what it loads come before the common files.
        let last_lib = expected
            .iter()
            .map(|l| order.paths.iter().position(|p| p == l).unwrap())
            .max()
            .unwrap();
        let cache = order
            .paths
            .iter()
            .position(|p| p == "etc/ld.so.cache")
            .unwrap();
        assert!(last_lib < cache, "{:?}", order.paths);
        assert!(order.unresolved.is_empty(), "{:?}", order.unresolved);
    }
}

#[tokio::test]
async fn a_script_brings_its_interpreter_through_env_and_the_path() {
    let mut img = host_image();
    img.dir("app");
    img.file("app/run.sh", b"#!/usr/bin/env bash\necho hi\n".to_vec());
    img.file("app/data.txt", b"x".to_vec());
    let order = img
        .analyze(config(
            &["/app/run.sh"],
            &["data.txt"],
            &["PATH=/usr/bin:/bin"],
        ))
        .await;
    let pos = |p: &str| order.paths.iter().position(|x| x == p);
    assert_eq!(order.paths[0], "app/run.sh");
    let env = pos("usr/bin/env").expect("env");
    let bash = pos("usr/bin/bash").expect("bash");
    let libc = pos("usr/lib/x86_64-linux-gnu/libc.so.6").expect("libc");
    let data = pos("app/data.txt").expect("the argument file");
    assert!(env < bash && env < libc && bash < data, "{:?}", order.paths);
}

#[tokio::test]
async fn a_shell_command_string_names_the_program_that_runs() {
    let img = host_image();
    let order = img
        .analyze(config(
            &["/bin/sh", "-c"],
            &["exec FOO=1 tar --version"],
            &[],
        ))
        .await;
    assert!(
        order.paths.iter().any(|p| p == "usr/bin/tar"),
        "{:?}",
        order.paths
    );
    assert!(order
        .paths
        .iter()
        .any(|p| p.ends_with("/dash") || p.ends_with("/sh")));
}

#[tokio::test]
async fn runpath_with_origin_is_searched_before_the_system_directories() {
    // A copy of a host library under a private directory wins when the
    // executable's RUNPATH says $ORIGIN/../lib; the crafted ELF is a host
    // executable whose dynamic section we cannot edit, so the search
    // function is checked on its own.
    let mut img = host_image();
    img.dir("opt");
    img.dir("opt/app");
    img.dir("opt/app/bin");
    img.dir("opt/app/lib");
    img.file("opt/app/lib/libc.so.6", b"\x7fELF".to_vec());
    let tree = Tree::new(&img.toc);
    let found = search::find_library(
        &tree,
        "libc.so.6",
        "opt/app/bin",
        &[],
        &[],
        &["$ORIGIN/../lib".to_string()],
        &["/usr/lib/x86_64-linux-gnu".to_string()],
    );
    assert_eq!(found.as_deref(), Some("opt/app/lib/libc.so.6"));
    let found = search::find_library(
        &tree,
        "libc.so.6",
        "opt/app/bin",
        &[],
        &[],
        &[],
        &["/usr/lib/x86_64-linux-gnu".to_string()],
    );
    assert_eq!(found.as_deref(), Some("usr/lib/x86_64-linux-gnu/libc.so.6"));
}

#[test]
fn links_are_followed_inside_the_root_and_loops_end() {
    let mut img = Image::default();
    img.dir("");
    img.dir("a");
    img.file("a/f", b"1".to_vec());
    img.link("up", "../../../a/f");
    img.link("abs", "/a/f");
    img.link("rel", "a/f");
    img.link("loop1", "loop2");
    img.link("loop2", "loop1");
    img.link("dirlink", "a");
    let tree = Tree::new(&img.toc);
    for p in ["up", "abs", "rel", "dirlink/f", "/a/./f", "a/../a/f"] {
        assert_eq!(
            tree.resolve(p).map(|(r, _)| r),
            Some("a/f".to_string()),
            "{p}"
        );
    }
    assert!(tree.resolve("loop1").is_none());
    assert!(tree.resolve("a/missing").is_none());
}

#[test]
fn shebang_lines_parse_as_the_kernel_reads_them() {
    let s = elf::shebang(b"#!/usr/bin/env  python3 -u\nprint()").unwrap();
    assert_eq!(s.program, "/usr/bin/env");
    assert_eq!(s.argument.as_deref(), Some("python3 -u"));
    let s = elf::shebang(b"#! /bin/sh\n").unwrap();
    assert_eq!(s.program, "/bin/sh");
    assert_eq!(s.argument, None);
    assert!(elf::shebang(b"#!\n").is_none());
    assert!(elf::shebang(b"\x7fELF").is_none());
}

#[test]
fn a_bad_configuration_is_an_error() {
    assert!(matches!(
        command_of(b"{not json"),
        Err(StartupError::Config(_))
    ));
    let c = command_of(br#"{"config":null}"#).unwrap();
    assert!(c.argv.is_empty());
    assert_eq!(c.working_dir, "/");
}

#[tokio::test]
async fn the_read_budget_bounds_the_analysis() {
    let img = host_image();
    let mut toc = img.toc.clone();
    toc.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    toc.dedup_by(|a, b| a.entry.path == b.entry.path);
    let limits = StartupLimits {
        max_files: 2,
        ..StartupLimits::default()
    };
    let cfg = config(&[], &["ls"], &[]).to_string();
    let order = analyze(cfg.as_bytes(), &toc, &img, limits).await.unwrap();
    assert!(order.files_read <= 2, "{order:?}");
    assert_eq!(order.paths[0], "usr/bin/ls");
}

/// A Python application in a crafted tree on top of the host's programs:
/// a bash entrypoint runs `python3 /app/main.py`; the modules live in the
/// standard library and a site directory.
fn python_image() -> Image {
    let mut img = host_image();
    for d in [
        "app",
        "usr/local",
        "usr/local/bin",
        "usr/lib/python3.11",
        "usr/lib/python3.11/encodings",
        "usr/lib/python3.11/encodings/__pycache__",
        "usr/lib/python3.11/lib-dynload",
        "usr/local/lib",
        "usr/local/lib/python3.11",
        "usr/local/lib/python3.11/dist-packages",
        "usr/local/lib/python3.11/dist-packages/pkg",
        "usr/local/lib/python3.11/dist-packages/pkg/inner",
    ] {
        img.dir(d);
    }
    img.file(
        "usr/local/bin/entry",
        b"#!/bin/bash\nset -e\n# python3 /app/not-this.py\npython3 /app/main.py &\nwait-tcp 8080\necho READY\nwait\n".to_vec(),
    );
    img.file("usr/local/bin/wait-tcp", b"#!/bin/bash\nsleep 1\n".to_vec());
    img.file("app/main.py", b"\"\"\"Docs: import nothere\"\"\"\nimport os\nimport pkg\nfrom pkg import sub\n\ndef later():\n    import lazy\n".to_vec());
    img.file("app/lazy.py", b"x = 1\n".to_vec());
    let std = "usr/lib/python3.11";
    img.file(&format!("{std}/os.py"), b"import stat\n".to_vec());
    img.file(&format!("{std}/stat.py"), b"".to_vec());
    img.file(&format!("{std}/unused.py"), b"".to_vec());
    img.file(
        &format!("{std}/encodings/__init__.py"),
        b"from . import aliases\n".to_vec(),
    );
    img.file(
        &format!("{std}/encodings/__pycache__/__init__.cpython-311.pyc"),
        b"pyc".to_vec(),
    );
    img.file(&format!("{std}/encodings/aliases.py"), b"".to_vec());
    img.file(
        &format!("{std}/encodings/utf_8.py"),
        b"import codecs\n".to_vec(),
    );
    img.file(&format!("{std}/codecs.py"), b"".to_vec());
    let site = "usr/local/lib/python3.11/dist-packages";
    img.file(&format!("{site}/hook.pth"), b"import pthmod\n".to_vec());
    img.file(&format!("{site}/pthmod.py"), b"".to_vec());
    img.file(
        &format!("{site}/pkg/__init__.py"),
        b"from .inner import deep\nfrom . import _ext\nif TYPE_CHECKING:\n    import typing_only\n"
            .to_vec(),
    );
    img.file(&format!("{site}/pkg/sub.py"), b"".to_vec());
    img.file(&format!("{site}/pkg/inner/__init__.py"), b"".to_vec());
    img.file(
        &format!("{site}/pkg/inner/deep.py"),
        b"import json\n".to_vec(),
    );
    img.file(&format!("{site}/typing_only.py"), b"".to_vec());
    // An extension module: a copy of a host library (its own libraries follow).
    let ext = std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libz.so.1").unwrap();
    img.file(
        &format!("{site}/pkg/_ext.cpython-311-x86_64-linux-gnu.so"),
        std::fs::read(ext).unwrap(),
    );
    img
}

#[tokio::test]
async fn a_shell_entrypoint_running_python_brings_the_imported_modules_in_import_order() {
    if !Path::new("/usr/bin/python3.11").exists() || !Path::new("/usr/bin/bash").exists() {
        panic!("this test needs /usr/bin/python3.11 and /usr/bin/bash on the host");
    }
    let img = python_image();
    let order = img
        .analyze(config(&["/usr/local/bin/entry"], &[], &[]))
        .await;
    let at = |p: &str| {
        order
            .paths
            .iter()
            .position(|x| x == p)
            .unwrap_or_else(|| panic!("{p} not in the order: {:?}", order.paths))
    };
    let site = "usr/local/lib/python3.11/dist-packages";
    let chain = [
        "usr/local/bin/entry".to_string(),
        "usr/bin/bash".to_string(),
        "usr/bin/python3.11".to_string(),
        "usr/local/bin/wait-tcp".to_string(),
        "usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc".to_string(),
        "usr/lib/python3.11/encodings/aliases.py".to_string(),
        "usr/lib/python3.11/encodings/utf_8.py".to_string(),
        "usr/lib/python3.11/codecs.py".to_string(),
        format!("{site}/hook.pth"),
        format!("{site}/pthmod.py"),
        "app/main.py".to_string(),
        "usr/lib/python3.11/os.py".to_string(),
        "usr/lib/python3.11/stat.py".to_string(),
        format!("{site}/pkg/__init__.py"),
        format!("{site}/pkg/inner/__init__.py"),
        format!("{site}/pkg/inner/deep.py"),
        format!("{site}/pkg/_ext.cpython-311-x86_64-linux-gnu.so"),
        format!("{site}/pkg/sub.py"),
    ];
    let positions: Vec<usize> = chain.iter().map(|p| at(p)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {:?}",
        chain.iter().zip(&positions).collect::<Vec<_>>()
    );
    // The extension module's libraries follow it, before the next module.
    let libc = ldd("/usr/lib/x86_64-linux-gnu/libz.so.1");
    assert!(libc.iter().all(|l| order.paths.contains(l)), "{libc:?}");
    for absent in [
        "usr/lib/python3.11/encodings/__init__.py",
        "app/lazy.py",
        "usr/lib/python3.11/unused.py",
        &format!("{site}/typing_only.py"),
        "app/not-this.py",
    ] {
        assert!(!order.paths.iter().any(|p| p == absent), "{absent} ordered");
    }
    assert_eq!(order.executable.as_deref(), Some("usr/local/bin/entry"));
}

#[tokio::test]
async fn python_dash_m_and_a_python_shebang_start_the_same_analysis() {
    let img = python_image();
    let order = img
        .analyze(config(&["python3", "-u", "-m", "pkg.sub"], &[], &[]))
        .await;
    let site = "usr/local/lib/python3.11/dist-packages";
    for p in [
        format!("{site}/pkg/__init__.py"),
        format!("{site}/pkg/sub.py"),
        format!("{site}/pkg/inner/deep.py"),
    ] {
        assert!(order.paths.contains(&p), "{p}: {:?}", order.paths);
    }
    let mut img = python_image();
    img.file(
        "app/tool",
        b"#!/usr/bin/env python3\nimport pkg.inner.deep\n".to_vec(),
    );
    let order = img.analyze(config(&["/app/tool"], &[], &[])).await;
    assert!(order.paths.contains(&format!("{site}/pkg/inner/deep.py")));
    assert!(!order.paths.contains(&format!("{site}/pkg/sub.py")));
}

#[tokio::test]
async fn the_module_budget_bounds_a_python_analysis() {
    let mut img = python_image();
    // A chain of 200 modules, each importing the next.
    for i in 0..200 {
        img.file(
            &format!("app/m{i}.py"),
            format!("import m{}\n", i + 1).into_bytes(),
        );
    }
    let mut toc = img.toc.clone();
    toc.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    toc.dedup_by(|a, b| a.entry.path == b.entry.path);
    let limits = StartupLimits {
        max_depth: 20,
        ..StartupLimits::default()
    };
    let cfg = config(&["python3", "m0.py"], &[], &[]).to_string();
    let order = analyze(cfg.as_bytes(), &toc, &img, limits).await.unwrap();
    let chain = order
        .paths
        .iter()
        .filter(|p| p.starts_with("app/m"))
        .count();
    assert!(
        (10..=21).contains(&chain),
        "{chain} modules of the chain ordered"
    );
}

#[tokio::test]
async fn a_node_program_brings_what_it_requires_through_node_modules() {
    let mut img = host_image();
    for d in [
        "app",
        "app/lib",
        "app/node_modules",
        "app/node_modules/express",
        "app/node_modules/express/lib",
        "app/node_modules/unused",
        "usr/local",
        "usr/local/bin",
    ] {
        img.dir(d);
    }
    // `node` itself: any host ELF named so (its libraries are followed).
    img.file("usr/local/bin/node", std::fs::read("/usr/bin/ls").unwrap());
    img.file(
        "app/server.js",
        b"const express = require('express');\nconst h = require('./lib/helper');\nconst fs = require('fs');\n// require('unused')\n".to_vec(),
    );
    img.file(
        "app/lib/helper.js",
        b"module.exports = require('../config.json');\n".to_vec(),
    );
    img.file("app/config.json", b"{}".to_vec());
    img.file("app/package.json", br#"{"name":"app"}"#.to_vec());
    img.file(
        "app/node_modules/express/package.json",
        br#"{"name":"express","main":"lib/express"}"#.to_vec(),
    );
    img.file(
        "app/node_modules/express/lib/express.js",
        b"exports.router = require('./router');\n".to_vec(),
    );
    img.file(
        "app/node_modules/express/lib/router/index.js",
        b"1;\n".to_vec(),
    );
    img.dir("app/node_modules/express/lib/router");
    img.file("app/node_modules/unused/index.js", b"2;\n".to_vec());
    let order = img
        .analyze(config(
            &["node", "/app/server.js"],
            &[],
            &["PATH=/usr/local/bin:/usr/bin"],
        ))
        .await;
    let at = |p: &str| {
        order
            .paths
            .iter()
            .position(|x| x == p)
            .unwrap_or_else(|| panic!("{p} not in {:?}", order.paths))
    };
    let chain = [
        "usr/local/bin/node",
        "app/server.js",
        "app/package.json",
        "app/node_modules/express/package.json",
        "app/node_modules/express/lib/express.js",
        "app/node_modules/express/lib/router/index.js",
        "app/lib/helper.js",
        "app/config.json",
    ];
    let positions: Vec<usize> = chain.iter().map(|p| at(p)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        order.paths
    );
    assert!(!order.paths.iter().any(|p| p.contains("unused")));
}
