//! `ModelState`: what a node must hold to continue a run, and its hash; and
//! `SyncReply`, what a node sends a peer that asks for it.

use crate::delta::SignedDelta;

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

/// Parameters θ_r at the start of `round`, and the outer optimizer's momentum.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub round: u64,
    pub params: Vec<f32>,
    pub momentum: Vec<f32>,
}

impl ModelState {
    /// A fresh state at round 0.
    pub fn initial(params: Vec<f32>) -> Self {
        let momentum = vec![0.0; params.len()];
        Self { round: 0, params, momentum }
    }

    /// A domain-separated BLAKE3 hash of the round, parameters and momentum.
    /// Nodes that merged the same deltas hold the same hash.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 model state v1");
        h.update(&self.round.to_le_bytes());
        h.update(&(self.params.len() as u64).to_le_bytes());
        for v in self.params.iter().chain(&self.momentum) {
            h.update(&v.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// Hash of the parameters alone, for logs and status.
    pub fn params_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 parameters v1");
        for v in &self.params {
            h.update(&v.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }
}
