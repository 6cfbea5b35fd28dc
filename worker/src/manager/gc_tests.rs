//! Tests of the collection's plan and of what counts as in use.
#![allow(clippy::unwrap_used)]
use super::*;
use std::collections::BTreeMap;

fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

/// An image of contents `shas` (1 MB each), last used at `used`.
fn image(n: u8, shas: &[u8], used: u64) -> Candidate {
    Candidate {
        digest: digest(n),
        contents: shas.iter().map(|s| ([*s; 32], 1_000_000)).collect(),
        last_used: used,
        in_use: false,
        in_containerd: Some(true),
    }
}

fn evicted(plan: &[Planned]) -> Vec<(usize, Reason)> {
    plan.iter().map(|p| (p.index, p.reason)).collect()
}

#[test]
fn the_bound_evicts_least_recently_used_first_and_keeps_shared_contents() {
    // 0 and 1 share content 9; 2 is the newest.
    let images = vec![
        image(0, &[1, 2, 9], 100),
        image(1, &[3, 9], 50),
        image(2, &[4, 5], 300),
    ];
    let (p, before, after) = plan(&images, Some(4_000_000), None);
    assert_eq!(before, 6_000_000);
    // 1 goes first (oldest) but frees only content 3 (9 is shared); then 0.
    assert_eq!(evicted(&p), [(1, Reason::Bound), (0, Reason::Bound)]);
    assert_eq!((p[0].contents, p[0].bytes), (1, 1_000_000));
    assert_eq!((p[1].contents, p[1].bytes), (3, 3_000_000));
    assert_eq!(after, 2_000_000);
    // Under the bound: nothing.
    let (p, _, after) = plan(&images, Some(6_000_000), None);
    assert!(p.is_empty());
    assert_eq!(after, 6_000_000);
    // No bound: nothing.
    assert!(plan(&images, None, None).0.is_empty());
}

#[test]
fn images_in_use_are_never_evicted_even_over_the_bound() {
    let mut images = vec![image(0, &[1, 2], 1), image(1, &[3], 2), image(2, &[4], 3)];
    images[0].in_use = true;
    images[1].in_containerd = Some(false);
    images[1].in_use = true;
    let (p, _, after) = plan(&images, Some(1_000_000), Some(10));
    assert_eq!(evicted(&p), [(2, Reason::Unused)]);
    assert_eq!(after, 3_000_000, "over the bound, but the rest is in use");
}

#[test]
fn removed_from_containerd_then_unused_then_bound() {
    let mut images = vec![
        image(0, &[1], 500),
        image(1, &[2], 10),
        image(2, &[3], 400),
        image(3, &[4], 600),
    ];
    images[0].in_containerd = Some(false);
    // Unknown presence (containerd unreachable) is not removal.
    images[3].in_containerd = None;
    let (p, before, after) = plan(&images, Some(1_500_000), Some(100));
    assert_eq!(before, 4_000_000);
    assert_eq!(
        evicted(&p),
        [
            (0, Reason::Removed),
            (1, Reason::Unused),
            (2, Reason::Bound)
        ]
    );
    assert_eq!(after, 1_000_000);
}

fn snap(key: &str, parent: &str, kind: Kind, labels: &[(&str, String)]) -> Record {
    Record {
        id: 0,
        key: key.into(),
        parent: parent.into(),
        kind,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        created_ns: 0,
        updated_ns: 0,
    }
}

#[test]
fn a_container_snapshot_keeps_the_image_it_stands_on() {
    use crate::snapshotter::{top_of_label, LABEL_IMAGE};
    let (a, b) = (digest(1).to_string(), digest(2).to_string());
    let records = vec![
        snap("l0", "", Kind::Committed, &[(LABEL_IMAGE, a.clone())]),
        snap(
            "l1",
            "l0",
            Kind::Committed,
            &[(LABEL_IMAGE, a.clone()), (&top_of_label(&a), "1".into())],
        ),
        snap("b0", "", Kind::Committed, &[(LABEL_IMAGE, b.clone())]),
    ];
    // Committed image snapshots alone: nothing in use.
    assert!(images_in_use(&records).is_empty());
    let mut with_container = records.clone();
    with_container.push(snap("ctr-1", "l1", Kind::Active, &[]));
    assert_eq!(images_in_use(&with_container), HashSet::from([a.clone()]));
    // A view counts too; a plain (non-Starlight) chain names no image.
    let mut with_view = records;
    with_view.push(snap("plain", "", Kind::Committed, &[]));
    with_view.push(snap("v", "plain", Kind::View, &[]));
    with_view.push(snap("v2", "b0", Kind::View, &[]));
    assert_eq!(images_in_use(&with_view), HashSet::from([b]));
}
