use super::*;
use crate::db::{ImageRecord, LayerRef, TocEntry};
use crate::format::{Compression, ContentRef, Entry, EntryKind};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn sha(n: u32) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(&n.to_be_bytes());
    s[31] = 0xA5;
    s
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        mtime: 1_700_000_000,
        ..Entry::new(
            path,
            kind,
            if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        )
    }
}

/// A regular file with content `n` at `offset` in layer `layer`.
fn file_at(path: &str, n: u32, layer: u32, offset: u64) -> TocEntry {
    let mut e = entry(path, EntryKind::File);
    e.size = 1000 + u64::from(n);
    e.content = Some(ContentRef {
        sha256: sha(n),
        offset,
        compressed_len: 100 + u64::from(n),
    });
    TocEntry { entry: e, layer }
}

fn file(path: &str, n: u32, layer: u32) -> TocEntry {
    file_at(path, n, layer, 512 * u64::from(n))
}

fn dir(path: &str, layer: u32) -> TocEntry {
    TocEntry {
        entry: entry(path, EntryKind::Dir),
        layer,
    }
}

fn image(digest: &str, layers: &[&str]) -> ImageRecord {
    ImageRecord {
        manifest_digest: digest.into(),
        references: vec![],
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest_raw: vec![],
        config_raw: vec![],
        platform: "linux/amd64".into(),
        layers: layers
            .iter()
            .map(|d| LayerRef {
                digest: (*d).into(),
                size: 1 << 20,
                compression: Compression::Gzip,
            })
            .collect(),
        toc_entries: 0,
    }
}

fn sorted(mut toc: Vec<TocEntry>) -> Vec<TocEntry> {
    toc.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    toc
}

fn plan_for(
    wanted: &ImageRecord,
    toc: &[TocEntry],
    held: Vec<(&ImageRecord, &[TocEntry])>,
    held_payloads: &HashSet<[u8; 32]>,
    ranks: &HashMap<String, Rank>,
) -> BundlePlan {
    optimize(&OptimizeInput {
        wanted,
        wanted_toc: toc,
        held,
        held_payloads,
        ranks,
    })
    .unwrap()
}

/// Checks the invariants every plan must satisfy, whatever the input:
/// one plan entry per input entry with the same metadata; every payload
/// index valid and carrying the entry's content; each content once.
fn check_invariants(plan: &BundlePlan, toc: &[TocEntry]) {
    assert_eq!(plan.toc.len(), toc.len());
    let mut referenced = vec![false; plan.payloads.len()];
    for (p, t) in plan.toc.iter().zip(toc) {
        assert_eq!(p.entry, t.entry);
        assert!((p.layer as usize) < plan.layers.len());
        if let PlannedSource::Payload(i) = p.source {
            let payload = &plan.payloads[i as usize];
            assert_eq!(Some(payload.sha256), p.entry.content.map(|c| c.sha256));
            referenced[i as usize] = true;
        }
    }
    assert!(referenced.iter().all(|r| *r), "every payload is used");
    let distinct: HashSet<[u8; 32]> = plan.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(distinct.len(), plan.payloads.len(), "each content once");
    for p in &plan.payloads {
        assert_eq!(plan.layers[p.layer as usize], p.layer_digest);
    }
}

fn sources(plan: &BundlePlan) -> Vec<(&str, PlannedSource, u32)> {
    plan.toc
        .iter()
        .map(|t| (t.entry.path.as_str(), t.source, t.layer))
        .collect()
}

fn payload_paths(plan: &BundlePlan) -> Vec<Vec<&str>> {
    let mut by_payload = vec![Vec::new(); plan.payloads.len()];
    for t in &plan.toc {
        if let PlannedSource::Payload(i) = t.source {
            by_payload[i as usize].push(t.entry.path.as_str());
        }
    }
    by_payload
}

