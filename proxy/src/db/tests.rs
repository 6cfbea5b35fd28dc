use super::*;
use crate::format::{Compression, ContentRef, EntryKind};

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry::new(path, kind, 0o644)
}

/// An entry with every field set to a non-default value.
fn full_entry(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Hardlink,
        mode: 0o7755,
        uid: u64::MAX,
        gid: 1 << 40,
        uname: "user".into(),
        gname: "group".into(),
        mtime: -12345,
        mtime_nsec: 999_999_999,
        size: 1 << 33,
        link: Some("usr/bin/target with space".into()),
        devmajor: 7,
        devminor: 3,
        xattrs: vec![
            ("security.capability".into(), vec![0, 1, 2]),
            ("user.empty".into(), vec![]),
        ],
        content: Some(ContentRef {
            sha256: [0xab; 32],
            offset: 1 << 35,
            compressed_len: 77,
        }),
    }
}

/// An entry with every numeric field zero and every optional field present but empty.
fn zero_entry(path: &str) -> Entry {
    Entry {
        link: Some(String::new()),
        content: Some(ContentRef {
            sha256: [0; 32],
            offset: 0,
            compressed_len: 0,
        }),
        xattrs: vec![(String::new(), vec![])],
        mode: 0,
        ..entry(path, EntryKind::File)
    }
}

fn image(digest: &str, layers: &[&str]) -> ImageRecord {
    ImageRecord {
        manifest_digest: digest.into(),
        references: vec![],
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest_raw: b"{\"manifest\":1}".to_vec(),
        config_raw: vec![],
        platform: "linux/amd64".into(),
        layers: layers
            .iter()
            .map(|d| LayerRef {
                digest: d.to_string(),
                size: 0,
                compression: Compression::Gzip,
            })
            .collect(),
        toc_entries: 0,
    }
}

fn layer(digest: &str, entries: Vec<Entry>) -> (LayerRecord, Vec<Entry>) {
    (
        LayerRecord {
            digest: digest.into(),
            compression: Compression::Zstd,
            size: 0,
            diff_id: format!("diff-{digest}"),
            entries: entries.len() as u64,
        },
        entries,
    )
}

fn write_for(reference: &str, digest: &str) -> ImageWrite {
    let l0 = vec![entry("", EntryKind::Dir), full_entry("a"), zero_entry("b")];
    let l1 = vec![entry("c", EntryKind::Symlink)];
    let toc: Vec<TocEntry> = vec![
        TocEntry {
            entry: entry("", EntryKind::Dir),
            layer: 0,
        },
        TocEntry {
            entry: full_entry("a"),
            layer: 0,
        },
        TocEntry {
            entry: zero_entry("b"),
            layer: 0,
        },
        TocEntry {
            entry: entry("c", EntryKind::Symlink),
            layer: 1,
        },
    ];
    let mut img = image(digest, &["sha256:l0", "sha256:l1"]);
    img.toc_entries = toc.len() as u64;
    ImageWrite {
        reference: reference.into(),
        image: img,
        toc,
        new_layers: vec![layer("sha256:l0", l0), layer("sha256:l1", l1)],
    }
}

#[test]
fn every_field_round_trips_including_zero_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("db")).unwrap();
    let w = write_for("reg/app:v1", "sha256:m1");
    let stored = db.commit_image(w.clone()).unwrap();
    assert_eq!(stored.references, vec!["reg/app:v1".to_string()]);

    drop(db);
    let db = Db::open(&dir.path().join("db")).unwrap();
    let img = db.image("sha256:m1").unwrap().unwrap();
    assert_eq!(img, stored);
    assert_eq!(db.image_by_reference("reg/app:v1").unwrap(), Some(stored));
    assert_eq!(db.merged_toc("sha256:m1").unwrap(), w.toc);
    assert_eq!(
        db.toc_entry("sha256:m1", "b").unwrap(),
        Some(w.toc[2].clone())
    );
    assert_eq!(db.layer_entries("sha256:l0").unwrap(), w.new_layers[0].1);
    assert_eq!(db.layer_entries("sha256:l1").unwrap(), w.new_layers[1].1);
    assert_eq!(
        db.layer("sha256:l1").unwrap(),
        Some(w.new_layers[1].0.clone())
    );
    // The zero entry keeps Some(empty) and zero fields, distinct from None.
    let b = &db.layer_entries("sha256:l0").unwrap()[2];
    assert_eq!(b.link.as_deref(), Some(""));
    assert_eq!(b.content.map(|c| c.offset), Some(0));
    assert_eq!(db.image("sha256:nope").unwrap(), None);
    assert!(db.merged_toc("sha256:nope").unwrap().is_empty());
    assert!(
        db.layer_entries("sha256:l").unwrap().is_empty(),
        "prefix of another digest must not match"
    );
}

