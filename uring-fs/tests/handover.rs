//! A FUSE connection outlives its server: a server process is killed with
//! SIGKILL while this test keeps a copy of its `/dev/fuse` fd (as systemd's
//! fd store would), a new server process serves the same mount from that fd
//! ([`Session::from_fd`]), and callers that were using the mount carry on:
//! an open that was in flight at the kill is re-sent (`FUSE_NOTIFY_RESEND`)
//! and answered, a file held open reads again, and a process whose working
//! directory is inside the mount opens a file it had never opened.
//!
//! The servers are this test binary run again (`child_server_entry`, which
//! does nothing unless `URING_FS_HANDOVER_ROLE` is set).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use uring_fs::memfs::{Content, MemFs, ROOT};
use uring_fs::{mounts, MountOptions, Session, SessionState, TransportChoice};

const WAIT: Duration = Duration::from_secs(20);
const ROLE: &str = "URING_FS_HANDOVER_ROLE";
const MOUNTPOINT: &str = "URING_FS_HANDOVER_MOUNTPOINT";
const STATE: &str = "URING_FS_HANDOVER_STATE";
/// The inherited fd's number in the second server.
const INHERITED_FD: i32 = 3;

/// The same tree in every server (inode numbers follow the order of
/// creation, so the kernel's node ids stay valid). In the first server
/// `late` and `other` never arrive; in the second every file is there.
fn tree(all_ready: bool) -> MemFs {
    let fs = MemFs::new(Duration::from_secs(1));
    let dir = fs.mkdir(ROOT, "d").unwrap();
    for (name, ready) in [("ready", true), ("late", all_ready), ("other", all_ready)] {
        let body = format!("{name}-bytes\n");
        let ino = fs.add_file(dir, name, body.len() as u64).unwrap();
        if ready {
            fs.fulfil(ino, Content::Bytes(body.into_bytes().into()))
                .unwrap();
        }
    }
    fs
}

fn options() -> MountOptions {
    MountOptions::default()
        .allow_other(true)
        .fs_name("uring-fs-handover-test")
        .transport(TransportChoice::DevFuse)
        .survive_exit(true)
}

/// Entry of the child servers; a no-op in a normal test run.
#[test]
fn child_server_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let mountpoint = PathBuf::from(std::env::var(MOUNTPOINT).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let session = match role.as_str() {
            "mount" => Session::mount(&mountpoint, tree(false), options())
                .await
                .unwrap(),
            "inherit" => {
                let state = SessionState::parse(&std::env::var(STATE).unwrap()).unwrap();
                // SAFETY: the parent placed the session fd at this number.
                let fd = unsafe { OwnedFd::from_raw_fd(INHERITED_FD) };
                Session::from_fd(fd, &mountpoint, tree(true), state, options())
                    .await
                    .unwrap()
            }
            other => panic!("unknown role {other}"),
        };
        println!(
            "SERVING pid={} state={}",
            std::process::id(),
            session.state().encode()
        );
        std::io::stdout().flush().unwrap();
        // Serve until killed.
        std::future::pending::<()>().await;
    });
}

/// Starts a server child (kept in `cleanup`); its `SERVING` line.
fn start_server(
    cleanup: &mut Cleanup,
    role: &str,
    mountpoint: &Path,
    inherit: Option<(&OwnedFd, &str)>,
) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_server_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(MOUNTPOINT, mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some((fd, state)) = inherit {
        let raw = fd.as_raw_fd();
        command.env(STATE, state);
        // SAFETY: only dup2 (async-signal-safe) runs between fork and exec;
        // dup2 leaves the new fd without close-on-exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(raw, INHERITED_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().unwrap();
    let stdout: ChildStdout = child.stdout.take().unwrap();
    cleanup.children.push(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test child_server_entry ... " before it.
            if let Some(at) = line.find("SERVING") {
                let _ = tx.send(line[at..].to_owned());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("the server did not start")
}

/// A copy of fd `target` of process `pid` (`pidfd_getfd`): the test's fd
/// store.
fn take_fd(pid: u32, target: i32) -> OwnedFd {
    // SAFETY: plain syscalls with integer arguments; each returns a fresh fd.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0);
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd as i32)
    }
}

/// The `/dev/fuse` fd of process `pid`, by `/proc/<pid>/fd`.
fn fuse_fd_of(pid: u32) -> i32 {
    let mut found = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if fs::read_link(entry.path()).ok().as_deref() == Some(Path::new("/dev/fuse")) {
            found.push(entry.file_name().to_str().unwrap().parse::<i32>().unwrap());
        }
    }
    assert_eq!(
        found.len(),
        1,
        "the server holds one /dev/fuse fd: {found:?}"
    );
    found[0]
}

/// Unmounts and kills what is left, also when the test fails.
struct Cleanup {
    mountpoint: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = mounts::detach_unmount(&self.mountpoint);
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: kill with a pid we spawned.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) },
        0
    );
    child.wait().unwrap();
}