#[test]
fn fresh_bundle_carries_every_distinct_content_once() {
    let wanted = image("sha256:v1", &["sha256:L0", "sha256:L1"]);
    let mut empty = file("etc/empty", 0, 0);
    empty.entry.content = None;
    empty.entry.size = 0;
    let mut symlink = TocEntry {
        entry: entry("etc/link", EntryKind::Symlink),
        layer: 1,
    };
    symlink.entry.link = Some("hostname".into());
    let toc = sorted(vec![
        dir("", 0),
        dir("etc", 0),
        file("etc/hostname", 1, 0),
        file("etc/passwd", 2, 0),
        empty,
        symlink,
        dir("usr", 1),
        file("usr/bin", 3, 1),
        file("usr/lib", 4, 1),
    ]);
    let plan = plan_for(&wanted, &toc, vec![], &HashSet::new(), &HashMap::new());
    check_invariants(&plan, &toc);
    assert_eq!(plan.layers, vec!["sha256:L0", "sha256:L1"]);
    assert_eq!(plan.image_layers, vec![0, 1]);
    let shas: HashSet<[u8; 32]> = plan.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(shas, [1, 2, 3, 4].map(sha).into_iter().collect());
    assert_eq!(plan.payloads.len(), 4);
    for t in &plan.toc {
        let expected_none = t.entry.content.is_none();
        assert_eq!(
            t.source == PlannedSource::NoContent,
            expected_none,
            "{}",
            t.entry.path
        );
        assert_ne!(t.source, PlannedSource::Held);
    }
    // Unranked: layer order, then path.
    let order: Vec<[u8; 32]> = plan.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(order, [1, 2, 3, 4].map(sha));
    // Payload fields come from the entry and its layer.
    let p = &plan.payloads[2];
    assert_eq!((p.layer, p.layer_digest.as_str()), (1, "sha256:L1"));
    assert_eq!((p.offset, p.compressed_len, p.size), (512 * 3, 103, 1003));
    assert_eq!(p.compression, Compression::Gzip);
    assert_eq!(p.rank, None);
    assert_eq!(plan.payload_bytes(), 101 + 102 + 103 + 104);
}

#[test]
fn identical_contents_are_consolidated_into_one_payload() {
    let wanted = image("sha256:img", &["sha256:L0", "sha256:L1"]);
    // The same content at three paths in two layers; the first entry in
    // path order ("a/x", layer 1) supplies it.
    let toc = sorted(vec![
        file_at("a/x", 7, 1, 4096),
        file_at("b/y", 7, 0, 100),
        file_at("c/z", 7, 1, 9000),
        file("d/other", 8, 0),
    ]);
    let plan = plan_for(&wanted, &toc, vec![], &HashSet::new(), &HashMap::new());
    check_invariants(&plan, &toc);
    assert_eq!(plan.payloads.len(), 2);
    let shared = plan
        .payloads
        .iter()
        .position(|p| p.sha256 == sha(7))
        .unwrap();
    assert_eq!(plan.payloads[shared].layer, 1);
    assert_eq!(plan.payloads[shared].offset, 4096);
    let paths = payload_paths(&plan);
    assert_eq!(paths[shared], vec!["a/x", "b/y", "c/z"]);
    // Entries keep their own layer; only the payload picks one supplier.
    assert_eq!(plan.toc[1].layer, 0);
    // Unranked layer order: the layer-0 payload comes first.
    assert_eq!(plan.payloads[0].sha256, sha(8));
}

#[test]
fn hard_links_share_their_target_payload_and_empty_ones_carry_nothing() {
    let wanted = image("sha256:img", &["sha256:L0"]);
    let mut resolved = TocEntry {
        entry: entry("bin/sh", EntryKind::Hardlink),
        layer: 0,
    };
    resolved.entry.link = Some("bin/bash".into());
    resolved.entry.size = 1005;
    resolved.entry.content = file("x", 5, 0).entry.content;
    let mut unresolved = TocEntry {
        entry: entry("bin/rbash", EntryKind::Hardlink),
        layer: 0,
    };
    unresolved.entry.link = Some("bin/bash".into());
    let mut fifo = TocEntry {
        entry: entry("run/fifo", EntryKind::Fifo),
        layer: 0,
    };
    // Content on a kind that has none is not transferred.
    fifo.entry.content = file("x", 9, 0).entry.content;
    let toc = sorted(vec![file("bin/bash", 5, 0), resolved, unresolved, fifo]);
    let plan = plan_for(&wanted, &toc, vec![], &HashSet::new(), &HashMap::new());
    check_invariants(&plan, &toc);
    assert_eq!(plan.payloads.len(), 1);
    assert_eq!(
        sources(&plan),
        vec![
            ("bin/bash", PlannedSource::Payload(0), 0),
            ("bin/rbash", PlannedSource::NoContent, 0),
            ("bin/sh", PlannedSource::Payload(0), 0),
            ("run/fifo", PlannedSource::NoContent, 0),
        ]
    );
}