#[test]
fn many_entries_keep_tar_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let entries: Vec<Entry> = (0..600)
        .map(|i| entry(&format!("f{}", 600 - i), EntryKind::File))
        .collect();
    let mut w = write_for("r", "sha256:m");
    w.new_layers = vec![layer("sha256:big", entries.clone())];
    db.commit_image(w).unwrap();
    assert_eq!(db.layer_entries("sha256:big").unwrap(), entries);
}

#[test]
fn recommit_is_idempotent_and_adds_references() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.commit_image(write_for("reg/app:v1", "sha256:m1"))
        .unwrap();
    let before = db.dump().unwrap();
    db.commit_image(write_for("reg/app:v1", "sha256:m1"))
        .unwrap();
    assert_eq!(db.dump().unwrap(), before);

    db.commit_image(write_for("reg/app:latest", "sha256:m1"))
        .unwrap();
    let img = db.image("sha256:m1").unwrap().unwrap();
    assert_eq!(
        img.references,
        vec!["reg/app:latest".to_string(), "reg/app:v1".to_string()]
    );
    assert_eq!(db.count_keys(CF_TAGS).unwrap(), 2);

    // Moving a tag to another image drops it from the first one.
    db.commit_image(write_for("reg/app:latest", "sha256:m2"))
        .unwrap();
    assert_eq!(
        db.image("sha256:m1").unwrap().unwrap().references,
        vec!["reg/app:v1".to_string()]
    );
    assert_eq!(
        db.image_by_reference("reg/app:latest")
            .unwrap()
            .unwrap()
            .manifest_digest,
        "sha256:m2"
    );
}

#[test]
fn stale_toc_keys_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let mut w = write_for("r", "sha256:m1");
    w.toc.push(TocEntry {
        entry: entry("zzz", EntryKind::File),
        layer: 1,
    });
    w.image.toc_entries += 1;
    db.commit_image(w).unwrap();
    assert_eq!(db.merged_toc("sha256:m1").unwrap().len(), 5);
    db.commit_image(write_for("r", "sha256:m1")).unwrap();
    assert_eq!(
        db.merged_toc("sha256:m1").unwrap(),
        write_for("r", "sha256:m1").toc
    );
}

#[test]
fn a_failed_commit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let before = db.dump().unwrap();
    let mut w = write_for("r", "sha256:m1");
    w.new_layers[1].0.entries = 99;
    assert!(matches!(
        db.commit_image(w),
        Err(DbError::Inconsistent { .. })
    ));
    assert_eq!(db.dump().unwrap(), before);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let meta = db.cf(CF_META).unwrap();
        db.db.put_cf(meta, SCHEMA_KEY, 2u32.to_be_bytes()).unwrap();
    }
    let err = Db::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, DbError::Schema { ref found, .. } if found == "2"),
        "{err}"
    );
    assert!(err.to_string().contains("schema version 2"), "{err}");
}

#[test]
fn unreadable_or_missing_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let meta = db.cf(CF_META).unwrap();
        db.db.put_cf(meta, SCHEMA_KEY, b"x").unwrap();
    }
    assert!(matches!(Db::open(dir.path()), Err(DbError::Schema { .. })));

    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        db.commit_image(write_for("r", "sha256:m")).unwrap();
        db.db
            .delete_cf(db.cf(CF_META).unwrap(), SCHEMA_KEY)
            .unwrap();
    }
    assert!(matches!(Db::open(dir.path()), Err(DbError::Schema { .. })));
}

#[test]
fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        DB::open_cf(&opts, dir.path(), ["other"]).unwrap();
    }
    let err = Db::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, DbError::UnknownColumnFamily { ref name, .. } if name == "other"),
        "{err}"
    );
}

#[test]
fn clear_derived_keeps_schema_and_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.commit_image(write_for("r", "sha256:m")).unwrap();
    let ranks = db.cf(CF_RANKS).unwrap();
    db.db
        .put_cf(
            ranks,
            keys::path("sha256:m", "a"),
            postcard::to_stdvec(&(0u64, 0u64)).unwrap(),
        )
        .unwrap();
    db.clear_derived().unwrap();
    for name in DERIVED {
        assert_eq!(db.count_keys(name).unwrap(), 0, "{name}");
    }
    assert_eq!(db.count_keys(CF_RANKS).unwrap(), 1);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.image_by_reference("r").unwrap(), None);
}

