//! Collections of the node driver that peers feed, each with a stated bound
//! and what gives way past it: counts per key (refusals per peer and reason)
//! and sets that keep the newest (peers met, peers blocked), with the bounds
//! the driver uses.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most peers remembered as met, for the scores in the outcome.
pub(super) const MAX_MET_PEERS: usize = 1024;

/// Most of our sync requests in flight. The engine asks at most 64 peers for
/// offers and keeps 4 chunk requests per source in flight, so an honest sync
/// stays far below; past it, a request is failed at once rather than sent.
pub(super) const MAX_SYNC_REQUESTS: usize = 1024;

/// Most peers blocked for a key a private run does not allow. Such a peer is
/// refused on every connection whatever the block list says; the list only
/// spares the handshakes, so past the bound the oldest is unblocked.
pub(super) const MAX_REFUSED_BLOCKS: usize = 4096;

/// Counts per key, at most `max` keys. A new key past the bound takes the
/// place of the smallest count (the lowest key among equals): a flood of new
/// keys churns among the least counted and never pushes out a peer that was
/// refused often, which is the one worth remembering.
#[derive(Clone, Debug)]
pub struct BoundedCounts<K> {
    max: usize,
    counts: BTreeMap<K, u64>,
}

impl<K: Ord + Clone> BoundedCounts<K> {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1), counts: BTreeMap::new() }
    }

    /// Adds `by` to `key`'s count; returns the key evicted to make room, if any.
    pub fn add(&mut self, key: K, by: u64) -> Option<K> {
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_add(by);
            return None;
        }
        let evicted = (self.counts.len() >= self.max).then(|| self.evict_smallest()).flatten();
        self.counts.insert(key, by);
        evicted
    }

    /// Sets counts loaded from disk, keeping the `max` largest.
    pub fn load(&mut self, counts: impl IntoIterator<Item = (K, u64)>) {
        for (key, count) in counts {
            if self.counts.len() >= self.max {
                match self.counts.iter().min_by_key(|(_, &c)| c) {
                    Some((_, &smallest)) if smallest >= count => continue,
                    _ => {
                        self.evict_smallest();
                    }
                }
            }
            self.counts.insert(key, count);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &u64)> {
        self.counts.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.counts.keys()
    }

    fn evict_smallest(&mut self) -> Option<K> {
        let key = self.counts.iter().min_by_key(|(_, &c)| c).map(|(k, _)| k.clone())?;
        self.counts.remove(&key);
        Some(key)
    }
}

/// A set of at most `max` items; past the bound the oldest inserted goes.
#[derive(Clone, Debug)]
pub struct RecentSet<T> {
    max: usize,
    items: BTreeSet<T>,
    order: VecDeque<T>,
}

impl<T: Ord + Clone> RecentSet<T> {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1), items: BTreeSet::new(), order: VecDeque::new() }
    }

    /// Inserts `item` (a no-op when held); returns the item evicted to make room, if any.
    pub fn insert(&mut self, item: T) -> Option<T> {
        if self.items.contains(&item) {
            return None;
        }
        let mut evicted = None;
        if self.items.len() >= self.max {
            evicted = self.order.pop_front();
            if let Some(oldest) = &evicted {
                self.items.remove(oldest);
            }
        }
        self.items.insert(item.clone());
        self.order.push_back(item);
        evicted
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_count_map_evicts_the_smallest_count_and_keeps_the_worst_offenders() {
        let mut counts = BoundedCounts::new(3);
        counts.add("a", 5);
        counts.add("b", 1);
        counts.add("c", 2);
        assert_eq!(counts.add("a", 1), None, "a held key only counts up");
        assert_eq!(counts.add("d", 1), Some("b"), "the smallest count gives way");
        // A flood of new keys churns among the least counted.
        for key in ["e", "f", "g", "h"] {
            counts.add(key, 1);
        }
        assert_eq!(counts.iter().count(), 3);
        let held: BTreeMap<_, _> = counts.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(held.get("a"), Some(&6));
        assert_eq!(held.get("c"), Some(&2));
        assert_eq!(held.get("h"), Some(&1));
    }

    #[test]
    fn loading_more_counts_than_the_bound_keeps_the_largest() {
        let mut counts = BoundedCounts::new(2);
        counts.load([("a", 3), ("b", 1), ("c", 7), ("d", 2)]);
        let held: Vec<_> = counts.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(held, vec![("a", 3), ("c", 7)]);
    }

    #[test]
    fn a_full_recent_set_forgets_the_oldest() {
        let mut set = RecentSet::new(3);
        for item in [1, 2, 3] {
            assert_eq!(set.insert(item), None);
        }
        assert_eq!(set.insert(1), None, "held already: not moved to the back");
        assert_eq!(set.insert(4), Some(1));
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        set.insert(5);
        set.insert(6);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![4, 5, 6]);
        assert_eq!(set.iter().count(), 3);
    }
}
