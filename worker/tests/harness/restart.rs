//! Restarts of a real `starlightd` with running users of its mounts: the
//! test playing systemd (notify socket, fd store, `LISTEN_FDS`), a stop by
//! SIGTERM, and containers (`ctr run`, runc) on an image whose bundle is
//! still arriving. Shared by the restart-survival tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{push_runnable, Daemon, Files, Setup, World};
use crate::serve_support;
use crate::support::containerd::unique_name;

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
pub type FdStore = BTreeMap<String, OwnedFd>;

/// The part of systemd a `Type=notify` unit with `FileDescriptorStoreMax=`
/// sees: the notify socket, the fd store (`FDSTORE=1` + `FDNAME=`, and
/// `FDSTOREREMOVE=1`), the unit's `Environment=`, and the stored fds
/// passed to the next start from fd 3 with `LISTEN_FDS`/`LISTEN_FDNAMES`/
/// `LISTEN_PID`. PID 1 here is not systemd, and `systemd --user` refuses
/// to start without it, so neither `systemd-run` nor a user manager can
/// host the daemon.
pub struct Systemd {
    pub notify: UnixDatagram,
    pub path: PathBuf,
    pub store: FdStore,
}

impl Systemd {
    /// A notify socket in `dir` and an empty store.
    pub fn new(dir: &Path) -> Systemd {
        let path = dir.join(format!("{}.sock", unique_name("systemd-notify")));
        let notify = UnixDatagram::bind(&path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Systemd {
            notify,
            path,
            store: FdStore::new(),
        }
    }

    /// Takes every message until `until` says stop or `within` passes;
    /// fd store messages update the store. Whether `until` was met.
    pub fn drain(&mut self, within: Duration, until: &dyn Fn(&str, &FdStore) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let Some((text, mut fds)) = recv_notify(&self.notify) else {
                continue;
            };
            let name = text
                .split("FDNAME=")
                .nth(1)
                .map(|n| n.lines().next().unwrap_or("").to_owned());
            if text.starts_with("FDSTORE=1\n") {
                assert_eq!(fds.len(), 1, "{text}");
                self.store.insert(name.unwrap(), fds.pop().unwrap());
            } else if text.starts_with("FDSTOREREMOVE=1\n") {
                self.store.remove(&name.unwrap());
            }
            if until(&text, &self.store) {
                return true;
            }
        }
        false
    }

    /// Waits (10 s at most) until the store holds `n` fds.
    pub fn wait_for_stored(&mut self, n: usize, daemon: &Daemon) {
        let kept = self.drain(Duration::from_secs(10), &|_, s| s.len() >= n);
        assert!(
            kept,
            "{} fds stored, {n} expected:\n{}",
            self.store.len(),
            daemon.log_text()
        );
    }

    /// What systemd does when the unit stops without a restart: the fd
    /// store is released (the default `FileDescriptorStorePreserve=`).
    pub fn release_store(&mut self) {
        self.store.clear();
    }

    /// Starts `starlightd run` as systemd would: notify socket, `FDSTORE`,
    /// and the stored fds from fd 3 with `LISTEN_FDS`/`LISTEN_FDNAMES`/
    /// `LISTEN_PID` (a shell sets `LISTEN_PID=$$` and execs the daemon,
    /// keeping its pid). Returns once it sent READY=1.
    pub fn start(&mut self, setup: &Setup, proxy: std::net::SocketAddr, log_name: &str) -> Daemon {
        let config = setup.config(proxy);
        let log = setup.dir.join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let names: Vec<String> = self.store.keys().cloned().collect();
        let raw: Vec<i32> = self.store.values().map(|fd| fd.as_raw_fd()).collect();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\" run")
            .arg(env!("CARGO_BIN_EXE_starlightd"))
            .arg(&config)
            .env("NOTIFY_SOCKET", &self.path)
            .envs(unit_environment())
            .env("RUST_LOG", "info,polyfuse=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if !raw.is_empty() {
            command
                .env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            // SAFETY: only fcntl and dup2 (async-signal-safe) between fork
            // and exec. The sources are moved above the targets first, so
            // no target overwrites a source not yet placed.
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
        let ready = self.drain(Duration::from_secs(60), &|t, _| t == "READY=1");
        assert!(ready, "no READY=1 within 60 s:\n{}", d.log_text());
        d
    }
}

/// The `Environment=` settings of the shipped unit, as systemd 252 (this
/// host's, and Debian 12's) passes them: it does not export `$FDSTORE`
/// itself (254+ does), so the fd store is used only if the unit sets it.
fn unit_environment() -> Vec<(String, String)> {
    let unit = include_str!("../../dist/starlightd.service");
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        env.iter().any(|(k, _)| k == "FDSTORE"),
        "the unit does not set FDSTORE: {env:?}"
    );
    env
}

