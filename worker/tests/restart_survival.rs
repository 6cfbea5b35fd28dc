//! Issue 13, item 2: running containers survive a crash, a graceful
//! restart and a hand-over of starlightd.
//!
//! With the real `starlightd run` binary, a real `docker-registry`, the
//! proxy over QUIC and a private containerd with runc. The tests play
//! systemd (`harness::restart::Systemd`): they own the notify socket and
//! pass the shipped unit's `Environment=` (with `FDSTORE`), so starlightd
//! stores each image mount's `/dev/fuse` fd there (`FDSTORE=1`,
//! `FDNAME=<image hex>.<session state>`), and a restart gets the stored
//! fds (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`). A process or a runc
//! container with its working directory in the image's mount, a file held
//! open and a read in flight keeps running while starlightd is killed
//! with SIGKILL, restarted gracefully (`<state>/keep-mounts`, SIGTERM) or
//! replaced by `starlightd run --take-over`; it then reads the held file
//! and every file it never opened, with exact bytes and no ENOTCONN, EIO
//! or ESTALE. A stop without the marker unmounts within a second while a
//! process or a container uses the mount. A peer that is not root is
//! refused by the hand-over socket. What systemd itself does (its store's
//! bookkeeping, `systemctl`) is not run here: PID 1 is not systemd.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(dead_code)] // helpers shared in shape with crash_safety.rs

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod harness;
use harness::restart::*;
use harness::*;
#[path = "support/peer.rs"]
mod peer;

