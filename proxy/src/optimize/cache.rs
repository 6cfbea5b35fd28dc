//! A bounded, thread-safe cache of built plans with least-recently-used
//! eviction, so a second worker asking for the same bundle gets it without
//! recomputation.

use super::{optimize, BundlePlan, OptimizeError, OptimizeInput};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What a plan depends on. Built from digests only, so a server can look the
/// cache up before loading any table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanKey {
    wanted: String,
    held: Vec<String>,
    held_payloads: [u8; 32],
    ranks_version: u64,
    unordered: bool,
}

impl PlanKey {
    /// The key of a request for `wanted` (manifest digest) from a worker
    /// holding the images `held` (manifest digests, any order, duplicates
    /// allowed) and the payloads `held_payloads`, with the ranks at
    /// `ranks_version` (the caller bumps it whenever the wanted image's ranks
    /// change).
    pub fn new<S: AsRef<str>>(
        wanted: &str,
        held: impl IntoIterator<Item = S>,
        held_payloads: &HashSet<[u8; 32]>,
        ranks_version: u64,
    ) -> PlanKey {
        let mut held: Vec<String> = held.into_iter().map(|s| s.as_ref().to_string()).collect();
        held.sort_unstable();
        held.dedup();
        let mut payloads: Vec<&[u8; 32]> = held_payloads.iter().collect();
        payloads.sort_unstable();
        let mut hasher = Sha256::new();
        for p in payloads {
            hasher.update(p);
        }
        PlanKey {
            wanted: wanted.to_string(),
            held,
            held_payloads: hasher.finalize().into(),
            ranks_version,
            unordered: false,
        }
    }

    /// The same key for a plan built with ranks ignored (`unordered`: the
    /// payloads in layer order, for trace collection) or not.
    pub fn with_unordered(mut self, unordered: bool) -> PlanKey {
        self.unordered = unordered;
        self
    }

    /// The key of `input`, with its ranks at `ranks_version`.
    pub fn for_input(input: &OptimizeInput<'_>, ranks_version: u64) -> PlanKey {
        PlanKey::new(
            &input.wanted.manifest_digest,
            input
                .held
                .iter()
                .map(|(image, _)| image.manifest_digest.as_str()),
            input.held_payloads,
            ranks_version,
        )
    }

    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.wanted.len()
            + self
                .held
                .iter()
                .map(|h| h.len() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// Counters of a [`PlanCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Plans evicted to respect the bounds.
    pub evictions: u64,
    /// Plans held now.
    pub entries: usize,
    /// Approximate bytes held now.
    pub bytes: usize,
}

/// A cache of plans bounded by entry count and approximate size, evicting the
/// least recently used plan first. Cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct PlanCache {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<PlanKey, Slot>,
    /// Last-use tick → key, oldest first.
    recency: BTreeMap<u64, PlanKey>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

#[derive(Debug)]
struct Slot {
    plan: Arc<BundlePlan>,
    bytes: usize,
    tick: u64,
}

impl Inner {
    /// Marks `key` (present) as just used.
    fn touch(&mut self, key: &PlanKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.slots.get_mut(key) {
            let old = std::mem::replace(&mut slot.tick, tick);
            if let Some(k) = self.recency.remove(&old) {
                self.recency.insert(tick, k);
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.recency.pop_first() else {
            return false;
        };
        if let Some(slot) = self.slots.remove(&key) {
            self.bytes = self.bytes.saturating_sub(slot.bytes);
            self.evictions += 1;
        }
        true
    }
}

impl PlanCache {
    /// A cache holding at most `max_entries` plans and about `max_bytes`
    /// bytes of them. A plan larger than `max_bytes` is never kept.
    pub fn new(max_entries: usize, max_bytes: usize) -> PlanCache {
        PlanCache {
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; if something did, the
        // counters may be off but the map is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plan cached under `key`, if any (counts a hit or a miss).
    pub fn get(&self, key: &PlanKey) -> Option<Arc<BundlePlan>> {
        let mut inner = self.lock();
        let plan = inner.slots.get(key).map(|slot| Arc::clone(&slot.plan));
        match plan {
            Some(plan) => {
                inner.hits += 1;
                inner.touch(key);
                Some(plan)
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Stores `plan` under `key` and returns the plan now cached there: if
    /// another thread stored one first, that one (so concurrent requests
    /// share one plan). Evicts least recently used plans to respect the
    /// bounds; a plan that alone exceeds them is returned but not kept.
    pub fn insert(&self, key: PlanKey, plan: Arc<BundlePlan>) -> Arc<BundlePlan> {
        let bytes = plan.approx_bytes() + key.approx_bytes();
        let mut inner = self.lock();
        if let Some(existing) = inner.slots.get(&key).map(|slot| Arc::clone(&slot.plan)) {
            inner.touch(&key);
            return existing;
        }
        if self.max_entries == 0 || bytes > self.max_bytes {
            return plan;
        }
        while inner.slots.len() >= self.max_entries
            || inner.bytes.saturating_add(bytes) > self.max_bytes
        {
            if !inner.evict_oldest() {
                break;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.recency.insert(tick, key.clone());
        inner.bytes += bytes;
        inner.slots.insert(
            key,
            Slot {
                plan: Arc::clone(&plan),
                bytes,
                tick,
            },
        );
        plan
    }

    /// The plan cached under `key`, or the one `build` makes (then cached).
    /// `build` runs without the lock held, so a slow build never blocks
    /// other requests; two threads missing the same key at once may both
    /// build, and both get the plan stored first.
    ///
    /// # Errors
    /// Whatever `build` returns; nothing is cached then.
    pub fn get_or_try_insert_with<E>(
        &self,
        key: PlanKey,
        build: impl FnOnce() -> Result<BundlePlan, E>,
    ) -> Result<Arc<BundlePlan>, E> {
        if let Some(plan) = self.get(&key) {
            return Ok(plan);
        }
        let plan = Arc::new(build()?);
        Ok(self.insert(key, plan))
    }

    /// The plan for `input` with its ranks at `ranks_version`, from the cache
    /// or built by [`optimize`].
    ///
    /// # Errors
    /// As [`optimize`].
    pub fn plan(
        &self,
        input: &OptimizeInput<'_>,
        ranks_version: u64,
    ) -> Result<Arc<BundlePlan>, OptimizeError> {
        let key = PlanKey::for_input(input, ranks_version);
        self.get_or_try_insert_with(key, || optimize(input))
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            evictions: inner.evictions,
            entries: inner.slots.len(),
            bytes: inner.bytes,
        }
    }
}