/// v1 and v2 have no layer digest in common (v2's base layer was rebuilt),
/// but share most contents, some under new paths.
fn update_pair() -> (ImageRecord, Vec<TocEntry>, ImageRecord, Vec<TocEntry>) {
    let v1 = image("sha256:v1", &["sha256:base1", "sha256:app1"]);
    let v1_toc = sorted(vec![
        dir("", 0),
        dir("lib", 0),
        file("lib/a.so", 1, 0),
        file("lib/b.so", 2, 0),
        file("lib/c.so", 3, 0),
        file("lib/old.so", 4, 0),
        dir("app", 1),
        file("app/main.py", 5, 1),
        file("app/util.py", 6, 1),
    ]);
    let v2 = image("sha256:v2", &["sha256:base2", "sha256:app2"]);
    let mut v2_toc = sorted(vec![
        dir("", 0),
        dir("lib", 0),
        file_at("lib/a.so", 1, 0, 10),   // same path, same content
        file_at("lib/b.so", 20, 0, 20),  // changed content
        file_at("lib/c.so", 3, 0, 30),   // same content, see below: new mode
        file_at("lib/new.so", 4, 0, 40), // old.so's content under a new path
        dir("app", 1),
        file_at("app/main.py", 50, 1, 50),  // changed content
        file_at("app/util.py", 6, 1, 60),   // same
        file_at("app/util2.py", 50, 1, 70), // duplicate of a changed content
        file_at("app/extra.py", 51, 1, 80), // new content
    ]);
    let c = v2_toc
        .iter_mut()
        .find(|t| t.entry.path == "lib/c.so")
        .unwrap();
    c.entry.mode = 0o755;
    c.entry.mtime += 60;
    (v1, v1_toc, v2, v2_toc)
}

#[test]
fn update_carries_only_changed_contents_each_once() {
    let (v1, v1_toc, v2, v2_toc) = update_pair();
    let plan = plan_for(
        &v2,
        &v2_toc,
        vec![(&v1, &v1_toc)],
        &HashSet::new(),
        &HashMap::new(),
    );
    check_invariants(&plan, &v2_toc);
    assert_eq!(
        plan.layers,
        vec!["sha256:base2", "sha256:app2", "sha256:base1", "sha256:app1"]
    );
    assert_eq!(plan.image_layers, vec![0, 1]);
    let shas: Vec<[u8; 32]> = plan.payloads.iter().map(|p| p.sha256).collect();
    // Unranked: layer 0 first (b.so), then layer 1 in blob order
    // (main.py's member at 50 before extra.py's at 80).
    assert_eq!(shas, vec![sha(20), sha(50), sha(51)]);
    let get = |path: &str| plan.toc.iter().find(|t| t.entry.path == path).unwrap();
    // Same path, same content: held, from v1's base layer (index 2).
    assert_eq!(
        (get("lib/a.so").source, get("lib/a.so").layer),
        (PlannedSource::Held, 2)
    );
    // Moved content: held too (the store is keyed by hash), from where v1 has it.
    assert_eq!(
        (get("lib/new.so").source, get("lib/new.so").layer),
        (PlannedSource::Held, 2)
    );
    assert_eq!(
        (get("app/util.py").source, get("app/util.py").layer),
        (PlannedSource::Held, 3)
    );
    // Metadata-only change: held, but with v2's metadata.
    let c = get("lib/c.so");
    assert_eq!((c.source, c.layer), (PlannedSource::Held, 2));
    assert_eq!(c.entry.mode, 0o755);
    assert_eq!(c.entry.mtime, 1_700_000_060);
    // Changed contents come from v2's layers.
    assert_eq!(
        (get("lib/b.so").source, get("lib/b.so").layer),
        (PlannedSource::Payload(0), 0)
    );
    assert_eq!(get("app/main.py").source, PlannedSource::Payload(1));
    assert_eq!(get("app/util2.py").source, PlannedSource::Payload(1));
    assert_eq!(
        plan.payloads[1].offset, 50,
        "first entry in path order supplies it"
    );
    assert_eq!(get("app").source, PlannedSource::NoContent);
}