fn trace_of(id: &str, digest: &str, paths: &[&str]) -> TraceRecord {
    TraceRecord {
        id: id.into(),
        image: "reg/app".into(),
        manifest_digest: digest.into(),
        received_ms: 1,
        opens: paths
            .iter()
            .enumerate()
            .map(|(i, p)| TraceOpenRecord {
                path: p.to_string(),
                layer: 0,
                rank: i as u32,
                ms_since_start: 0,
                ms_waited: 0,
            })
            .collect(),
    }
}

#[test]
fn traces_fold_once_and_survive_reopen_and_clear_derived() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    db.commit_image(write_for("reg/app:v1", "sha256:m1"))
        .unwrap();
    let t = trace_of("t1", "sha256:m1", &["c", "a", "zzz", "a"]);
    assert_eq!(
        db.fold_trace(&t).unwrap(),
        FoldOutcome::Folded {
            folded: 2,
            ignored: 2
        }
    );
    let before = db.dump().unwrap();
    assert_eq!(db.fold_trace(&t).unwrap(), FoldOutcome::Duplicate);
    assert_eq!(
        db.dump().unwrap(),
        before,
        "a duplicate changed the database"
    );
    db.fold_trace(&trace_of("t2", "sha256:m1", &["a", "c"]))
        .unwrap();
    assert_eq!(
        db.fold_trace(&trace_of("t3", "sha256:nope", &["a"]))
            .unwrap(),
        FoldOutcome::UnknownImage
    );
    let expect = |db: &Db| {
        let ranks = db.own_ranks("sha256:m1").unwrap();
        // c: ranks 0 and 1; a: ranks 1 and 0 (rank 0 is kept, not dropped).
        assert_eq!(
            ranks.get("c"),
            Some(&RankRecord {
                rank_sum: 1,
                hits: 2
            })
        );
        assert_eq!(
            ranks.get("a"),
            Some(&RankRecord {
                rank_sum: 1,
                hits: 2
            })
        );
        assert_eq!(ranks.len(), 2);
        assert_eq!(db.trace_count("sha256:m1").unwrap(), 2);
        assert_eq!(db.trace("t1").unwrap().unwrap(), t);
    };
    expect(&db);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    expect(&db);
    db.clear_derived().unwrap();
    expect(&db);
    assert_eq!(db.index_seq("sha256:m1").unwrap(), None);
}

#[test]
fn inheritance_picks_the_nearest_older_traced_version_of_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    for (r, d) in [
        ("reg/app:v1", "sha256:m1"),
        ("reg/app:v2", "sha256:m2"),
        ("reg/other:v1", "sha256:o1"),
        ("reg/app:v3", "sha256:m3"),
        ("reg/app:v4", "sha256:m4"),
    ] {
        db.commit_image(write_for(r, d)).unwrap();
    }
    let seqs: Vec<u64> = ["sha256:m1", "sha256:m2", "sha256:m3"]
        .iter()
        .map(|d| db.index_seq(d).unwrap().unwrap())
        .collect();
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2], "{seqs:?}");
    // Re-indexing keeps the first sequence number.
    db.commit_image(write_for("reg/app:v1", "sha256:m1"))
        .unwrap();
    assert_eq!(db.index_seq("sha256:m1").unwrap(), Some(seqs[0]));

    for (id, d) in [
        ("a", "sha256:m1"),
        ("b", "sha256:m2"),
        ("o", "sha256:o1"),
        ("d", "sha256:m4"),
    ] {
        db.fold_trace(&trace_of(id, d, &["a"])).unwrap();
    }
    let img = |d: &str| db.image(d).unwrap().unwrap();
    // v3: v2 and v1 are older and traced, v2 is nearer; v4 is newer; other
    // repositories never count.
    let found = db.image_ranks(&img("sha256:m3")).unwrap();
    assert_eq!(found.inherited_from.unwrap().manifest_digest, "sha256:m2");
    assert_eq!(found.traces, 0);
    assert_eq!(found.ranks.len(), 1);
    // Images with traces of their own use them.
    assert_eq!(
        db.image_ranks(&img("sha256:m2")).unwrap().inherited_from,
        None
    );
    // The oldest has nothing older.
    db.commit_image(write_for("reg/app:v0", "sha256:m0"))
        .unwrap();
    let v0 = db.image_ranks(&img("sha256:m0")).unwrap();
    assert_eq!(
        v0.inherited_from.map(|i| i.manifest_digest),
        Some("sha256:m4".to_string()),
        "v0 was indexed last, so it counts as the newest"
    );
    assert_eq!(db.older_traced_version(&img("sha256:m1")).unwrap(), None);
}