#[test]
#[ignore = "needs root: containerd, FUSE mounts"]
fn a_process_in_a_mount_survives_kill9_and_a_kept_restart_and_a_stop_unmounts() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (_, b) = images();
    let b_ref = push(&world.reg, "survive/b", &b);
    let state = world.dir.path().join("state");
    let setup = world.setup(state.clone());
    let mut systemd = Systemd::new(world.dir.path());

    let proxy = world.proxy(None);
    let mut daemon = systemd.start(&setup, proxy.addr, "first.log");
    world.wait_for_snapshotter();
    let report = daemon.pull(&world.rt, &b_ref, true);
    assert_eq!(report.complete, Some(true), "{report:?}");
    systemd.wait_for_stored(1, &daemon);
    let store = &systemd.store;
    assert_eq!(store.len(), 1, "{:?}", store.keys().collect::<Vec<_>>());
    let mount = mount_of(find(&daemon.images(&world.rt), &b_ref));

    // "The container": cwd inside the mount, one file held open (fd 5)
    // and read once, the others never opened before the crash.
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0/app\" || exit 9; exec 5<b-small-00.bin || exit 8; head -c 100 <&5 >/dev/null; echo opened; read _go; cat <&5 | sha256sum; for f in b-large-*.bin b-small-0[1-9].bin b-small-1*.bin; do sha256sum \"$f\" || exit 7; done")
        .arg(&mount)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "opened\n");

    // The crash. The mount stays (the store holds its fd).
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    assert!(
        is_mounted(&mount),
        "the mount stays while the fd store holds its fd"
    );
    drop(proxy);
    let started = Instant::now();
    let proxy = world.proxy(None);
    let daemon2 = systemd.start(&setup, proxy.addr, "second.log");
    let log = daemon2.log_text();
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    println!("starlightd back after the kill in {:?}", started.elapsed());

    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut sums = String::new();
    out.read_to_string(&mut sums).unwrap();
    let status = shell.wait().unwrap();
    let mut err = String::new();
    shell
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}\n{}", daemon2.log_text());
    assert!(err.is_empty(), "{err}");
    let mut lines = sums.lines();
    let held = &b["app/b-small-00.bin"][100..];
    assert!(lines
        .next()
        .unwrap()
        .starts_with(&hex::encode(Sha256::digest(held))));
    let mut n = 0;
    for l in lines {
        let (sum, name) = l.split_once("  ").unwrap();
        let want = &b[&format!("app/{name}")];
        assert_eq!(sum, hex::encode(Sha256::digest(want)), "{name}");
        n += 1;
    }
    assert_eq!(n, b.len() - 2, "every other file of the image: {sums}");

    // A graceful restart that keeps the mounts: `<state>/keep-mounts`, then
    // SIGTERM; the next starlightd serves the same connection.
    let mut shell = user_of(&mount);
    std::fs::write(state.join("keep-mounts"), b"").unwrap();
    let mut daemon2 = daemon2;
    sigterm_and_wait(&mut daemon2);
    assert!(is_mounted(&mount), "kept across the restart");
    assert!(
        !state.join("keep-mounts").exists(),
        "the marker is used once"
    );
    let daemon3 = systemd.start(&setup, proxy.addr, "third.log");
    assert!(daemon3
        .log_text()
        .contains("serving the connection kept across the restart"));
    finish_user(&mut shell, &b);

    // A stop without the marker unmounts, quickly, while a process uses
    // the mount.
    let mut user = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0\" && exec sleep 30")
        .arg(mount.join("app"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut daemon3 = daemon3;
    let t = Instant::now();
    sigterm_and_wait(&mut daemon3);
    let took = t.elapsed();
    println!("stop with a process in the mount took {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!is_mounted(&mount), "a stop unmounts");
    systemd.release_store();
    let _ = user.kill();
    let _ = user.wait();
}

/// How starlightd goes down under the reader container.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    /// `kill -9`: a crash (`Restart=on-failure` starts it again).
    Kill9,
    /// `touch <state>/keep-mounts && systemctl restart starlightd`: the
    /// marker, then SIGTERM (`KillMode=process`); systemd keeps the fd
    /// store while a restart job is queued.
    Graceful,
}

/// What [`a_reader_survives`] leaves running (dropped in this order).
struct Survived {
    reader: Reader,
    daemon: Daemon,
    proxy: serve_support::Proxy,
    systemd: Systemd,
    image: String,
    world: World,
}

/// A container started from an image whose bundle is still arriving (the
/// proxy paced to 600 kB/s) keeps running while starlightd goes down as
/// `restart` says and comes back (as systemd starts it: the fd store's fds
/// passed in); the new starlightd resumes the pull on its own, naming the
/// verified contents as held, and the container's later reads of files it
/// had not opened yet (and of the one it held open) return exact bytes, no
/// ENOTCONN, EIO or ESTALE.
fn a_reader_survives(restart: Restart, repo: &str) -> Survived {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (image, files) = Reader::push(&world, repo);
    let state = world.dir.path().join("state");
    let setup = world.setup(state.clone());
    let mut systemd = Systemd::new(world.dir.path());
    let paced = world.proxy(Some(600_000));
    let mut daemon = systemd.start(&setup, paced.addr, "first.log");
    world.wait_for_snapshotter();
    let report = daemon.pull(&world.rt, &image, false);
    assert_eq!(
        report.complete, None,
        "answered at registration: {report:?}"
    );
    let mut reader = Reader::start(&world, &image, files);

    // The stop, while the bundle is still arriving.
    let info = find(&daemon.images(&world.rt), &image).clone();
    assert!(
        !info.complete && info.contents_held < info.contents,
        "the bundle must still be arriving at the stop: {info:?}"
    );
    println!(
        "stopped with {} of {} contents held",
        info.contents_held, info.contents
    );
    systemd.wait_for_stored(1, &daemon);
    std::thread::sleep(Duration::from_millis(200));
    reader.assert_in_flight();
    let t = Instant::now();
    match restart {
        Restart::Kill9 => {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        Restart::Graceful => {
            std::fs::write(state.join("keep-mounts"), b"").unwrap();
            sigterm_and_wait(&mut daemon);
            let log = daemon.log_text();
            assert!(log.contains("mounts kept for the next start"), "{log}");
            assert!(
                !state.join("keep-mounts").exists(),
                "the marker is used once"
            );
        }
    }
    println!("starlightd down after {:?}", t.elapsed());
    assert!(reader.running(), "the container outlives starlightd");
    assert!(
        is_mounted(Path::new(&info.mountpoint)),
        "the mount stays while the fd store holds its fd"
    );
    assert_eq!(systemd.store.len(), 1, "the fd store keeps the mount's fd");
    drop(paced);
    let proxy = world.proxy(None);
    let daemon = systemd.start(&setup, proxy.addr, "second.log");
    println!("starlightd back after {:?}", t.elapsed());

    reader.read_on(&|| daemon.log_text());
    assert!(reader.running(), "the container goes on");
    let log = daemon.log_text();
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    let held = resumed_held(&log);
    assert!(
        held >= info.contents_held && held > 0,
        "held {held}, {info:?}"
    );
    assert!(
        log.contains("resumed the pull cut short by the last stop"),
        "{log}"
    );
    wait_complete(&daemon, &world, &image);
    println!("resumed with {held} contents named held; the container read every file");
    Survived {
        reader,
        daemon,
        proxy,
        systemd,
        image,
        world,
    }
}

/// Issue 13, item 2: a container on an image still arriving keeps running
/// across `kill -9` of starlightd and reads every file afterwards.
#[test]
#[ignore = "needs root: containerd, runc, FUSE mounts"]
fn a_container_on_an_image_still_arriving_survives_kill9_and_the_pull_resumes() {
    let mut s = a_reader_survives(Restart::Kill9, "survive/arriving");
    s.reader.end();
    s.world.wait_for_snapshotter();
    s.world
        .ctrd
        .ctr_ok(&["containers", "rm", &s.reader.id.clone()]);
}

/// Issue 13, item 2: the same across a graceful restart through the
/// systemd unit (the marker and SIGTERM, the fd store kept and passed
/// back); then a stop without the marker (`systemctl stop`) unmounts the
/// image at once while the container still uses it (cwd and a file open
/// in the mount), in well under a second, and systemd's release of the fd
/// store ends the connection.
#[test]
#[ignore = "needs root: containerd, runc, FUSE mounts"]
fn a_container_on_an_image_still_arriving_survives_a_graceful_restart_and_a_stop_unmounts() {
    let mut s = a_reader_survives(Restart::Graceful, "survive/graceful");
    let mount = mount_of(find(&s.daemon.images(&s.world.rt), &s.image));
    assert!(s.reader.running(), "the container uses the mount");
    let t = Instant::now();
    sigterm_and_wait(&mut s.daemon);
    let took = t.elapsed();
    println!("stop with a container on the mount took {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    let log = s.daemon.log_text();
    assert!(
        log.contains("starlightd stopped") && !log.contains("mounts kept"),
        "{log}"
    );
    assert!(!is_mounted(&mount), "a stop unmounts");
    s.systemd.release_store();
    s.reader.kill(&s.world);
}

/// Issue 13, item 2, where there is no systemd (no fd store): starlightd A
/// serves an image; a process holds a file of it open with its working
/// directory in the mount. `starlightd run --take-over` (B) connects to
/// A's hand-over socket and receives every mount's `/dev/fuse` fd and
/// session state; A exits without unmounting; the process keeps reading
/// (the held file, and a file it never opened) and B serves the mount.
/// A `--take-over` with no daemon running fails, and changes nothing.
#[test]
#[ignore = "needs root: containerd, FUSE mounts"]
fn without_systemd_a_new_daemon_takes_the_mounts_over_through_the_socket() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (_, b) = images();
    let b_ref = push(&world.reg, "handover/b", &b);
    let state = world.dir.path().join("state");
    let setup = world.setup(state.clone());
    let proxy = world.proxy(None);
    let mut old = setup.start(proxy.addr, "old.log");
    world.wait_for_snapshotter();
    let report = old.pull(&world.rt, &b_ref, true);
    assert_eq!(report.complete, Some(true), "{report:?}");
    let mount = mount_of(find(&old.images(&world.rt), &b_ref));
    assert!(state.join("handover.sock").exists());
    let mut user = user_of(&mount);

    let new = take_over(&setup, &mut old, proxy.addr);
    let log = new.log_text();
    assert!(
        log.contains("mount connections handed over by the running starlightd"),
        "{log}"
    );
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    assert!(is_mounted(&mount), "the mount stays");

    finish_user(&mut user, &b);
    let got = read_all(&mount, &b);
    assert!(got.values().all(Result::is_ok), "{got:?}");
    assert!(find(&new.images(&world.rt), &b_ref).complete);

    // The new daemon is the one serving: a stop unmounts.
    let mut new = new;
    sigterm_and_wait(&mut new);
    assert!(!is_mounted(&mount), "a stop unmounts");
    let err = match setup.try_start_with(proxy.addr, "nobody.log", &["--take-over"]) {
        Ok(_) => panic!("--take-over started with no daemon to take over from"),
        Err(e) => e,
    };
    assert!(
        err.contains("taking the mounts over from the running starlightd"),
        "{err}"
    );
}

/// Issue 13, item 2, without systemd, with a runc container: `ctr run`
/// starts a container on an image whose bundle is still arriving, under
/// starlightd A; it holds a file open. First a peer that is not root
/// tries the hand-over socket: with the socket's modes as starlightd sets
/// them it cannot even connect; with the modes opened (as a umask or a
/// race could leave them) it connects, sends the hello, and A's peer check
/// (`SO_PEERCRED`) refuses it: no fd is sent, and A goes on serving the
/// container. Then `starlightd run --take-over` (B) takes the mounts; the
/// container's held file and its later reads of files it never opened
/// return exact bytes, and B finishes the pull.
#[test]
#[ignore = "needs root: containerd, runc, FUSE mounts, a child as nobody"]
fn a_container_keeps_its_files_across_a_take_over_that_refuses_other_users() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (image, files) = Reader::push(&world, "handover/arriving");
    let state = world.dir.path().join("state");
    let setup = world.setup(state.clone());
    let paced = world.proxy(Some(600_000));
    let mut old = setup.start(paced.addr, "old.log");
    world.wait_for_snapshotter();
    let report = old.pull(&world.rt, &image, false);
    assert_eq!(report.complete, None, "{report:?}");
    let mut reader = Reader::start(&world, &image, files);
    let info = find(&old.images(&world.rt), &image).clone();
    assert!(!info.complete, "still arriving at the hand-over: {info:?}");

    refuse_a_nobody_hand_over(&state, &mut old);
    reader.assert_in_flight();
    assert!(reader.running(), "the container goes on");
    assert!(is_mounted(Path::new(&info.mountpoint)));
    assert!(!find(&old.images(&world.rt), &image).mountpoint.is_empty());

    let proxy = world.proxy(None);
    let new = take_over(&setup, &mut old, proxy.addr);
    drop(paced);
    assert!(reader.running(), "the container outlives the old daemon");
    reader.read_on(&|| new.log_text());
    let log = new.log_text();
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    wait_complete(&new, &world, &image);
    reader.end();
    world.wait_for_snapshotter();
    world.ctrd.ctr_ok(&["containers", "rm", &reader.id.clone()]);
}

/// A hand-over asked for by `nobody`: refused by the socket's modes, then
/// (modes opened) by the peer check; `daemon` keeps serving and still
/// holds every mount. The modes are closed again after.
fn refuse_a_nobody_hand_over(state: &Path, daemon: &mut Daemon) {
    use std::os::unix::fs::PermissionsExt;
    let sock = state.join("handover.sock");
    let hello = b"starlight-handover 1";
    let (errno, got) = peer::connect_as(
        peer::NOBODY,
        peer::NOBODY,
        &sock,
        libc::SOCK_SEQPACKET,
        hello,
    );
    assert_eq!(errno, libc::EACCES, "nobody reached the socket: {got:?}");
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(state, 0o711);
    mode(&sock, 0o666);
    let (errno, got) = peer::connect_as(
        peer::NOBODY,
        peer::NOBODY,
        &sock,
        libc::SOCK_SEQPACKET,
        hello,
    );
    mode(&sock, 0o600);
    mode(state, 0o700);
    assert_eq!((errno, got.as_str()), (0, ""), "nobody was answered");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log_text()
        .contains("hand-over peer refused: uid 65534")
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon goes on"
    );
    assert!(!daemon.log_text().contains("handed the mounts over"));
}