#[test]
fn same_path_match_wins_over_a_content_match_elsewhere() {
    // Content 1 is in held image A at another path and in held image B at
    // the same path: the same-path match picks B's layer although A sorts
    // first.
    let a = image("sha256:a", &["sha256:LA"]);
    let a_toc = vec![file("other", 1, 0)];
    let b = image("sha256:b", &["sha256:LB"]);
    let b_toc = vec![file("same", 1, 0)];
    let wanted = image("sha256:w", &["sha256:LW"]);
    let toc = vec![file("same", 1, 0), file("third", 1, 0)];
    let plan = plan_for(
        &wanted,
        &toc,
        vec![(&b, &b_toc), (&a, &a_toc)],
        &HashSet::new(),
        &HashMap::new(),
    );
    check_invariants(&plan, &toc);
    assert_eq!(plan.layers, vec!["sha256:LW", "sha256:LA", "sha256:LB"]);
    // "same" matches B by path; "third" matches by content only, and the
    // first held image in digest order (A) wins.
    assert_eq!(
        sources(&plan),
        vec![
            ("same", PlannedSource::Held, 2),
            ("third", PlannedSource::Held, 1)
        ]
    );
    assert!(plan.payloads.is_empty());
}

#[test]
fn held_payloads_of_a_resume_are_not_sent_again() {
    let (v1, v1_toc, v2, v2_toc) = update_pair();
    let resumed: HashSet<[u8; 32]> = [sha(20), sha(50)].into_iter().collect();
    let plan = plan_for(
        &v2,
        &v2_toc,
        vec![(&v1, &v1_toc)],
        &resumed,
        &HashMap::new(),
    );
    check_invariants(&plan, &v2_toc);
    assert_eq!(plan.payloads.len(), 1);
    assert_eq!(plan.payloads[0].sha256, sha(51));
    let get = |path: &str| plan.toc.iter().find(|t| t.entry.path == path).unwrap();
    // Held by payload: the entry keeps its own layer in the wanted image.
    assert_eq!(
        (get("lib/b.so").source, get("lib/b.so").layer),
        (PlannedSource::Held, 0)
    );
    assert_eq!(
        (get("app/main.py").source, get("app/main.py").layer),
        (PlannedSource::Held, 1)
    );
    assert_eq!(get("app/util2.py").source, PlannedSource::Held);
    assert_eq!(get("app/extra.py").source, PlannedSource::Payload(0));

    // A resume of a fresh bundle too.
    let plan = plan_for(&v2, &v2_toc, vec![], &resumed, &HashMap::new());
    check_invariants(&plan, &v2_toc);
    let shas: HashSet<[u8; 32]> = plan.payloads.iter().map(|p| p.sha256).collect();
    assert_eq!(shas, [1, 3, 4, 6, 51].map(sha).into_iter().collect());
}

fn rank(sum: u64, hits: u64) -> Rank {
    Rank { sum, hits }
}

#[test]
fn payloads_follow_average_rank_then_unranked_in_layer_order() {
    let wanted = image("sha256:img", &["sha256:L0", "sha256:L1", "sha256:L2"]);
    let toc = sorted(vec![
        file("a", 1, 2),  // unranked, layer 2
        file("b", 2, 1),  // rank 3.0 (tie with c)
        file("c", 3, 0),  // rank 3.0 (tie with b)
        file("d", 4, 0),  // rank 0 (first)
        file("e", 5, 1),  // unranked, layer 1
        file("f", 6, 0),  // unranked, layer 0
        file("g", 7, 2),  // hits 0: unranked, layer 2 after "a"
        file("h", 8, 1),  // rank 10 alone, but shares content with "i"
        file("i", 8, 1),  // rank 1.5: the payload takes the lowest
        file("j", 9, 0),  // rank 2.5
        file("k", 10, 1), // unranked, layer 1 after "e"
        file("l", 11, 0), // rank 1e9 (large but ranked)
    ]);
    let ranks: HashMap<String, Rank> = [
        ("b", rank(6, 2)),
        ("c", rank(3, 1)),
        ("d", rank(0, 4)),
        ("g", rank(5, 0)),
        ("h", rank(10, 1)),
        ("i", rank(3, 2)),
        ("j", rank(5, 2)),
        ("l", rank(1_000_000_000, 1)),
        ("not-in-image", rank(0, 1)),
    ]
    .into_iter()
    .map(|(p, r)| (p.to_string(), r))
    .collect();
    let plan = plan_for(&wanted, &toc, vec![], &HashSet::new(), &ranks);
    check_invariants(&plan, &toc);
    let order: Vec<&str> = payload_paths(&plan).iter().map(|p| p[0]).collect();
    assert_eq!(
        order,
        vec!["d", "h", "j", "b", "c", "l", "f", "e", "k", "a", "g"]
    );
    let ranks_sent: Vec<Option<f64>> = plan.payloads.iter().map(|p| p.rank).collect();
    assert_eq!(
        ranks_sent,
        vec![
            Some(0.0),
            Some(1.5),
            Some(2.5),
            Some(3.0),
            Some(3.0),
            Some(1e9),
            None,
            None,
            None,
            None,
            None
        ]
    );
    // Zero rank and index 0 survive.
    assert_eq!(plan.payloads[0].sha256, sha(4));
    let d = plan.toc.iter().find(|t| t.entry.path == "d").unwrap();
    assert_eq!(d.source, PlannedSource::Payload(0));
    assert_eq!(d.layer, 0);
}

