//! The harness shared by the crash-safety and restart-survival tests: a
//! real `starlightd` started on a state directory (`Setup`, `Daemon`), and
//! a world of a real registry, proxy and containerd with two images whose
//! files are read back through the mounts (`World`).
#![allow(dead_code, unused_imports, clippy::unwrap_used)] // shared by two test binaries

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::registry::TestRegistry;
use crate::serve_support;
use crate::serve_support::{noise, starlight_layer, Proxy};
use crate::support::containerd::{is_root, unique_name, Containerd};
use sha2::{Digest, Sha256};
use starlight_proxy::format::Compression;
use starlight_proxy::serve::ServeOptions;
use starlight_worker::api::{call, ImageInfo, PullReport, Request, Response};
use starlight_worker::meta::MetaDb;

pub mod restart;

/// A `starlightd run` child; SIGKILL on drop, and its mounts detached.
pub struct Daemon {
    pub child: Child,
    pub state: PathBuf,
    pub api: PathBuf,
    pub log: PathBuf,
}

/// Where one daemon's files go.
pub struct Setup {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub containerd_socket: PathBuf,
    pub namespace: String,
    /// Extra environment of the daemon.
    pub env: Vec<(&'static str, &'static str)>,
}

impl Setup {
    pub fn config(&self, proxy: std::net::SocketAddr) -> PathBuf {
        let config = self.dir.join("starlightd.toml");
        std::fs::write(
            &config,
            format!(
                "proxy = \"{proxy}\"\nca_file = \"{ca}\"\ntoken = \"{token}\"\nstate_dir = \"{state}\"\n\
                 grace_secs = 2\ncontainerd_socket = \"{ctrd}\"\nnamespace = \"{ns}\"\n\
                 snapshotter_socket = \"{d}/run/snapshotter.sock\"\napi_socket = \"{d}/run/api.sock\"\n",
                ca = self.dir.join("ca.pem").display(),
                token = serve_support::TOKEN,
                state = self.state.display(),
                ctrd = self.containerd_socket.display(),
                ns = self.namespace,
                d = self.dir.display(),
            ),
        )
        .unwrap();
        config
    }

    /// Starts `starlightd run`; `Ok` once it said READY=1, `Err` with its
    /// exit status and log if it exited first.
    pub fn try_start(&self, proxy: std::net::SocketAddr, log_name: &str) -> Result<Daemon, String> {
        self.try_start_with(proxy, log_name, &[])
    }

    /// [`Setup::try_start`] with `args` after `run`.
    pub fn try_start_with(
        &self,
        proxy: std::net::SocketAddr,
        log_name: &str,
        args: &[&str],
    ) -> Result<Daemon, String> {
        let config = self.config(proxy);
        let notify_path = self.dir.join(format!("{}.sock", unique_name("notify")));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = self.dir.join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starlightd"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info,polyfuse=warn")
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            state: self.state.clone(),
            api: self.dir.join("run/api.sock"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 64];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                assert_eq!(&buf[..n], b"READY=1");
                let _ = std::fs::remove_file(&notify_path);
                return Ok(d);
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                let _ = std::fs::remove_file(&notify_path);
                return Err(format!("{status}: {}", d.log_text()));
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 60 s:\n{}",
                d.log_text()
            );
        }
    }

    pub fn start(&self, proxy: std::net::SocketAddr, log_name: &str) -> Daemon {
        self.try_start(proxy, log_name)
            .unwrap_or_else(|e| panic!("starlightd did not start: {e}"))
    }
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, rt: &tokio::runtime::Runtime, req: Request) -> Response {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), call(&self.api, &req, |_| {})).await
        })
        .expect("API call timed out")
        .unwrap()
    }

    /// Pulls `image`; a registration refused because containerd's proxy
    /// plugin is still in gRPC's reconnect backoff (it dialled the
    /// snapshotter socket before the daemon served it) is tried again,
    /// for at most a minute.
    pub fn pull(&self, rt: &tokio::runtime::Runtime, image: &str, wait: bool) -> PullReport {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = Request::Pull {
                image: image.into(),
                from: vec![],
                wait,
                trace: false,
                unordered: false,
            };
            match self.call(rt, req) {
                Response::Pulled(r) => return r,
                Response::Error(e)
                    if e.contains("in containerd")
                        && e.contains("Unavailable")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => panic!("pull {image}: {other:?}\n{}", self.log_text()),
            }
        }
    }

    pub fn images(&self, rt: &tokio::runtime::Runtime) -> Vec<ImageInfo> {
        match self.call(rt, Request::Images) {
            Response::Images(i) => i,
            other => panic!("images: {other:?}"),
        }
    }

    /// `kill -9`: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.state);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

