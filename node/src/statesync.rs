//! The states this node serves to syncing peers: a snapshot (encoding and
//! chunk hashes) of each of its last few states, built (on a worker) when
//! first asked for.
//! Which state to fetch, from whom, and when, is the engine's
//! ([`starling_protocol::engine`]); this is only the data it serves.

use std::{collections::VecDeque, sync::Arc};

use starling_protocol::StateSnapshot;

/// How many snapshots a node keeps serving: a syncing node may still be
/// fetching the state of a round or two ago.
const SERVED_SNAPSHOTS: usize = 3;

/// The snapshots this node serves, newest last, built when first asked for.
#[derive(Default)]
pub struct SnapshotCache {
    snapshots: VecDeque<Arc<StateSnapshot>>,
}

impl SnapshotCache {
    /// The snapshot of the state of `round` with `lineage`, if one is held.
    pub fn newest_of(&self, round: u64, lineage: &[u8; 32]) -> Option<Arc<StateSnapshot>> {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.manifest.round == round && &s.manifest.lineage == lineage)
            .cloned()
    }

    /// Keeps a snapshot to serve, newest last, forgetting the oldest beyond a few.
    pub fn insert(&mut self, snapshot: Arc<StateSnapshot>) {
        self.snapshots.retain(|s| s.root != snapshot.root);
        self.snapshots.push_back(snapshot);
        while self.snapshots.len() > SERVED_SNAPSHOTS {
            self.snapshots.pop_front();
        }
    }

    /// Chunk `index` of the snapshot with this root, if it is still held.
    pub fn chunk(&self, root: &[u8; 32], index: u32) -> Option<Vec<u8>> {
        self.snapshots.iter().find(|s| &s.root == root)?.chunk(index).map(<[u8]>::to_vec)
    }
}

/// Lowercase hex of the first 8 bytes, for logs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::ModelState;

    #[test]
    fn the_cache_finds_a_state_by_round_and_lineage_and_keeps_the_last_few() {
        let mut cache = SnapshotCache::default();
        let mut state = ModelState::initial(vec![0.5; 16]);
        let mut roots = Vec::new();
        for round in 0..=SERVED_SNAPSHOTS as u64 {
            state.round = round;
            let snapshot = Arc::new(StateSnapshot::of(&state));
            roots.push(snapshot.root);
            cache.insert(snapshot.clone());
            cache.insert(snapshot);
            assert_eq!(cache.newest_of(round, &state.lineage).map(|s| s.root), Some(roots[round as usize]));
        }
        assert!(cache.newest_of(0, &state.lineage).is_none(), "the oldest was let go");
        assert!(cache.chunk(&roots[0], 0).is_none());
        assert!(cache.chunk(&roots[1], 0).is_some());
        assert!(cache.newest_of(1, &[9; 32]).is_none(), "another lineage is another state");
    }
}
