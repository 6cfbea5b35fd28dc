//! Issue 13, item 2: `starlight rm` of an image that a snapshot stands on
//! (a container's root filesystem) is refused unless forced. With the real
//! `starlightd run` binary, a real `docker-registry`, the proxy over QUIC
//! and a private containerd whose containers get their snapshots from
//! starlightd's snapshotter.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(dead_code)] // the harness is shared

#[path = "../../proxy/tests/common/mod.rs"]
mod common;
#[path = "../../proxy/tests/serve_support/mod.rs"]
mod serve_support;
#[path = "../../tools/tests/support/mod.rs"]
mod support;

mod harness;
use harness::*;

use starlight_worker::api::{Request, Response};
use support::containerd::unique_name;

fn remove(daemon: &Daemon, world: &World, image: &str, force: bool) -> Response {
    daemon.call(
        &world.rt,
        Request::Remove {
            image: image.into(),
            force,
        },
    )
}

#[test]
#[ignore = "needs root: containerd, FUSE mounts"]
fn rm_of_an_image_a_container_stands_on_is_refused_unless_forced() {
    if let Some(reason) = skip_reason() {
        panic!("needs root and /dev/fuse: {reason}");
    }
    let world = World::new();
    let mut files = Files::new();
    files.insert("app/data.bin".into(), serve_support::noise(7, 20_000));
    let image = push_runnable(&world.reg, "rm/in-use", &files);
    let setup = world.setup(world.dir.path().join("state"));
    let proxy = world.proxy(None);
    let daemon = setup.start(proxy.addr, "d.log");
    world.wait_for_snapshotter();
    assert_eq!(daemon.pull(&world.rt, &image, true).complete, Some(true));

    // A container: its active snapshot stands on the image's mount.
    let id = unique_name("inuse");
    let create = ["containers", "create", "--snapshotter", "starlight"];
    world.ctrd.ctr_ok(&[&create[..], &[&image, &id]].concat());
    let refused = remove(&daemon, &world, &image, false);
    let Response::Error(e) = &refused else {
        panic!("an image in use was removed: {refused:?}");
    };
    assert!(
        e.contains("is used by 1 snapshot(s)") && e.contains(&id),
        "{e}"
    );
    assert!(e.contains("force"), "{e}");
    // Nothing changed: still listed, mounted, and readable.
    let info = find(&daemon.images(&world.rt), &image).clone();
    let got = read_all(&mount_of(&info), &files);
    assert!(got.values().all(Result::is_ok), "{got:?}");

    // The container gone, the removal goes through.
    world.ctrd.ctr_ok(&["containers", "rm", &id]);
    // containerd removes the container's snapshot from its metadata at once
    // and from the snapshotter in its next garbage collection (asynchronous):
    // until then the snapshot still stands on the image.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let removed = loop {
        let r = remove(&daemon, &world, &image, false);
        match &r {
            Response::Error(e)
                if e.contains("is used by") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            _ => break r,
        }
    };
    assert!(matches!(removed, Response::Removed { .. }), "{removed:?}");
    assert!(daemon.images(&world.rt).iter().all(|i| i.name != image));

    // `--force` removes an image in use.
    assert_eq!(daemon.pull(&world.rt, &image, true).complete, Some(true));
    let id2 = unique_name("forced");
    world.ctrd.ctr_ok(&[&create[..], &[&image, &id2]].concat());
    let forced = remove(&daemon, &world, &image, true);
    assert!(matches!(forced, Response::Removed { .. }), "{forced:?}");
    assert!(daemon.images(&world.rt).iter().all(|i| i.name != image));
    world.ctrd.ctr_ok(&["containers", "rm", &id2]);
}