/// Issue 13, item 1: `grace_secs` bounds the time a receive goes without
/// progress, not the life of one stream. With `grace_secs = 2` and the
/// proxy paced to 600 kB/s, the bundle takes about 20 s on one stream; a
/// container's read of the bundle's last file waits all that time and
/// gets exact bytes, and no open fails.
#[test]
#[ignore = "needs root: containerd, runc, FUSE mounts"]
fn grace_bounds_the_time_without_progress_not_the_life_of_a_stream() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let (image, files) = Reader::push(&world, "grace/slow");
    let setup = world.setup(world.dir.path().join("state"));
    let paced = world.proxy(Some(600_000));
    let daemon = setup.start(paced.addr, "slow.log");
    let config = std::fs::read_to_string(setup.dir.join("starlightd.toml")).unwrap();
    assert!(config.contains("grace_secs = 2\n"), "{config}");
    world.wait_for_snapshotter();
    let t = Instant::now();
    let report = daemon.pull(&world.rt, &image, false);
    assert_eq!(report.complete, None, "{report:?}");
    let mut reader = Reader::start(&world, &image, files);
    reader.read_on(&|| daemon.log_text());
    let took = t.elapsed();
    println!("the read of the last file waited {took:?} on one paced stream (grace 2 s)");
    assert!(took > Duration::from_secs(10), "not slow enough: {took:?}");
    let log = daemon.log_text();
    assert!(!log.contains("waiting opens get EIO"), "{log}");
    assert!(!log.contains("bundle resumed"), "one stream: {log}");
    wait_complete(&daemon, &world, &image);
    reader.end();
    world.ctrd.ctr_ok(&["containers", "rm", &reader.id.clone()]);
}

/// Starts a new starlightd with `--take-over` on `setup`'s state and checks
/// that `old` handed its mounts over and exited cleanly.
fn take_over(setup: &Setup, old: &mut Daemon, proxy: std::net::SocketAddr) -> Daemon {
    let t = Instant::now();
    let new = setup
        .try_start_with(proxy, "new.log", &["--take-over"])
        .unwrap_or_else(|e| panic!("the new daemon did not start: {e}\n{}", old.log_text()));
    println!(
        "taken over, the new starlightd ready after {:?}",
        t.elapsed()
    );
    let status = wait_exit(old);
    assert!(status.success(), "{status}:\n{}", old.log_text());
    assert!(old
        .log_text()
        .contains("handed the mounts over to a new starlightd"));
    new
}