/// SIGTERM (what `systemctl stop` and `restart` send with
/// `KillMode=process`), then waits for the exit (20 s at most).
pub fn sigterm_and_wait(d: &mut Daemon) {
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

/// Waits (20 s at most) for `d` to exit on its own; its exit status.
pub fn wait_exit(d: &mut Daemon) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `path` is a mount point in the test's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// A process in the mount of image B: cwd inside, a file held open,
/// waiting for a go.
pub fn user_of(mount: &Path) -> Child {
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

/// Lets a [`user_of`] process go on and checks what it read.
pub fn finish_user(shell: &mut Child, b: &Files) {
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

/// A foreground `ctr run` of `image` with the host directory `ctl` at
/// `/ctl`: the child and a channel of its stdout lines.
pub fn run_container(
    world: &World,
    image: &str,
    id: &str,
    ctl: &Path,
    script: &str,
) -> (Child, Receiver<String>) {
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

/// The runnable image whose bundle is still arriving: busybox, a small
/// file and a held one (first in the bundle), then large incompressible
/// ones.
pub fn arriving_image() -> Files {
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

/// The file the reader reads in the background from the start: the last
/// of the bundle, so its open waits in starlightd (in flight) at a stop.
const IN_FLIGHT: &str = "app/c-large-11.bin";

/// What the reader container does: hashes `a-small.bin`, holds
/// `b-held.bin` open, starts hashing [`IN_FLIGHT`] in the background (to
/// `/ctl/in-flight`), says `started`, waits for `/ctl/go`, then hashes the
/// held file and every large file it never opened, waits for the
/// background hash, says `finished`, and stays in `/app` with a file open
/// until `/ctl/end`.
const READER_SCRIPT: &str =
    "sha256sum /app/a-small.bin || exit 9; exec 5</app/b-held.bin || exit 8; \
     sha256sum /app/c-large-11.bin >/ctl/in-flight 2>&1 & \
     echo started; while [ ! -e /ctl/go ]; do sleep 0.1 || exit 6; done; \
     cat <&5 | sha256sum; for f in /app/c-large-*.bin; do sha256sum \"$f\" || exit 7; done; \
     wait $! || exit 3; echo finished; cd /app || exit 5; exec 6<a-small.bin; \
     while [ ! -e /ctl/end ]; do sleep 0.1 || exit 4; done";

/// A runc container on the image of [`arriving_image`] (pushed with
/// [`push_runnable`]), started by `ctr run`, running [`READER_SCRIPT`].
pub struct Reader {
    pub child: Child,
    pub lines: Receiver<String>,
    pub ctl: PathBuf,
    pub id: String,
    pub files: Files,
}

impl Reader {
    /// Pushes the image, and returns its reference with its files.
    pub fn push(world: &World, repo: &str) -> (String, Files) {
        let files = arriving_image();
        (push_runnable(&world.reg, repo, &files), files)
    }

    /// Starts the container on `image` and waits until it holds its file.
    pub fn start(world: &World, image: &str, files: Files) -> Reader {
        let ctl = world.dir.path().join(unique_name("ctl"));
        std::fs::create_dir(&ctl).unwrap();
        let id = unique_name("reader");
        let (child, lines) = run_container(world, image, &id, &ctl, READER_SCRIPT);
        let first = lines.recv_timeout(Duration::from_secs(120)).unwrap();
        assert!(
            first.starts_with(&hex::encode(Sha256::digest(&files["app/a-small.bin"]))),
            "{first}"
        );
        assert_eq!(
            lines.recv_timeout(Duration::from_secs(60)).unwrap(),
            "started"
        );
        Reader {
            child,
            lines,
            ctl,
            id,
            files,
        }
    }

    /// Lets it read on (`/ctl/go`) and checks every hash it printed up to
    /// `finished`: exact bytes, no error. `log` is shown on failure.
    pub fn read_on(&mut self, log: &dyn Fn() -> String) {
        std::fs::write(self.ctl.join("go"), b"").unwrap();
        let mut got = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) if line == "finished" => break,
                Ok(line) => got.push(line),
                Err(e) => {
                    let status = self.child.try_wait().unwrap();
                    let mut err = String::new();
                    if status.is_some() {
                        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                    }
                    panic!("{e} after {got:?}: {status:?} {err}\n{}", log());
                }
            }
        }
        let c = &self.files;
        let background = std::fs::read_to_string(self.ctl.join("in-flight")).unwrap();
        assert_eq!(
            background,
            format!(
                "{}  /{IN_FLIGHT}\n",
                hex::encode(Sha256::digest(&c[IN_FLIGHT]))
            ),
            "the read in flight at the stop"
        );
        assert_eq!(got.len(), 13, "{got:?}");
        assert!(got[0].starts_with(&hex::encode(Sha256::digest(&c["app/b-held.bin"]))));
        for (i, l) in got[1..].iter().enumerate() {
            let path = format!("app/c-large-{i:02}.bin");
            let want = format!("{}  /{path}", hex::encode(Sha256::digest(&c[&path])));
            assert_eq!(l, &want);
        }
    }

    /// Checks that the background read of [`IN_FLIGHT`] has not finished:
    /// its open or reads wait in starlightd.
    pub fn assert_in_flight(&self) {
        let out = std::fs::read_to_string(self.ctl.join("in-flight")).unwrap_or_default();
        assert!(out.is_empty(), "the background read ended early: {out}");
    }

    /// Whether `ctr run` is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Lets it exit (`/ctl/end`) and checks it exited 0.
    pub fn end(&mut self) {
        std::fs::write(self.ctl.join("end"), b"").unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "{status}: {err}");
    }

    /// Kills its task (SIGKILL) and waits for `ctr run` to return.
    pub fn kill(&mut self, world: &World) {
        let _ = Command::new("timeout")
            .args(["30", "ctr", "--address"])
            .arg(&world.ctrd.socket)
            .args(["--namespace", &world.namespace])
            .args(["tasks", "kill", "-s", "SIGKILL", &self.id])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (60 s at most) until `daemon` says `image` is complete.
pub fn wait_complete(daemon: &Daemon, world: &World, image: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !super::find(&daemon.images(&world.rt), image).complete {
        assert!(
            Instant::now() < deadline,
            "never complete:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `held=` count of the "resuming a partly present image" log line.
pub fn resumed_held(log: &str) -> usize {
    log.lines()
        .find(|l| l.contains("resuming a partly present image"))
        .and_then(|l| l.split("held=").nth(1))
        .and_then(|h| h.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resumed pull in:\n{log}"))
}
