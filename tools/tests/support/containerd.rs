//! Runs a private `containerd` (as root) with its root, state, socket and
//! config in a temporary directory, and drives it with `ctr`.
//!
//! containerd 1.6 keeps runc's state under `/run/containerd/runc/<namespace>`
//! whatever `--root` and `--state` say, so every instance uses a namespace of
//! its own and callers give containers unique ids. Dropping the instance
//! unmounts whatever is still mounted below its directory, kills the daemon
//! and removes its files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether this process runs as root (containerd needs it).
pub fn is_root() -> bool {
    // `id -u` avoids a libc dependency for one syscall.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running private containerd.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace every `ctr` call of this instance uses.
    pub namespace: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call (for namespaces and container ids).
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

impl Containerd {
    /// Starts containerd and waits (at most 30 s) until it answers `ctr version`.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Containerd::start`], with `extra` appended to the config file
    /// (for example a `[proxy_plugins.NAME]` table).
    pub fn start_with(extra: &str) -> Self {
        Self::start_configured(extra, false)
    }

    /// Like [`Containerd::start_with`], with the CRI plugin enabled (its
    /// settings belong in `extra`). CRI works in the `k8s.io` namespace.
    pub fn start_with_cri(extra: &str) -> Self {
        let mut c = Self::start_configured(extra, true);
        c.namespace = "k8s.io".into();
        c
    }

    fn start_configured(extra: &str, cri: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("starlight-containerd.")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{cri}
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
{extra}
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
                opt = dir.path().join("opt").display(),
                cri = if cri {
                    ""
                } else {
                    "\n  \"io.containerd.grpc.v1.cri\","
                },
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start containerd (apt install containerd runc)");
        let mut c = Containerd {
            child,
            dir,
            socket,
            namespace: unique_name("starlight-e2e"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", c.log());
            }
            if c.socket.exists() && c.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr -a SOCKET -n NAMESPACE ARGS...` and returns its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        // Bounded: a wedged containerd fails the test instead of hanging CI.
        Command::new("timeout")
            .arg("120")
            .arg("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Waits (at most 60 s) until containerd reaches the proxy snapshotter
    /// `name`: a snapshotter socket that appeared after containerd started
    /// is only dialled again after gRPC's reconnect backoff.
    pub fn wait_for_snapshotter(&self, name: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = self.ctr(&["snapshots", "--snapshotter", name, "ls"]);
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "containerd never reached the snapshotter {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Like [`Containerd::ctr`], but panics (with ctr's stderr and the tail
    /// of containerd's log) unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "ctr {} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log (last lines, newest first):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pulls (and unpacks) `image` from a plain-HTTP registry.
    pub fn pull(&self, image: &str) {
        self.ctr_ok(&["images", "pull", "--plain-http", image]);
    }

    /// Runs `cmd` in a new container of `image` (`ctr run --rm`), waits for
    /// it and returns its stdout. Panics if it fails.
    pub fn run(&self, image: &str, cmd: &[&str]) -> String {
        let id = unique_name("c");
        let mut args = vec!["run", "--rm", image, id.as_str()];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    /// Mounts `image`'s root file system read-only (`ctr images mount`) on a
    /// new directory below the instance's directory; unmounted on drop of
    /// the returned guard.
    pub fn mount_image(&self, image: &str) -> ImageMount<'_> {
        let target = self.dir.path().join(unique_name("mnt"));
        std::fs::create_dir(&target).expect("mkdir mount target");
        let target_str = target.to_str().expect("utf-8 temp path").to_string();
        self.ctr_ok(&["images", "mount", image, &target_str]);
        ImageMount {
            containerd: self,
            target,
        }
    }

    /// Unmounts (lazily) every mount point below the instance's directory,
    /// deepest first.
    fn unmount_all(&self) {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let base = self.dir.path().to_string_lossy().into_owned();
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
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.unmount_all();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // runc's per-namespace state directory (empty once our containers
        // are gone); never touch other namespaces.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// An image mounted by [`Containerd::mount_image`].
pub struct ImageMount<'a> {
    containerd: &'a Containerd,
    target: PathBuf,
}

impl ImageMount<'_> {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for ImageMount<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.target.to_str() {
            let out = self.containerd.ctr(&["images", "unmount", "--rm", t]);
            if !out.status.success() {
                let _ = Command::new("umount").arg("-l").arg(&self.target).status();
            }
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}