#[test]
#[ignore = "needs root: FUSE mounts, pidfd_getfd"]
fn connection_survives_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let mut cleanup = Cleanup {
        mountpoint: mountpoint.clone(),
        children: Vec::new(),
    };
    let line = start_server(&mut cleanup, "mount", &mountpoint, None);
    let first_pid = cleanup.children[0].id();
    let state_text = line.split("state=").nth(1).unwrap().to_owned();
    let state = SessionState::parse(&state_text).unwrap();
    assert!(
        state.can_resend(),
        "kernel protocol 7.{} < 7.40",
        state.minor()
    );
    let kept = take_fd(first_pid, fuse_fd_of(first_pid));

    // Users of the mount: a shell whose working directory is inside and
    // which holds a file open (fd 5), and an open waiting for content that
    // never comes from the first server. (This process holds no file of
    // the mount: closing one, as fork+exec of the next server does, would
    // wait for a FLUSH answer while no server runs.)
    let mut shell = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0\" || exit 9; exec 5<ready || exit 8; echo opened; read _go; cat <&5; cat other")
        .arg(mountpoint.join("d"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut shell_out = BufReader::new(shell.stdout.take().unwrap());
    let mut opened = String::new();
    shell_out.read_line(&mut opened).unwrap();
    assert_eq!(opened, "opened\n");
    let late_path = mountpoint.join("d/late");
    let (late_tx, late_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = late_tx.send(fs::read(late_path).map_err(|e| e.raw_os_error()));
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(late_rx.try_recv().is_err(), "the open of `late` waits");

    let killed_at = Instant::now();
    kill9(&mut cleanup.children[0]);
    assert!(
        mounts::is_fuse_mounted(&mountpoint).unwrap(),
        "the mount stays while an fd copy lives"
    );
    // The first server is gone: the waiting open is still waiting.
    std::thread::sleep(Duration::from_millis(200));
    assert!(late_rx.try_recv().is_err(), "no error while no server runs");

    let line = start_server(
        &mut cleanup,
        "inherit",
        &mountpoint,
        Some((&kept, &state_text)),
    );
    assert!(line.contains(&state_text), "{line}");

    // The open in flight at the kill was re-sent and answered.
    let late = late_rx
        .recv_timeout(WAIT)
        .expect("the re-sent open was not answered");
    assert_eq!(late, Ok(b"late-bytes\n".to_vec()));
    eprintln!(
        "in-flight open answered {:?} after the kill",
        killed_at.elapsed()
    );
    // The shell reads the file it held open across the kill, then, cwd
    // inside the mount, opens a file it never opened.
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut out = String::new();
    shell_out.read_to_string(&mut out).unwrap();
    let status = shell.wait().unwrap();
    let mut err = String::new();
    shell
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out, "ready-bytes\nother-bytes\n");
    // New lookups of the whole tree work.
    let names: Vec<_> = fs::read_dir(mountpoint.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    drop(kept);
    drop(cleanup);
    assert!(!mounts::is_fuse_mounted(&mountpoint).unwrap(), "cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: FUSE mounts"]
async fn graceful_hand_over_within_one_process_keeps_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let first = Session::mount(&mountpoint, tree(false), options())
        .await
        .unwrap();
    let late_path = mountpoint.join("d/late");
    let waiting = tokio::task::spawn_blocking(move || fs::read(late_path));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    let handed = first.hand_over().await.unwrap();
    assert!(mounts::is_fuse_mounted(&mountpoint).unwrap());
    let second = Session::from_fd(handed.fd, &mountpoint, tree(true), handed.state, options())
        .await
        .unwrap();
    let late = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(late.unwrap(), b"late-bytes\n");
    let other = mountpoint.join("d/other");
    let read = tokio::task::spawn_blocking(move || fs::read(other))
        .await
        .unwrap();
    assert_eq!(read.unwrap(), b"other-bytes\n");
    // A stop that is not a hand-over unmounts.
    let started = Instant::now();
    second.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!mounts::is_fuse_mounted(&mountpoint).unwrap());
}

#[tokio::test]
#[ignore = "needs root: FUSE mounts"]
async fn a_session_without_survive_exit_refuses_to_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().canonicalize().unwrap();
    let opts = options().survive_exit(false);
    let session = Session::mount(&mountpoint, tree(true), opts).await.unwrap();
    assert!(session.clone_fd().is_err());
    assert!(session.hand_over().await.is_err());
    // The refused hand-over still left the mount to be cleaned up by drop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!mounts::is_fuse_mounted(&mountpoint).unwrap());
}

#[tokio::test]
#[ignore = "needs root: FUSE mounts"]
async fn from_fd_refuses_what_is_not_a_fuse_connection() {
    let dir = tempfile::tempdir().unwrap();
    let state = SessionState::parse("v1.42.1.131072.32").unwrap();
    let not_fuse: OwnedFd = fs::File::open("/dev/null").unwrap().into();
    // Not a FUSE mount point.
    assert!(
        Session::from_fd(not_fuse, dir.path(), tree(true), state, options())
            .await
            .is_err()
    );
    // A FUSE mount, but the fd is not /dev/fuse.
    let session = Session::mount(dir.path(), tree(true), options())
        .await
        .unwrap();
    let not_fuse: OwnedFd = fs::File::open("/dev/null").unwrap().into();
    assert!(
        Session::from_fd(not_fuse, dir.path(), tree(true), state, options())
            .await
            .is_err()
    );
    assert!(mounts::is_fuse_mounted(&dir.path().canonicalize().unwrap()).unwrap());
    session.shutdown().await;
}
