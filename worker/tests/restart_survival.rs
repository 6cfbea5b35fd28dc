//! Issue 13, item 2: running containers survive a crash of starlightd.
//!
//! With the real `starlightd run` binary, a real `docker-registry`, the
//! proxy over QUIC and a private containerd. This test plays systemd: it
//! owns the notify socket and sets `FDSTORE` (as `FileDescriptorStoreMax=`
//! makes systemd do), so starlightd stores each image mount's `/dev/fuse`
//! fd there (`FDSTORE=1`, `FDNAME=<image hex>.<session state>`). A process
//! with its working directory in the image's mount and a file held open
//! keeps running while starlightd is killed with SIGKILL and started again
//! with the stored fds (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`); it
//! then reads the held file and every file it never opened, with exact
//! bytes and no ENOTCONN, EIO or ESTALE. Then the same through a graceful
//! restart (`<state>/keep-mounts`, SIGTERM), and a stop without the marker
//! unmounts within a second while a process sits in the mount.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(dead_code)] // helpers shared in shape with crash_safety.rs

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod harness;
use harness::*;

/// One datagram from the notify socket and the fds it carried.
fn recv_notify(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 64];
    // SAFETY: plain data, filled by recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Some((text, fds))
}

/// The test's fd store: name → fd.
type FdStore = BTreeMap<String, OwnedFd>;

/// Takes every message on `sock` until `until` says stop or `within`
/// passes; FDSTORE messages go to `store`. Whether `until` was met.
fn drain(
    sock: &UnixDatagram,
    store: &mut FdStore,
    within: Duration,
    until: &dyn Fn(&str, &FdStore) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some((text, mut fds)) = recv_notify(sock) else {
            continue;
        };
        if text.starts_with("FDSTORE=1\n") {
            let name = text.split("FDNAME=").nth(1).unwrap().trim().to_owned();
            assert_eq!(fds.len(), 1, "{text}");
            store.insert(name, fds.pop().unwrap());
        }
        if until(&text, store) {
            return true;
        }
    }
    false
}

/// Starts `starlightd run` as systemd would: notify socket, `FDSTORE`, and
/// the stored fds from fd 3 with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`
/// (a shell sets `LISTEN_PID=$$` and execs the daemon, keeping its pid).
fn start_as_systemd(
    setup: &Setup,
    proxy: std::net::SocketAddr,
    notify: &UnixDatagram,
    notify_path: &Path,
    store: &mut FdStore,
    log_name: &str,
) -> Daemon {
    let config = setup.config(proxy);
    let log = setup.dir.join(log_name);
    let out = std::fs::File::create(&log).unwrap();
    let names: Vec<String> = store.keys().cloned().collect();
    let raw: Vec<i32> = store.values().map(|fd| fd.as_raw_fd()).collect();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_starlightd"))
        .arg(&config)
        .env("NOTIFY_SOCKET", notify_path)
        .env("FDSTORE", "64")
        .env("RUST_LOG", "info,polyfuse=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if !raw.is_empty() {
        command
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        // SAFETY: only dup2 (async-signal-safe) between fork and exec. The
        // sources are moved above the targets first, so no target
        // overwrites a source not yet placed.
        unsafe {
            command.pre_exec(move || {
                let mut high = Vec::with_capacity(raw.len());
                for &fd in &raw {
                    let h = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, &h) in high.iter().enumerate() {
                    if libc::dup2(h, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().unwrap();
    let d = Daemon {
        child,
        state: setup.state.clone(),
        api: setup.dir.join("run/api.sock"),
        log,
    };
    let ready = drain(notify, store, Duration::from_secs(60), &|t, _| {
        t == "READY=1"
    });
    assert!(ready, "no READY=1 within 60 s:\n{}", d.log_text());
    d
}

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
    let notify_path = world.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut store = FdStore::new();

    let proxy = world.proxy(None);
    let mut daemon = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "first.log",
    );
    world.wait_for_snapshotter();
    let report = daemon.pull(&world.rt, &b_ref, true);
    assert_eq!(report.complete, Some(true), "{report:?}");
    let kept = drain(&notify, &mut store, Duration::from_secs(10), &|_, s| {
        !s.is_empty()
    });
    assert!(kept, "no FDSTORE message:\n{}", daemon.log_text());
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
        starlight_worker_mounts_has(&mount),
        "the mount stays while the fd store holds its fd"
    );
    drop(proxy);
    let started = Instant::now();
    let proxy = world.proxy(None);
    let daemon2 = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "second.log",
    );
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
    assert!(
        starlight_worker_mounts_has(&mount),
        "kept across the restart"
    );
    assert!(
        !state.join("keep-mounts").exists(),
        "the marker is used once"
    );
    let daemon3 = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "third.log",
    );
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
    assert!(!starlight_worker_mounts_has(&mount), "a stop unmounts");
    let _ = user.kill();
    let _ = user.wait();
    drop(store);
}

/// A process in the mount: cwd inside, a file held open, waiting for a go.
fn user_of(mount: &Path) -> Child {
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0/app\" || exit 9; exec 5<b-small-00.bin || exit 8; echo opened; read _go; cat <&5 | sha256sum; sha256sum b-large-3.bin")
        .arg(mount)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = shell.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        assert_eq!(Read::read(&mut out, &mut byte).unwrap(), 1);
        line.push(byte[0] as char);
    }
    assert_eq!(line, "opened\n");
    shell
}

