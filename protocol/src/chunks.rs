//! Chunked state transfer: a model state cut into fixed-size chunks, each
//! hashed, under one root hash that peers announce; a syncing node picks the
//! root several peers agree on and checks every chunk it fetches against it.

use std::collections::BTreeMap;

use crate::delta::SignedDelta;
use crate::keys::PublicKey;
use crate::snapshot::ModelState;
use crate::state_file::{self, Layout, StateFileError};

/// Bytes of every chunk but the last.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Most chunks a manifest may list (a 4 GiB state): bounds what a peer can make us allocate.
pub const MAX_CHUNKS: usize = 4096;

const CHUNK_DOMAIN: &str = "starling 2026-12 state file chunk v2";
const ROOT_DOMAIN: &str = "starling 2026-12 state file root v2";

/// What a peer announces about the state it serves: its round and lineage, its
/// encoded length and the hash of each chunk. Its [`StateManifest::root`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateManifest {
    pub round: u64,
    pub lineage: [u8; 32],
    pub total_len: u64,
    pub chunk_hashes: Vec<[u8; 32]>,
}

/// Why a manifest, a chunk or an assembled state was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("manifest lists {listed} chunks for {total_len} bytes, expected {expected}")]
    ChunkCount { listed: usize, total_len: u64, expected: usize },
    #[error("manifest announces a state of {len} bytes, over the limit of {limit}")]
    TooLarge { len: u64, limit: usize },
    #[error("chunk {index} is out of range ({count} chunks)")]
    OutOfRange { index: u32, count: usize },
    #[error("chunk {index} does not match its hash in the manifest")]
    HashMismatch { index: u32 },
    #[error("assembled state does not decode: {0}")]
    Decode(#[from] StateFileError),
    #[error("assembled state is round {got}, the manifest announced {announced}")]
    RoundMismatch { got: u64, announced: u64 },
}

/// The hash of one chunk's bytes.
pub fn chunk_hash(bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(CHUNK_DOMAIN);
    h.update(bytes);
    *h.finalize().as_bytes()
}

impl StateManifest {
    /// The state hash peers announce and agree on: over the round, lineage,
    /// length and every chunk hash, so one root pins every byte.
    pub fn root(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(ROOT_DOMAIN);
        h.update(&self.round.to_le_bytes());
        h.update(&self.lineage);
        h.update(&self.total_len.to_le_bytes());
        h.update(&(self.chunk_hashes.len() as u64).to_le_bytes());
        for c in &self.chunk_hashes {
            h.update(c);
        }
        *h.finalize().as_bytes()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunk_hashes.len()
    }

    /// Checks that the manifest is consistent and no larger than `max_state_bytes`.
    pub fn check(&self, max_state_bytes: usize) -> Result<(), ChunkError> {
        if self.total_len > max_state_bytes as u64 {
            return Err(ChunkError::TooLarge { len: self.total_len, limit: max_state_bytes });
        }
        let expected = (self.total_len as usize).div_ceil(CHUNK_BYTES);
        if self.chunk_hashes.len() != expected || expected > MAX_CHUNKS {
            return Err(ChunkError::ChunkCount {
                listed: self.chunk_hashes.len(),
                total_len: self.total_len,
                expected,
            });
        }
        Ok(())
    }

    /// The manifest of the state file `bytes` of a state of `round` and `lineage`.
    pub fn of_bytes(round: u64, lineage: [u8; 32], bytes: &[u8]) -> Self {
        let mut hasher = ChunkHasher::default();
        std::io::Write::write_all(&mut hasher, bytes).expect("hashing takes every byte");
        hasher.finish(round, lineage)
    }

    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> usize {
        let start = index * CHUNK_BYTES;
        (self.total_len as usize).saturating_sub(start).min(CHUNK_BYTES)
    }
}