pub fn skip_reason() -> Option<&'static str> {
    if !is_root() {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

/// An image's files: path → bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Pushes an image of one layer holding `files`.
pub fn push(reg: &TestRegistry, repo: &str, files: &Files) -> String {
    let list: Vec<(String, Vec<u8>)> = files.iter().map(|(p, d)| (p.clone(), d.clone())).collect();
    let layer = starlight_layer(&serve_support::tar_of(&list, 1), Compression::Gzip);
    let mut layout = common::layout::OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/app/main"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/{repo}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

/// Pushes an image a container can run: busybox (`/bin/sh` and a few
/// applets, first in the layer so it arrives first) and `files`.
pub fn push_runnable(reg: &TestRegistry, repo: &str, files: &Files) -> String {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    for d in [
        "bin/", "etc/", "dev/", "proc/", "sys/", "tmp/", "ctl/", "app/",
    ] {
        add(d, tar::EntryType::Directory, &[], None, 0o755);
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        &busybox,
        None,
        0o755,
    );
    for applet in ["sh", "cat", "echo", "sleep", "sha256sum", "test", "["] {
        add(
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            &[],
            Some("busybox"),
            0o777,
        );
    }
    for (path, data) in files {
        add(path, tar::EntryType::Regular, data, None, 0o644);
    }
    let layer = starlight_layer(&b.into_inner().unwrap(), Compression::Gzip);
    let mut layout = common::layout::OciLayout::new();
    let desc = layout.add_image("linux", "amd64", &[layer], &["/bin/sh"]);
    layout.tag("v1", &desc);
    let reference = format!("{}/{repo}:v1", reg.addr);
    layout.push("v1", &reference, false);
    reference
}

/// Image A (pulled complete before the crash) and image B (cut by it):
/// B shares one file with A, has small files and large ones.
pub fn images() -> (Files, Files) {
    let shared = noise(1, 50_000);
    let mut a = Files::new();
    a.insert("app/shared.bin".into(), shared.clone());
    a.insert("app/a-small.txt".into(), b"image a\n".repeat(100));
    a.insert("app/a-large.bin".into(), noise(2, 1 << 20));
    let mut b = Files::new();
    b.insert("app/shared.bin".into(), shared);
    for i in 0..12u64 {
        b.insert(
            format!("app/b-small-{i:02}.bin"),
            noise(100 + i, 3000 + i as usize),
        );
    }
    for i in 0..4u64 {
        b.insert(format!("app/b-large-{i}.bin"), noise(200 + i, 2 << 20));
    }
    (a, b)
}

/// What reading every file of `files` through `mount` gave: for each path,
/// `Ok(true)` (exact bytes), or the read error. Panics on wrong bytes.
pub fn read_all(mount: &Path, files: &Files) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    for (path, want) in files {
        let full = mount.join(path);
        let got = std::fs::File::open(&full).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map(|_| v)
        });
        let r = match got {
            Ok(bytes) => {
                assert!(
                    bytes == *want,
                    "WRONG BYTES through the mount: {path} ({} bytes read, {} expected, sha256 {})",
                    bytes.len(),
                    want.len(),
                    hex::encode(Sha256::digest(&bytes))
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        out.insert(path.clone(), r);
    }
    out
}

pub fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn content_path(state: &Path, data: &[u8]) -> PathBuf {
    let hex = hex::encode(sha(data));
    state.join("content/sha256").join(&hex[..2]).join(hex)
}

/// The mount point of image `info`.
pub fn mount_of(info: &ImageInfo) -> PathBuf {
    PathBuf::from(&info.mountpoint)
}

pub fn find<'a>(images: &'a [ImageInfo], reference: &str) -> &'a ImageInfo {
    images
        .iter()
        .find(|i| i.name == reference)
        .unwrap_or_else(|| panic!("no image {reference} in {images:?}"))
}