#[test]
fn plan_does_not_depend_on_held_order_duplicates_or_hash_order() {
    let (v1, v1_toc, v2, v2_toc) = update_pair();
    let other = image("sha256:0other", &["sha256:x", "sha256:base1"]);
    let other_toc = sorted(vec![file("lib/b.so", 20, 0), file("z", 51, 1)]);
    let ranks_a: HashMap<String, Rank> = v2_toc
        .iter()
        .enumerate()
        .map(|(i, t)| (t.entry.path.clone(), rank((i % 3) as u64, 1)))
        .collect();
    // Same contents, inserted in the opposite order and with a different
    // capacity, so iteration order differs.
    let mut ranks_b: HashMap<String, Rank> = HashMap::with_capacity(1000);
    for (k, v) in ranks_a.iter().collect::<Vec<_>>().into_iter().rev() {
        ranks_b.insert(k.clone(), *v);
    }
    let resumed_a: HashSet<[u8; 32]> = [sha(6), sha(99), sha(1)].into_iter().collect();
    let mut resumed_b: HashSet<[u8; 32]> = HashSet::with_capacity(500);
    resumed_b.extend([sha(1), sha(99), sha(6)]);

    let first = plan_for(
        &v2,
        &v2_toc,
        vec![(&v1, &v1_toc), (&other, &other_toc)],
        &resumed_a,
        &ranks_a,
    );
    let second = plan_for(
        &v2,
        &v2_toc,
        vec![(&other, &other_toc), (&v1, &v1_toc), (&other, &other_toc)],
        &resumed_b,
        &ranks_b,
    );
    check_invariants(&first, &v2_toc);
    assert_eq!(first, second);
    // Held images in digest order: "sha256:0other" before "sha256:v1".
    assert_eq!(
        first.layers,
        vec![
            "sha256:base2",
            "sha256:app2",
            "sha256:x",
            "sha256:base1",
            "sha256:app1"
        ]
    );
    // b.so's new content is in "0other" under the same path.
    let b = first
        .toc
        .iter()
        .find(|t| t.entry.path == "lib/b.so")
        .unwrap();
    assert_eq!((b.source, b.layer), (PlannedSource::Held, 2));
    assert_eq!(first.payloads.len(), 1);
    assert_eq!(first.payloads[0].sha256, sha(50));
}

#[test]
fn layer_table_lists_each_digest_once() {
    // An image may use one blob twice (e.g. an empty layer).
    let wanted = image("sha256:w", &["sha256:A", "sha256:B", "sha256:A"]);
    let held = image("sha256:h", &["sha256:B", "sha256:C"]);
    let toc = vec![file("f", 1, 2)];
    let held_toc = vec![file("g", 2, 1)];
    let plan = plan_for(
        &wanted,
        &toc,
        vec![(&held, &held_toc)],
        &HashSet::new(),
        &HashMap::new(),
    );
    assert_eq!(plan.layers, vec!["sha256:A", "sha256:B", "sha256:C"]);
    assert_eq!(plan.image_layers, vec![0, 1, 0]);
    assert_eq!(plan.toc[0].layer, 0);
    assert_eq!(plan.payloads[0].layer_digest, "sha256:A");
}

