//! `ModelState`: what a node must hold to continue a run, and its hash; and
//! `SyncReply`, what a node sends a peer that asks for it.

use crate::delta::SignedDelta;

const GENESIS_DOMAIN: &str = "starling 2026-11 lineage genesis v1";
const LINEAGE_DOMAIN: &str = "starling 2026-11 lineage step v1";

/// Most deltas of the current round a sync reply carries.
pub const MAX_SYNC_DELTAS: usize = 256;

/// The answer to a state request: our state, the round from which we expect the
/// requester's deltas, and the deltas of our current round we hold (gossip does
/// not replay what was published before the requester subscribed).
#[derive(Clone, Debug, PartialEq)]
pub struct SyncReply {
    pub state: ModelState,
    pub expected_from: u64,
    pub deltas: Vec<SignedDelta>,
}

/// What a node checkpoints: the shared state and its own error-feedback residual
/// (what its lossy codec has not yet sent; empty when there is none).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub state: ModelState,
    pub residual: Vec<f32>,
}

/// Parameters θ_r at the start of `round`, the outer optimizer's momentum, and
/// the state's lineage.
///
/// The lineage is a hash chain over the merges that made the state: genesis,
/// then for each round its number and the ids of the deltas merged. Merging is
/// deterministic (canonical order, plain `f32` arithmetic), so two nodes with
/// the same lineage hold bit-identical states; and it costs one small hash per
/// round where hashing the state itself would read every parameter. Deltas
/// carry the lineage of the state they were trained from, which is how nodes
/// check that they agree.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub round: u64,
    pub lineage: [u8; 32],
    pub params: Vec<f32>,
    pub momentum: Vec<f32>,
}

impl ModelState {
    /// A fresh state at round 0.
    pub fn initial(params: Vec<f32>) -> Self {
        let momentum = vec![0.0; params.len()];
        let lineage = *blake3::Hasher::new_derive_key(GENESIS_DOMAIN).finalize().as_bytes();
        Self { round: 0, lineage, params, momentum }
    }

    /// Records that `deltas` (in merge order) were merged into the state of
    /// `round`: the state is now at `round + 1`, with its lineage extended.
    pub fn record_merge(&mut self, round: u64, deltas: &[SignedDelta]) {
        let mut h = blake3::Hasher::new_derive_key(LINEAGE_DOMAIN);
        h.update(&self.lineage);
        h.update(&round.to_le_bytes());
        h.update(&(deltas.len() as u64).to_le_bytes());
        for d in deltas {
            h.update(&d.id().0);
        }
        self.lineage = *h.finalize().as_bytes();
        self.round = round + 1;
    }

    /// A domain-separated BLAKE3 hash of the round, parameters and momentum: what
    /// a transferred state is checked against.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 model state v1");
        h.update(&self.round.to_le_bytes());
        h.update(&(self.params.len() as u64).to_le_bytes());
        hash_f32s(&mut h, &self.params);
        hash_f32s(&mut h, &self.momentum);
        *h.finalize().as_bytes()
    }

    /// Hash of the parameters alone, for logs and status.
    pub fn params_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 parameters v1");
        hash_f32s(&mut h, &self.params);
        *h.finalize().as_bytes()
    }
}

/// Feeds little-endian floats to a hasher in large chunks (BLAKE3 is several
/// times faster on big inputs than four bytes at a time).
fn hash_f32s(h: &mut blake3::Hasher, values: &[f32]) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    for chunk in values.chunks(16 * 1024) {
        buffer.clear();
        buffer.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, RunId};
    use ed25519_dalek::SigningKey;

    fn delta(i: u8, value: f32) -> SignedDelta {
        let key = SigningKey::from_bytes(&[i; 32]);
        SignedDelta::sign(&key, RunId([0; 32]), 0, [0; 32], 1, Codec::Dense, Codec::Dense.encode(&[value]))
    }

    #[test]
    fn the_same_merges_give_the_same_lineage_and_different_ones_another() {
        let (a, b) = (delta(1, 1.0), delta(2, 2.0));
        let mut x = ModelState::initial(vec![0.0]);
        let mut y = ModelState::initial(vec![0.0]);
        assert_eq!(x.lineage, y.lineage, "every node starts from the same genesis");
        x.record_merge(0, &[a.clone(), b.clone()]);
        y.record_merge(0, &[a.clone(), b]);
        assert_eq!((x.round, x.lineage), (1, y.lineage));
        let mut z = ModelState::initial(vec![0.0]);
        z.record_merge(0, &[a]);
        assert_ne!(z.lineage, x.lineage, "a missed delta shows in the lineage");
    }
}
