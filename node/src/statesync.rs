//! The states this node serves to syncing peers: the state files of its last
//! few states (its checkpoints', or written to be served), whose chunks are
//! read straight from disk when asked for: no copy of a state in memory.
//! Which state to fetch, from whom, and when, is the engine's
//! ([`starling_protocol::engine`]); this is only the data it serves.

use std::{collections::VecDeque, os::unix::fs::FileExt, path::PathBuf, sync::Arc};

use starling_protocol::{chunks::CHUNK_BYTES, StateManifest};
use starling_storage::ServedFile;

/// How many states a node keeps serving: a syncing node may still be
/// fetching the state of a round or two ago (if its file is still there).
const SERVED_STATES: usize = 3;

/// A state this node serves: its manifest, root and file.
#[derive(Debug)]
pub struct ServedState {
    pub manifest: StateManifest,
    pub root: [u8; 32],
    path: PathBuf,
}

impl ServedState {
    /// Chunk `index`, read from the file; `None` when out of range or the
    /// file is gone (newer checkpoints replaced it) or changed.
    fn chunk(&self, index: u32) -> Option<Vec<u8>> {
        let len = self.manifest.chunk_len(index as usize);
        if index as usize >= self.manifest.chunk_count() || len == 0 {
            return None;
        }
        let file = std::fs::File::open(&self.path).ok()?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, u64::from(index) * CHUNK_BYTES as u64).ok()?;
        Some(bytes)
    }
}

/// The states this node serves, newest last.
#[derive(Default)]
pub struct SnapshotCache {
    snapshots: VecDeque<Arc<ServedState>>,
}

impl SnapshotCache {
    /// The served state of `round` with `lineage`, if one is held.
    pub fn newest_of(&self, round: u64, lineage: &[u8; 32]) -> Option<Arc<ServedState>> {
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.manifest.round == round && &s.manifest.lineage == lineage)
            .cloned()
    }

    /// Serves a state file, newest last, forgetting the oldest beyond a few.
    pub fn insert(&mut self, file: ServedFile) {
        let root = file.manifest.root();
        self.snapshots.retain(|s| s.root != root);
        self.snapshots.push_back(Arc::new(ServedState { root, manifest: file.manifest, path: file.path }));
        while self.snapshots.len() > SERVED_STATES {
            self.snapshots.pop_front();
        }
    }

    /// Chunk `index` of the state with this root, if it is still served.
    pub fn chunk(&self, root: &[u8; 32], index: u32) -> Option<Vec<u8>> {
        self.snapshots.iter().find(|s| &s.root == root)?.chunk(index)
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
    fn the_cache_serves_chunks_from_the_files_of_the_last_few_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = starling_storage::Store::open(dir.path()).unwrap();
        let mut cache = SnapshotCache::default();
        let mut state = ModelState::initial(vec![0.5; 300_000]);
        let mut roots = Vec::new();
        for round in 0..=SERVED_STATES as u64 {
            state.round = round;
            let file = store.serve_state(&state).unwrap();
            roots.push(file.manifest.root());
            cache.insert(file.clone());
            cache.insert(file);
            assert_eq!(cache.newest_of(round, &state.lineage).map(|s| s.root), Some(roots[round as usize]));
        }
        assert!(cache.newest_of(0, &state.lineage).is_none(), "the oldest was let go");
        assert!(cache.chunk(&roots[0], 0).is_none());
        assert!(cache.newest_of(1, &[9; 32]).is_none(), "another lineage is another state");
        // The chunks are the state file's, and check against the manifest.
        let served = cache.newest_of(SERVED_STATES as u64, &state.lineage).unwrap();
        let mut assembly = starling_protocol::ChunkAssembly::new(served.manifest.clone());
        for index in 0..served.manifest.chunk_count() as u32 {
            assembly.insert(index, cache.chunk(&served.root, index).unwrap()).unwrap();
        }
        assert!(cache.chunk(&served.root, served.manifest.chunk_count() as u32).is_none());
        assert_eq!(assembly.finish(300_000).unwrap(), state);
        // A file written only to be served (round 1's) is gone: its chunks are unavailable.
        assert!(cache.chunk(&roots[1], 0).is_none(), "only the last two served files are kept");
    }
}