fn finish_user(shell: &mut Child, b: &Files) {
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut sums = String::new();
    shell
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut sums)
        .unwrap();
    let status = shell.wait().unwrap();
    let mut err = String::new();
    shell
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
    let want = format!(
        "{}  -\n{}  b-large-3.bin\n",
        hex::encode(Sha256::digest(&b["app/b-small-00.bin"])),
        hex::encode(Sha256::digest(&b["app/b-large-3.bin"]))
    );
    assert_eq!(sums, want);
}

fn sigterm_and_wait(d: &mut Daemon) {
    // SAFETY: kill with the pid of a child we spawned.
    unsafe { libc::kill(d.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn starlight_worker_mounts_has(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// A foreground `ctr run` of `image` with the host directory `ctl` at
/// `/ctl`: the child and a channel of its stdout lines.
fn run_container(
    world: &World,
    image: &str,
    id: &str,
    ctl: &Path,
    script: &str,
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new("timeout")
        .args(["300", "ctr", "--address"])
        .arg(&world.ctrd.socket)
        .args([
            "--namespace",
            &world.namespace,
            "run",
            "--snapshotter",
            "starlight",
        ])
        .arg("--mount")
        .arg(format!(
            "type=bind,src={},dst=/ctl,options=rbind:rw",
            ctl.display()
        ))
        .args([image, id, "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The runnable image whose bundle is cut: busybox, a small file and a
/// held one (first in the bundle), then large incompressible ones.
fn arriving_image() -> Files {
    let mut c = Files::new();
    c.insert("app/a-small.bin".into(), serve_support::noise(300, 3000));
    c.insert("app/b-held.bin".into(), serve_support::noise(301, 100_000));
    for i in 0..12u64 {
        c.insert(
            format!("app/c-large-{i:02}.bin"),
            serve_support::noise(310 + i, 1 << 20),
        );
    }
    c
}

/// Issue 13, item 2: a container started from an image whose bundle is
/// still arriving (the proxy paced to 600 kB/s) keeps running across
/// `kill -9` of starlightd; the next starlightd (given the fd store's fds)
/// resumes the pull on its own, naming the verified contents as held, and
/// the container's later reads of files it had not opened yet (and of the
/// one it held open) return exact bytes, no ENOTCONN, EIO or ESTALE.
#[test]
#[ignore = "needs root: containerd, runc, FUSE mounts"]
fn a_container_on_an_image_still_arriving_survives_kill9_and_the_pull_resumes() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let c = arriving_image();
    let c_ref = push_runnable(&world.reg, "survive/arriving", &c);
    let setup = world.setup(world.dir.path().join("state"));
    let notify_path = world.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut store = FdStore::new();
    let paced = world.proxy(Some(600_000));
    let mut daemon = start_as_systemd(
        &setup,
        paced.addr,
        &notify,
        &notify_path,
        &mut store,
        "first.log",
    );
    world.wait_for_snapshotter();
    let report = daemon.pull(&world.rt, &c_ref, false);
    assert_eq!(
        report.complete, None,
        "answered at registration: {report:?}"
    );

    let ctl = world.dir.path().join("ctl");
    std::fs::create_dir(&ctl).unwrap();
    let script = "sha256sum /app/a-small.bin || exit 9; exec 5</app/b-held.bin || exit 8; \
                  echo started; while [ ! -e /ctl/go ]; do sleep 0.1 || exit 6; done; \
                  cat <&5 | sha256sum; for f in /app/c-large-*.bin; do sha256sum \"$f\" || exit 7; done; \
                  echo finished";
    let id = support::containerd::unique_name("arriving");
    let (mut ctr, lines) = run_container(&world, &c_ref, &id, &ctl, script);
    let first = lines.recv_timeout(Duration::from_secs(120)).unwrap();
    assert!(
        first.starts_with(&hex::encode(Sha256::digest(&c["app/a-small.bin"]))),
        "{first}"
    );
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(60)).unwrap(),
        "started"
    );

    // The crash, while the bundle is still arriving.
    let info = find(&daemon.images(&world.rt), &c_ref).clone();
    assert!(
        !info.complete && info.contents_held < info.contents,
        "the bundle must still be arriving at the kill: {info:?}"
    );
    println!(
        "killed with {} of {} contents held",
        info.contents_held, info.contents
    );
    let kept = drain(&notify, &mut store, Duration::from_secs(10), &|_, s| {
        !s.is_empty()
    });
    assert!(kept, "no FDSTORE message:\n{}", daemon.log_text());
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    drop(paced);
    let proxy = world.proxy(None);
    let daemon2 = start_as_systemd(
        &setup,
        proxy.addr,
        &notify,
        &notify_path,
        &mut store,
        "second.log",
    );
    std::fs::write(ctl.join("go"), b"").unwrap();

    let mut got = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(120)) {
        got.push(line);
    }
    let status = ctr.wait().unwrap();
    let mut err = String::new();
    ctr.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let log = daemon2.log_text();
    assert!(status.success(), "{status}: {err}\n{got:?}\n{log}");
    assert_eq!(
        got.last().map(String::as_str),
        Some("finished"),
        "{got:?} {err}"
    );
    assert!(got[0].starts_with(&hex::encode(Sha256::digest(&c["app/b-held.bin"]))));
    for (i, l) in got[1..got.len() - 1].iter().enumerate() {
        let path = format!("app/c-large-{i:02}.bin");
        let want = format!("{}  /{path}", hex::encode(Sha256::digest(&c[&path])));
        assert_eq!(l, &want);
    }
    assert_eq!(got.len(), 14, "{got:?}");
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    let held: usize = log
        .lines()
        .find(|l| l.contains("resuming a partly present image"))
        .and_then(|l| l.split("held=").nth(1))
        .and_then(|h| h.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resumed pull in:\n{log}"));
    assert!(
        held >= info.contents_held && held > 0,
        "held {held}, {info:?}"
    );
    assert!(
        log.contains("resumed the pull cut short by the last stop"),
        "{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !find(&daemon2.images(&world.rt), &c_ref).complete {
        assert!(
            Instant::now() < deadline,
            "never complete:\n{}",
            daemon2.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("resumed with {held} contents named held; the container read every file");
    world.wait_for_snapshotter();
    world.ctrd.ctr_ok(&["containers", "rm", &id]);
    drop(store);
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

    let t = Instant::now();
    let new = setup
        .try_start_with(proxy.addr, "new.log", &["--take-over"])
        .unwrap_or_else(|e| panic!("the new daemon did not start: {e}\n{}", old.log_text()));
    println!(
        "taken over, the new starlightd ready after {:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = old.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the old daemon did not exit:\n{}",
            old.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}:\n{}", old.log_text());
    assert!(old
        .log_text()
        .contains("handed the mounts over to a new starlightd"));
    let log = new.log_text();
    assert!(
        log.contains("mount connections handed over by the running starlightd"),
        "{log}"
    );
    assert!(
        log.contains("serving the connection kept across the restart"),
        "{log}"
    );
    assert!(starlight_worker_mounts_has(&mount), "the mount stays");

    finish_user(&mut user, &b);
    let got = read_all(&mount, &b);
    assert!(got.values().all(Result::is_ok), "{got:?}");
    assert!(find(&new.images(&world.rt), &b_ref).complete);

    // The new daemon is the one serving: a stop unmounts.
    let mut new = new;
    sigterm_and_wait(&mut new);
    assert!(!starlight_worker_mounts_has(&mount), "a stop unmounts");
    let err = match setup.try_start_with(proxy.addr, "nobody.log", &["--take-over"]) {
        Ok(_) => panic!("--take-over started with no daemon to take over from"),
        Err(e) => e,
    };
    assert!(
        err.contains("taking the mounts over from the running starlightd"),
        "{err}"
    );
}