/// Hashes a state file's chunks as its bytes stream past (to disk, or into
/// memory), so that a node learns its checkpoint's manifest while writing it.
#[derive(Default)]
pub struct ChunkHasher {
    hashes: Vec<[u8; 32]>,
    current: Option<blake3::Hasher>,
    in_chunk: usize,
    total: u64,
}

impl ChunkHasher {
    /// The manifest of the bytes written, a state of `round` and `lineage`.
    pub fn finish(mut self, round: u64, lineage: [u8; 32]) -> StateManifest {
        if let Some(h) = self.current.take() {
            self.hashes.push(*h.finalize().as_bytes());
        }
        StateManifest { round, lineage, total_len: self.total, chunk_hashes: self.hashes }
    }
}

impl std::io::Write for ChunkHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (CHUNK_BYTES - self.in_chunk).min(rest.len());
            let h = self.current.get_or_insert_with(|| blake3::Hasher::new_derive_key(CHUNK_DOMAIN));
            h.update(&rest[..take]);
            self.in_chunk += take;
            if self.in_chunk == CHUNK_BYTES {
                self.hashes.push(*self.current.take().expect("just used").finalize().as_bytes());
                self.in_chunk = 0;
            }
            rest = &rest[take..];
        }
        self.total += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A state ready to serve from memory: its state file, cut into chunks. (A
/// node serves its checkpoint file from disk instead; the simulator and tests
/// use this.)
#[derive(Clone, Debug)]
pub struct StateSnapshot {
    pub manifest: StateManifest,
    pub root: [u8; 32],
    bytes: Vec<u8>,
}

impl StateSnapshot {
    /// Encodes `state` as the state file of `layout` and hashes its chunks.
    pub fn of(state: &ModelState, layout: &Layout) -> Self {
        let bytes = state_file::encode_state(layout, state);
        let manifest = StateManifest::of_bytes(state.round, state.lineage, &bytes);
        Self { root: manifest.root(), manifest, bytes }
    }

    /// As [`StateSnapshot::of`], with the model's values as one flat tensor
    /// (for the simulator, whose models have no tensor names).
    pub fn of_flat(state: &ModelState) -> Self {
        Self::of(state, &Layout::flat(state.params.len()))
    }

    /// The bytes of chunk `index`, if there is one.
    pub fn chunk(&self, index: u32) -> Option<&[u8]> {
        self.bytes.chunks(CHUNK_BYTES).nth(index as usize)
    }
}

/// The most keys a [`StateOffer`] lists as expected (a swarm's `max_peers`).
pub const MAX_SYNC_EXPECTED: usize = 4096;

/// What a peer answers to "what state do you serve?": the manifest, the round
/// from which it expects the asker's deltas, the deltas of its current round
/// (gossip does not replay what was published before the asker subscribed),
/// and the keys it expects to contribute to that round, itself among them.
///
/// A node that installs the state waits in its round for the keys most of its
/// sources expect, as they do, rather than for every peer it happens to be
/// connected to (a silent one, or one still syncing, would hold the round to
/// its deadline) or only for the senders of the deltas it holds (a round
/// closed on those would leave out a delta still on its way).
#[derive(Clone, Debug, PartialEq)]
pub struct StateOffer {
    pub manifest: StateManifest,
    pub expected_from: u64,
    pub deltas: Vec<SignedDelta>,
    pub expected: Vec<PublicKey>,
}

/// Chunks of one announced state, gathered from any peers, each verified on arrival.
#[derive(Clone, Debug)]
pub struct ChunkAssembly {
    manifest: StateManifest,
    root: [u8; 32],
    chunks: Vec<Option<Vec<u8>>>,
    have: usize,
}

impl ChunkAssembly {
    /// An empty assembly for a manifest that passed [`StateManifest::check`].
    pub fn new(manifest: StateManifest) -> Self {
        let chunks = vec![None; manifest.chunk_count()];
        Self { root: manifest.root(), manifest, chunks, have: 0 }
    }

    pub fn root(&self) -> [u8; 32] {
        self.root
    }

    pub fn manifest(&self) -> &StateManifest {
        &self.manifest
    }

    /// Indices of the chunks not yet held, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().enumerate().filter(|(_, c)| c.is_none()).map(|(i, _)| i as u32)
    }

    /// How many chunks are held, of how many.
    pub fn progress(&self) -> (usize, usize) {
        (self.have, self.chunks.len())
    }

    pub fn is_complete(&self) -> bool {
        self.have == self.chunks.len()
    }

    /// Keeps chunk `index` if it matches its hash; a wrong chunk is refused and
    /// changes nothing.
    pub fn insert(&mut self, index: u32, bytes: Vec<u8>) -> Result<(), ChunkError> {
        let count = self.chunks.len();
        let Some(&expected) = self.manifest.chunk_hashes.get(index as usize) else {
            return Err(ChunkError::OutOfRange { index, count });
        };
        if bytes.len() != self.manifest.chunk_len(index as usize) || chunk_hash(&bytes) != expected {
            return Err(ChunkError::HashMismatch { index });
        }
        let slot = &mut self.chunks[index as usize];
        if slot.is_none() {
            self.have += 1;
        }
        *slot = Some(bytes);
        Ok(())
    }

    /// The state, once every chunk is held, for a model of `param_count`
    /// parameters. Each chunk is let go once copied, so the whole costs the
    /// state file and the state, not twice the file.
    pub fn finish(self, param_count: usize) -> Result<ModelState, ChunkError> {
        let mut bytes = Vec::with_capacity(self.manifest.total_len as usize);
        for c in self.chunks.into_iter().flatten() {
            bytes.extend_from_slice(&c);
        }
        let state = state_file::decode_state(&bytes, param_count)?;
        if state.round != self.manifest.round || state.lineage != self.manifest.lineage {
            return Err(ChunkError::RoundMismatch { got: state.round, announced: self.manifest.round });
        }
        Ok(state)
    }
}