#[test]
fn inconsistent_layer_indices_are_refused() {
    let wanted = image("sha256:w", &["sha256:A"]);
    let toc = vec![file("f", 1, 1)];
    let err = optimize(&OptimizeInput {
        wanted: &wanted,
        wanted_toc: &toc,
        held: vec![],
        held_payloads: &HashSet::new(),
        ranks: &HashMap::new(),
    })
    .unwrap_err();
    assert_eq!(
        err,
        OptimizeError::LayerOutOfRange {
            image: "sha256:w".into(),
            path: "f".into(),
            layer: 1,
            layers: 1
        }
    );
    let held = image("sha256:h", &[]);
    let held_toc = vec![file("g", 2, 0)];
    let ok_toc = vec![file("f", 1, 0)];
    let err = optimize(&OptimizeInput {
        wanted: &wanted,
        wanted_toc: &ok_toc,
        held: vec![(&held, &held_toc)],
        held_payloads: &HashSet::new(),
        ranks: &HashMap::new(),
    })
    .unwrap_err();
    assert!(matches!(err, OptimizeError::LayerOutOfRange { ref image, .. } if image == "sha256:h"));
    assert!(err.to_string().contains("sha256:h"));
}

#[test]
fn rank_average_ignores_unhit_paths() {
    assert_eq!(rank(0, 3).average(), Some(0.0));
    assert_eq!(rank(7, 2).average(), Some(3.5));
    assert_eq!(rank(7, 0).average(), None);
}

// ---- PlanCache ----

fn input<'a>(
    wanted: &'a ImageRecord,
    toc: &'a [TocEntry],
    held: Vec<(&'a ImageRecord, &'a [TocEntry])>,
    held_payloads: &'a HashSet<[u8; 32]>,
    ranks: &'a HashMap<String, Rank>,
) -> OptimizeInput<'a> {
    OptimizeInput {
        wanted,
        wanted_toc: toc,
        held,
        held_payloads,
        ranks,
    }
}

#[test]
fn second_identical_request_gets_the_same_plan_without_recomputation() {
    let (v1, v1_toc, v2, v2_toc) = update_pair();
    let none = HashSet::new();
    let ranks = HashMap::new();
    let cache = PlanCache::new(16, 1 << 20);
    let builds = AtomicUsize::new(0);
    let req = input(&v2, &v2_toc, vec![(&v1, &v1_toc)], &none, &ranks);
    let build = || {
        builds.fetch_add(1, Ordering::SeqCst);
        optimize(&req)
    };
    let key = PlanKey::for_input(&req, 7);
    let a = cache.get_or_try_insert_with(key.clone(), build).unwrap();
    // Same request, held list in another order with a duplicate.
    let key2 = PlanKey::new("sha256:v2", ["sha256:v1", "sha256:v1"], &HashSet::new(), 7);
    assert_eq!(key, key2);
    let b = cache.get_or_try_insert_with(key2, build).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    assert_eq!(*a, optimize(&req).unwrap());
    let c = cache.plan(&req, 7).unwrap();
    assert!(Arc::ptr_eq(&a, &c));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
    assert!(stats.bytes >= a.approx_bytes());

    // Anything the plan depends on changes the key.
    let resumed: HashSet<[u8; 32]> = [sha(20)].into_iter().collect();
    let different = [
        PlanKey::new("sha256:v2", ["sha256:v1"], &HashSet::new(), 8),
        PlanKey::new("sha256:v2", Vec::<String>::new(), &HashSet::new(), 7),
        PlanKey::new("sha256:v2", ["sha256:v1"], &resumed, 7),
        PlanKey::new("sha256:v1", ["sha256:v1"], &HashSet::new(), 7),
        key.clone().with_unordered(true),
    ];
    for k in different {
        assert_ne!(k, key);
        assert!(cache.get(&k).is_none());
    }
    let d = cache
        .plan(
            &input(&v2, &v2_toc, vec![(&v1, &v1_toc)], &resumed, &ranks),
            7,
        )
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &d));
    assert_ne!(a.payloads, d.payloads);
}

