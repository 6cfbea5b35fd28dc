#![allow(clippy::unwrap_used)]

use super::*;
use crate::registry::RegistryError;

fn key(offset: u64, len: u64) -> PieceKey {
    PieceKey {
        blob: format!("sha256:{}", "ab".repeat(32)),
        offset,
        len,
    }
}

fn data(k: &PieceKey) -> Vec<u8> {
    (0..k.len).map(|i| (i + k.offset) as u8).collect()
}

fn config(memory: u64, disk: u64) -> CacheConfig {
    CacheConfig {
        memory_bytes: ByteSize(memory),
        disk_bytes: ByteSize(disk),
        dir: None,
    }
}

/// Waits until the disk tier has written `files` files (writes run in the background).
async fn settle(cache: &PayloadCache, files: usize) {
    for _ in 0..200 {
        if cache.disk.as_ref().unwrap().usage().1 >= files {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the disk tier never held {files} files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_read_once() {
    let cache = Arc::new(PayloadCache::memory_only(1 << 20));
    let reads = Arc::new(AtomicU64::new(0));
    let k = key(100, 5000);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, reads, k) = (cache.clone(), reads.clone(), k.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&k, || async {
                        reads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(data(&k))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().as_ref(), data(&k).as_slice());
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!(s.misses, 1);
    assert_eq!(s.registry_bytes, 5000);
    assert_eq!(s.coalesced + s.memory_hits, 49);
}

#[tokio::test]
async fn errors_are_not_cached_and_lru_bounds_memory() {
    let cache = PayloadCache::memory_only(10_000);
    let k = key(0, 4000);
    let e = cache
        .get_or_fetch(&k, || async {
            Err(RangeError {
                error: RegistryError::Other("boom".into()),
                transient: true,
            })
        })
        .await
        .unwrap_err();
    assert!(e.transient);
    let b = cache.get_or_fetch(&k, || async { Ok(data(&k)) }).await;
    assert_eq!(b.unwrap().len(), 4000);
    for i in 1..5 {
        let k = key(i * 4000, 4000);
        cache
            .get_or_fetch(&k, || async { Ok(data(&k)) })
            .await
            .unwrap();
    }
    let s = cache.stats();
    assert!(s.memory_used <= 10_000, "{s:?}");
    assert_eq!(s.misses, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_survives_restart_and_drops_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<PieceKey> = (0..3).map(|i| key(i * 1000, 1000)).collect();
    {
        let cache = PayloadCache::open(&config(0, 1 << 20), dir.path()).unwrap();
        for k in &keys {
            cache
                .get_or_fetch(k, || async { Ok(data(k)) })
                .await
                .unwrap();
        }
        settle(&cache, 3).await;
    }
    // Damage: flip a data byte of file 0, cut file 1 short; add a stray file.
    let path = |k: &PieceKey| dir.path().join(k.file_name().unwrap());
    let mut raw = std::fs::read(path(&keys[0])).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(path(&keys[0]), raw).unwrap();
    let raw = std::fs::read(path(&keys[1])).unwrap();
    std::fs::write(path(&keys[1]), &raw[..raw.len() - 1]).unwrap();
    std::fs::write(dir.path().join(".tmp-junk"), b"x").unwrap();

    let cache = PayloadCache::open(&config(0, 1 << 20), dir.path()).unwrap();
    // The short file and the stray one were dropped at open.
    assert_eq!(cache.stats().dropped_files, 2);
    assert!(!path(&keys[1]).exists());
    let fetched = AtomicU64::new(0);
    for k in &keys {
        let b = cache
            .get_or_fetch(k, || async {
                fetched.fetch_add(1, Ordering::SeqCst);
                Ok(data(k))
            })
            .await
            .unwrap();
        assert_eq!(b.as_ref(), data(k).as_slice(), "never serve damaged bytes");
    }
    // Key 2 came from disk; 0 (bad digest) and 1 (dropped) from the "registry".
    let s = cache.stats();
    assert_eq!((s.disk_hits, s.misses), (1, 2), "{s:?}");
    assert_eq!(fetched.load(Ordering::SeqCst), 2);
    assert_eq!(s.dropped_files, 3);
}

#[test]
fn file_names_round_trip_and_reject_junk() {
    let k = key(7, 9);
    let name = k.file_name().unwrap();
    assert_eq!(PieceKey::from_file_name(&name), Some(k));
    for bad in [
        "x-1-2",
        "ab-1",
        &format!("{name}-3"),
        &name.replace("-7-", "-07-"),
    ] {
        assert_eq!(PieceKey::from_file_name(bad), None, "{bad}");
    }
    let odd = PieceKey {
        blob: "sha512:00".into(),
        offset: 0,
        len: 1,
    };
    assert_eq!(odd.file_name(), None);
}
