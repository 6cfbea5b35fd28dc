//! Local users on the worker host (issue 12): a real `starlightd run`, and
//! child processes running as the user `nobody` (uid/gid 65534, via
//! `CommandExt::uid/gid`). The content store, the image database and both
//! sockets must be unreadable and unusable for them, while root still
//! works; the peer-credential check must refuse them even when a socket's
//! mode lets them connect; with `api_group`, the group's members get in.
//!
//! The state directory starts as an older version left it (open
//! directories, a world-readable content) and starlightd closes it at start.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use starlight_worker::api::{call, Request, Response};

#[path = "support/peer.rs"]
mod peer;
use peer::NOBODY;

/// A line that is no request, sent to a stream socket as `uid`/`gid`.
fn connect_as(uid: u32, gid: u32, socket: &Path) -> (i32, String) {
    peer::connect_as(uid, gid, socket, libc::SOCK_STREAM, b"not a request\n")
}

/// A `starlightd run` child, stopped on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        // SAFETY: kill with our child's pid and a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "starlightd did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Starts starlightd on `dir`'s state and sockets (with `extra` settings)
/// and waits for READY=1.
fn start(dir: &Path, extra: &str) -> Daemon {
    let config = dir.join("starlightd.toml");
    std::fs::write(
        &config,
        format!(
            "proxy = \"127.0.0.1:9\"\nca_file = \"{d}/ca.pem\"\ntoken = \"t\"\nstate_dir = \"{d}/state\"\n\
             containerd_socket = \"{d}/no-containerd.sock\"\nnamespace = \"local-users-test\"\n\
             snapshotter_socket = \"{d}/run/snapshotter.sock\"\napi_socket = \"{d}/run/api.sock\"\n{extra}",
            d = dir.display(),
        ),
    )
    .unwrap();
    set_mode(&config, 0o600);
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.join("starlightd.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_starlightd"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log };
    let mut buf = [0u8; 64];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 ({e}):\n{}", daemon.log()));
    assert_eq!(&buf[..n], b"READY=1");
    daemon
}

/// Runs `program args` as uid `uid`, gid `gid` (no supplementary groups).
fn run_as(uid: u32, gid: u32, program: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `cat`/`ls` of `path` as nobody must fail with "Permission denied".
fn denied_to_nobody(program: &str, path: &Path) {
    let out = run_as(NOBODY, NOBODY, program, &[path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "{program} {} as nobody: {} {stderr}",
        path.display(),
        out.status
    );
}

fn root_lists_images(rt: &tokio::runtime::Runtime, api: &Path) {
    let images = rt.block_on(call(api, &Request::Images, |_| {})).unwrap();
    assert_eq!(images, Response::Images(vec![]));
}

#[test]
#[ignore = "needs root: runs starlightd and child processes as the user nobody"]
fn other_users_cannot_read_the_state_or_use_the_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Everyone may walk to the state directory and the sockets: only
    // their own modes and starlightd's checks keep nobody out.
    set_mode(dir, 0o755);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    set_mode(&dir.join("run"), 0o755);

    // The state as an older starlightd left it: open directories and a
    // world-readable content that is private (0600) inside its image.
    let secret = b"root's private key, mode 0600 inside the image\n";
    let hex = hex::encode(Sha256::digest(secret));
    let state = dir.join("state");
    let fanout = state.join("content/sha256").join(&hex[..2]);
    std::fs::create_dir_all(&fanout).unwrap();
    let content = fanout.join(&hex);
    std::fs::write(&content, secret).unwrap();
    set_mode(&content, 0o444);
    for d in [
        state.clone(),
        state.join("content"),
        state.join("content/sha256"),
        fanout.clone(),
    ] {
        set_mode(&d, 0o755);
    }
    // Before: nobody reads it.
    let before = run_as(NOBODY, NOBODY, "cat", &[content.as_os_str()]);
    assert!(before.status.success(), "the setup must be open at first");

    let daemon = start(dir, "");
    let (api, snap) = (dir.join("run/api.sock"), dir.join("run/snapshotter.sock"));
    for d in [
        &state,
        &state.join("content"),
        &fanout,
        &state.join("images"),
    ] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&api), 0o600);
    assert_eq!(mode(&snap), 0o600);

    // The store, the image database and the state directory: unreadable.
    denied_to_nobody("cat", &content);
    denied_to_nobody("ls", &state);
    denied_to_nobody("ls", &state.join("images"));
    denied_to_nobody("cat", &state.join("images/CURRENT"));
    // The sockets: connect is refused by their mode.
    for sock in [&api, &snap] {
        let (errno, text) = connect_as(NOBODY, NOBODY, sock);
        assert_eq!(errno, libc::EACCES, "{}: {text}", sock.display());
    }
    // Root still works.
    let rt = tokio::runtime::Runtime::new().unwrap();
    root_lists_images(&rt, &api);
    // The planted content is named by no image record: recovery deleted it
    // at start (it is never served, whatever its mode was).
    assert!(
        !content.exists(),
        "an unvouched content was kept: {}",
        content.display()
    );

    // Sockets left open (a umask, a race): the peer check still refuses.
    set_mode(&api, 0o666);
    set_mode(&snap, 0o666);
    let (errno, text) = connect_as(NOBODY, NOBODY, &api);
    assert!(
        errno == 0 && text.contains("permission denied: uid 65534") && text.contains("api_group"),
        "{errno}: {text}"
    );
    // The snapshotter closes the connection without a word.
    let (errno, text) = connect_as(NOBODY, NOBODY, &snap);
    assert_eq!((errno, text.as_str()), (0, ""));
    let log = daemon.log();
    assert!(
        log.contains("API socket: refused") && log.contains("snapshotter socket: refused"),
        "{log}"
    );
    root_lists_images(&rt, &api);
    daemon.stop();

    // With api_group, the group's members get in (socket 0660, that group),
    // others do not.
    let daemon = start(dir, &format!("api_group = \"{NOBODY}\"\n"));
    let meta = std::fs::metadata(&api).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, NOBODY));
    let (errno, text) = connect_as(NOBODY, NOBODY, &api);
    // Past the check: the line is not a request.
    assert!(
        errno == 0 && text.contains("bad request"),
        "{errno}: {text}"
    );
    let (errno, text) = connect_as(NOBODY, 1, &api);
    assert_eq!(
        errno,
        libc::EACCES,
        "a user outside the group connects: {text}"
    );
    set_mode(&api, 0o666);
    let (_, text) = connect_as(NOBODY, 1, &api);
    assert!(text.contains("nor in group 65534"), "{text}");
    root_lists_images(&rt, &api);
    // The snapshotter stays root's.
    assert_eq!(mode(&snap), 0o600);
    daemon.stop();
}

/// `starlightd --help` sends the token to the configuration file, a token
/// file or the environment, not the command line (visible in /proc).
#[test]
fn the_help_says_where_the_token_belongs() {
    let out = Command::new(env!("CARGO_BIN_EXE_starlightd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--token-file", "STARLIGHT_TOKEN", "/proc", "--api-group"] {
        assert!(help.contains(needle), "no {needle:?} in:\n{help}");
    }
}
