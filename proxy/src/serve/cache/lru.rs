//! A least-recently-used map bounded by the total size of its values (each
//! value's size is given on insert). Not synchronised: the caller wraps it in
//! a lock. Lookups and inserts are O(log n).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A size-bounded LRU map.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    entries: HashMap<K, Slot<V>>,
    /// Use tick → key, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    size: u64,
    capacity: u64,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    size: u64,
    tick: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `capacity` bytes of values.
    pub(crate) fn new(capacity: u64) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            size: 0,
            capacity,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value of `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        let tick = self.next_tick();
        let slot = self.entries.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, key.clone());
        Some(&slot.value)
    }

    /// Inserts `value` of `size` bytes (replacing any value of `key`), then
    /// evicts the least recently used entries until the total fits. Returns
    /// the evicted entries (the new one among them when it alone is larger
    /// than the capacity).
    pub(crate) fn insert(&mut self, key: K, value: V, size: u64) -> Vec<(K, V)> {
        let mut evicted = Vec::new();
        if let Some(old) = self.remove(&key) {
            evicted.push((key.clone(), old));
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(key, Slot { value, size, tick });
        self.size += size;
        while self.size > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&oldest) {
                self.size -= slot.size;
                evicted.push((oldest, slot.value));
            }
        }
        evicted
    }

    /// Removes `key`; its value, if it was there.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.tick);
        self.size -= slot.size;
        Some(slot.value)
    }

    /// Total size of the values held.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let mut l = Lru::new(10);
        assert!(l.insert("a", 1, 4).is_empty());
        assert!(l.insert("b", 2, 4).is_empty());
        assert_eq!(l.get(&"a"), Some(&1)); // b is now the oldest
        let out = l.insert("c", 3, 4);
        assert_eq!(out, vec![("b", 2)]);
        assert_eq!(l.size(), 8);
        assert_eq!(l.len(), 2);
        assert_eq!(l.get(&"b"), None);
    }

    #[test]
    fn too_large_a_value_is_not_kept_and_replacing_counts_once() {
        let mut l = Lru::new(10);
        l.insert("a", 1, 3);
        let out = l.insert("big", 9, 11);
        assert!(out.contains(&("big", 9)));
        assert!(l.size() <= 10);
        l = Lru::new(10);
        l.insert("a", 1, 6);
        let out = l.insert("a", 2, 6);
        assert_eq!(out, vec![("a", 1)]);
        assert_eq!(l.size(), 6);
        assert_eq!(l.remove(&"a"), Some(2));
        assert_eq!(l.size(), 0);
    }
}