/// Which announced state to fetch, by a rule every node applies alike: among
/// the roots announced by at least `required` distinct peers, the highest
/// round; then the most peers; then the smaller root. `offers` maps each peer
/// to the (round, root) it announced. None when no root has enough support.
pub fn choose_root<P: Ord>(
    offers: &BTreeMap<P, (u64, [u8; 32])>,
    required: usize,
) -> Option<(u64, [u8; 32])> {
    best_supported(offers, required, |(a, na), (b, nb)| a.0.cmp(&b.0).then(na.cmp(nb)))
}

/// Like [`choose_root`], but the root announced by the most peers wins, then
/// the highest round: for a node repairing a divergence, where a root claimed
/// far ahead by a few colluders must not beat the lineage most peers hold.
pub fn choose_root_by_support<P: Ord>(
    offers: &BTreeMap<P, (u64, [u8; 32])>,
    required: usize,
) -> Option<(u64, [u8; 32])> {
    best_supported(offers, required, |(a, na), (b, nb)| na.cmp(nb).then(a.0.cmp(&b.0)))
}

type Supported = ((u64, [u8; 32]), usize);

/// The announced (round, root) with at least `required` peers behind it that
/// `order` ranks highest; ties go to the smaller root.
fn best_supported<P: Ord>(
    offers: &BTreeMap<P, (u64, [u8; 32])>,
    required: usize,
    order: impl Fn(&Supported, &Supported) -> std::cmp::Ordering,
) -> Option<(u64, [u8; 32])> {
    let mut support: BTreeMap<(u64, [u8; 32]), usize> = BTreeMap::new();
    for offer in offers.values() {
        *support.entry(*offer).or_default() += 1;
    }
    support
        .into_iter()
        .filter(|(_, n)| *n >= required.max(1))
        .max_by(|a, b| order(a, b).then(b.0 .1.cmp(&a.0 .1)))
        .map(|(offer, _)| offer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(n: usize, round: u64) -> ModelState {
        let mut s = ModelState::initial((0..n).map(|i| i as f32 * 0.5).collect());
        s.round = round;
        s
    }

    #[test]
    fn a_state_survives_chunking_in_any_order() {
        // Large enough for three chunks.
        let original = state(300_000, 7);
        let snapshot = StateSnapshot::of(&original, &Layout::flat(300_000));
        assert_eq!(snapshot.manifest.chunk_count(), 3);
        snapshot.manifest.check(original.params.len() * 8 + 1024).unwrap();
        let mut assembly = ChunkAssembly::new(snapshot.manifest.clone());
        for i in [2u32, 0, 1] {
            assembly.insert(i, snapshot.chunk(i).unwrap().to_vec()).unwrap();
        }
        assert!(assembly.is_complete());
        assert_eq!(assembly.finish(300_000).unwrap(), original);
    }

    #[test]
    fn hashing_while_streaming_gives_the_manifest_of_the_bytes() {
        let s = state(300_000, 4);
        let bytes = state_file::encode_state(&Layout::flat(300_000), &s);
        let mut hasher = ChunkHasher::default();
        for piece in bytes.chunks(333_333) {
            std::io::Write::write_all(&mut hasher, piece).unwrap();
        }
        let manifest = hasher.finish(4, s.lineage);
        assert_eq!(manifest, StateManifest::of_bytes(4, s.lineage, &bytes));
        assert_eq!(manifest.total_len, bytes.len() as u64);
        manifest.check(bytes.len()).unwrap();
    }

    #[test]
    fn a_wrong_chunk_is_refused_and_changes_nothing() {
        let snapshot = StateSnapshot::of(&state(300_000, 1), &Layout::flat(300_000));
        let mut assembly = ChunkAssembly::new(snapshot.manifest.clone());
        let mut bad = snapshot.chunk(1).unwrap().to_vec();
        bad[10] ^= 1;
        assert_eq!(assembly.insert(1, bad), Err(ChunkError::HashMismatch { index: 1 }));
        assert_eq!(assembly.insert(9, vec![]), Err(ChunkError::OutOfRange { index: 9, count: 3 }));
        assert_eq!(assembly.missing().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn a_manifest_that_lies_about_its_size_is_refused() {
        let mut manifest = StateSnapshot::of(&state(10, 1), &Layout::flat(10)).manifest;
        assert!(manifest.check(1 << 20).is_ok());
        manifest.total_len = 5 * CHUNK_BYTES as u64;
        assert!(matches!(manifest.check(usize::MAX), Err(ChunkError::ChunkCount { .. })));
        assert!(matches!(manifest.check(1024), Err(ChunkError::TooLarge { .. })));
    }

    #[test]
    fn the_root_changes_with_any_chunk() {
        let a = StateSnapshot::of(&state(10, 1), &Layout::flat(10));
        let mut b = state(10, 1);
        b.params[3] = 9.0;
        assert_ne!(a.root, StateSnapshot::of(&b, &Layout::flat(10)).root);
        assert_eq!(a.root, StateSnapshot::of(&state(10, 1), &Layout::flat(10)).root);
    }

    #[test]
    fn the_root_several_peers_announce_wins_over_a_lone_newer_one() {
        let (x, y) = ([1; 32], [2; 32]);
        let offers: BTreeMap<u8, _> = [(1, (5, x)), (2, (5, x)), (3, (9, y))].into();
        assert_eq!(choose_root(&offers, 2), Some((5, x)));
        assert_eq!(choose_root(&offers, 1), Some((9, y)));
        let split: BTreeMap<u8, _> = [(1, (5, x)), (2, (5, y))].into();
        assert_eq!(choose_root(&split, 2), None);
        assert_eq!(choose_root_by_support(&offers, 1), Some((5, x)), "more peers beat a higher round");
    }
}