#[test]
fn cache_evicts_least_recently_used_by_count() {
    let cache = PlanCache::new(2, usize::MAX);
    let none = HashSet::new();
    let plan = |n: u32| {
        Arc::new(BundlePlan {
            layers: vec![format!("sha256:{n}")],
            image_layers: vec![0],
            toc: vec![],
            payloads: vec![],
        })
    };
    let key = |n: u32| PlanKey::new(&format!("sha256:{n}"), Vec::<String>::new(), &none, 0);
    let p1 = cache.insert(key(1), plan(1));
    cache.insert(key(2), plan(2));
    // Use 1, so 2 is the least recently used.
    assert!(Arc::ptr_eq(&cache.get(&key(1)).unwrap(), &p1));
    cache.insert(key(3), plan(3));
    assert!(cache.get(&key(2)).is_none());
    assert!(cache.get(&key(1)).is_some());
    assert!(cache.get(&key(3)).is_some());
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    // Inserting a key already present keeps the first plan.
    let again = cache.insert(key(3), plan(3));
    assert!(Arc::ptr_eq(&again, &cache.get(&key(3)).unwrap()));
    assert_eq!(cache.stats().entries, 2);
}

#[test]
fn cache_evicts_by_bytes_and_never_keeps_an_oversized_plan() {
    let (_, _, v2, v2_toc) = update_pair();
    let none = HashSet::new();
    let ranks = HashMap::new();
    let plan = Arc::new(optimize(&input(&v2, &v2_toc, vec![], &none, &ranks)).unwrap());
    let key = |n: u64| PlanKey::new("sha256:v2", Vec::<String>::new(), &none, n);
    let one = plan.approx_bytes() + 200; // room for one plan and its key
    let cache = PlanCache::new(100, one + one / 2);
    cache.insert(key(1), Arc::clone(&plan));
    cache.insert(key(2), Arc::clone(&plan));
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.evictions), (1, 1));
    assert!(stats.bytes <= one + one / 2);
    assert!(cache.get(&key(1)).is_none());
    assert!(cache.get(&key(2)).is_some());

    let tiny = PlanCache::new(100, 10);
    let returned = tiny.insert(key(1), Arc::clone(&plan));
    assert!(Arc::ptr_eq(&returned, &plan));
    assert_eq!(tiny.stats().entries, 0);
    let nothing = PlanCache::new(0, usize::MAX);
    nothing.insert(key(1), Arc::clone(&plan));
    assert_eq!(nothing.stats().entries, 0);
}

#[test]
fn build_errors_are_not_cached() {
    let cache = PlanCache::new(4, usize::MAX);
    let key = PlanKey::new("sha256:w", Vec::<String>::new(), &HashSet::new(), 0);
    let err: Result<_, &str> = cache.get_or_try_insert_with(key.clone(), || Err("boom"));
    assert_eq!(err.unwrap_err(), "boom");
    assert_eq!(cache.stats().entries, 0);
    assert!(cache.get(&key).is_none());
}

#[test]
fn concurrent_requests_share_one_cached_plan() {
    let (v1, v1_toc, v2, v2_toc) = update_pair();
    let none = HashSet::new();
    let ranks = HashMap::new();
    let cache = PlanCache::new(4, usize::MAX);
    let plans: Vec<Arc<BundlePlan>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    cache
                        .plan(&input(&v2, &v2_toc, vec![(&v1, &v1_toc)], &none, &ranks), 1)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Racing misses may each build, but all get the plan stored first.
    let stored = cache
        .get(&PlanKey::new("sha256:v2", ["sha256:v1"], &none, 1))
        .unwrap();
    for p in &plans {
        assert!(Arc::ptr_eq(p, &stored));
    }
    let stats = cache.stats();
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.hits + stats.misses, 9);
}

#[test]
fn unsorted_tables_of_contents_still_match_by_path_and_keep_their_order() {
    // Not what the database produces, but the plan must stay correct.
    let held = image("sha256:h", &["sha256:H0", "sha256:H1"]);
    let held_toc = vec![file("z", 3, 1), file("a", 1, 0), file("m", 2, 1)];
    let wanted = image("sha256:w", &["sha256:W0"]);
    // Unranked payloads follow their members' order in the blob ("z" at
    // 2048 before "q" at 4608), whatever the input order.
    let toc = vec![
        file("m", 2, 0),
        file("z", 4, 0),
        file("a", 1, 0),
        file("q", 9, 0),
    ];
    let plan = plan_for(
        &wanted,
        &toc,
        vec![(&held, &held_toc)],
        &HashSet::new(),
        &HashMap::new(),
    );
    check_invariants(&plan, &toc);
    assert_eq!(
        sources(&plan),
        vec![
            ("m", PlannedSource::Held, 2),
            ("z", PlannedSource::Payload(0), 0),
            ("a", PlannedSource::Held, 1),
            ("q", PlannedSource::Payload(1), 0),
        ]
    );
}
