#![allow(clippy::unwrap_used)]
use super::*;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

fn listener() -> (tempfile::TempDir, PathBuf, Listener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCKET);
    let l = Listener::bind(&path).unwrap();
    (dir, path, l)
}

fn files(dir: &Path, n: usize) -> Vec<(String, OwnedFd)> {
    (0..n)
        .map(|i| {
            let f = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
            (format!("{i:064x}.v1.42.1.131072.32"), OwnedFd::from(f))
        })
        .collect()
}

#[test]
fn every_fd_arrives_with_its_name_and_the_socket_is_private() {
    let (dir, path, l) = listener();
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sent = files(dir.path(), 3);
    let inodes: Vec<u64> = sent
        .iter()
        .map(|(_, fd)| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
                .ino()
        })
        .collect();
    let server = std::thread::spawn(move || {
        let r = l.accept().unwrap();
        r.send(&sent).unwrap();
    });
    let got = take_over(&path, Duration::from_secs(5)).unwrap();
    server.join().unwrap();
    assert_eq!(got.len(), 3);
    for (i, (name, fd)) in got.into_iter().enumerate() {
        assert_eq!(name, format!("{i:064x}.v1.42.1.131072.32"));
        let ino = std::fs::File::from(fd).metadata().unwrap().ino();
        assert_eq!(ino, inodes[i]);
    }
}

#[test]
fn a_bad_hello_is_dropped_and_the_next_request_served() {
    let (dir, path, l) = listener();
    let sent = files(dir.path(), 1);
    let server = std::thread::spawn(move || {
        let r = l.accept().unwrap();
        r.send(&sent).unwrap();
    });
    let (sock, addr) = socket_for(&path).unwrap();
    // SAFETY: connect with a sockaddr_un of the stated size.
    check(unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            ADDR_LEN,
        )
    })
    .unwrap();
    send(sock.as_fd(), b"give me everything", None).unwrap();
    let got = take_over(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(got.len(), 1);
    server.join().unwrap();
}

/// A message of a fake old daemon and how many fds it carries.
type Message = (Vec<u8>, usize);

/// A fake old daemon that answers the hello with `messages`.
fn fake_old(messages: Vec<Message>) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
    let (dir, path, l) = listener();
    let extra = dir.path().join("extra");
    let handle = std::thread::spawn(move || {
        let r = l.accept().unwrap();
        let f = std::fs::File::create(&extra).unwrap();
        for (m, nfds) in messages {
            if nfds == 2 {
                send_two(r.fd.as_fd(), &m, f.as_fd());
            } else {
                let fd = (nfds == 1).then(|| f.as_fd());
                let _ = send(r.fd.as_fd(), &m, fd);
            }
        }
        // Wait for the client to go.
        let _ = recv(r.fd.as_fd());
    });
    (dir, path, handle)
}

fn send_two(sock: BorrowedFd<'_>, message: &[u8], fd: BorrowedFd<'_>) {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: size computations and writes within `control`.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(8) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(8) as usize;
        let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
        std::ptr::write_unaligned(data, fd.as_raw_fd());
        std::ptr::write_unaligned(data.add(1), fd.as_raw_fd());
        assert!(libc::sendmsg(sock.as_raw_fd(), &msg, 0) > 0);
    }
}

#[test]
fn malformed_answers_are_refused() {
    let name = format!("{:064x}.v1.42.1.131072.32", 1).into_bytes();
    let fd_msg = |n: usize| (b"FD ".iter().chain(&name).copied().collect::<Vec<u8>>(), n);
    let cases: Vec<(&str, Vec<Message>)> = vec![
        ("no fd", vec![fd_msg(0)]),
        ("two fds", vec![fd_msg(2)]),
        ("wrong count", vec![fd_msg(1), (b"END 2".to_vec(), 0)]),
        ("fd on END", vec![(b"END 0".to_vec(), 1)]),
        ("garbage", vec![(b"HELLO".to_vec(), 0)]),
        ("too long", vec![(vec![b'F'; MAX_MESSAGE + 10], 0)]),
        ("empty name", vec![(b"FD ".to_vec(), 1)]),
    ];
    for (what, messages) in cases {
        let (_dir, path, server) = fake_old(messages);
        let r = take_over(&path, Duration::from_secs(5));
        assert!(r.is_err(), "{what}: {r:?}");
        server.join().unwrap();
    }
}

#[test]
fn a_silent_old_daemon_times_out() {
    let (_dir, path, l) = listener();
    let server = std::thread::spawn(move || {
        let r = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        drop(r);
    });
    let t = std::time::Instant::now();
    let r = take_over(&path, Duration::from_millis(200));
    assert!(r.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    server.join().unwrap();
}

#[test]
fn no_old_daemon_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(take_over(&dir.path().join(SOCKET), Duration::from_secs(1)).is_err());
}