/// The `content store recovered` line of a daemon's log, as numbers.
pub fn recovery_counts(log: &str) -> (usize, usize, usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains("content store recovered"))
        .unwrap_or_else(|| panic!("no recovery line in:\n{log}"));
    let field = |name: &str| -> usize {
        let start = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len()
            + 1;
        line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (
        field("vouched"),
        field("verified"),
        field("torn"),
        field("orphans"),
    )
}

/// Registry, proxy, containerd and a daemon setup, torn down on drop.
pub struct World {
    pub rt: tokio::runtime::Runtime,
    pub reg: TestRegistry,
    pub ctrd: Containerd,
    pub dir: tempfile::TempDir,
    pub namespace: String,
}

impl World {
    pub fn new() -> World {
        Self::build(None)
    }

    /// A world whose containerd runs its CRI plugin, with the settings
    /// `cri(registry address, world dir)` returns appended to its config.
    pub fn with_cri(cri: impl FnOnce(&str, &Path) -> String) -> World {
        Self::build(Some(Box::new(cri)))
    }

    #[allow(clippy::type_complexity)]
    fn build(cri: Option<Box<dyn FnOnce(&str, &Path) -> String + '_>>) -> World {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reg = {
            let _guard = rt.enter();
            TestRegistry::start()
        };
        let dir = tempfile::Builder::new()
            .prefix("starlight-crash.")
            .tempdir()
            .unwrap();
        let plugin = format!(
            "\n[proxy_plugins.starlight]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            dir.path().join("run/snapshotter.sock").display()
        );
        let (ctrd, namespace) = match cri {
            None => {
                let namespace = unique_name("crash");
                let mut ctrd = Containerd::start_with(&plugin);
                ctrd.namespace = namespace.clone();
                (ctrd, namespace)
            }
            Some(cri) => {
                let extra = format!("{plugin}{}", cri(&reg.addr, dir.path()));
                let ctrd = Containerd::start_with_cri(&extra);
                let namespace = ctrd.namespace.clone();
                (ctrd, namespace)
            }
        };
        World {
            rt,
            reg,
            ctrd,
            dir,
            namespace,
        }
    }

    pub fn proxy(&self, rate_limit: Option<u64>) -> Proxy {
        let _guard = self.rt.enter();
        let proxy = Proxy::start(
            &self.reg,
            ServeOptions {
                rate_limit,
                ..ServeOptions::default()
            },
        );
        std::fs::write(self.dir.path().join("ca.pem"), &proxy.cert_pem).unwrap();
        proxy
    }

    /// After a daemon restart containerd's proxy plugin reconnects with
    /// gRPC's backoff: waits (bounded) until a snapshotter call goes through.
    pub fn wait_for_snapshotter(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("timeout")
                .args(["20", "ctr", "--address"])
                .arg(&self.ctrd.socket)
                .args(["--namespace", &self.namespace])
                .args(["snapshots", "--snapshotter", "starlight", "ls"])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd never reconnected to the snapshotter: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn setup(&self, state: PathBuf) -> Setup {
        Setup {
            dir: self.dir.path().to_path_buf(),
            state,
            containerd_socket: self.ctrd.socket.clone(),
            namespace: self.namespace.clone(),
            env: vec![],
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}
