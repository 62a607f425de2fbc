//! Starling's protocol core: pure, sans-IO, deterministic.
//!
//! Everything two nodes must agree on lives here: the [`RunSpec`] that defines a
//! swarm, the [`SignedDelta`] that carries one node's contribution to a round,
//! the payload [`Codec`]s, the [`AggregationRule`]s and [`OuterOptimizer`] that
//! turn a round's deltas into the next parameters, [`RoundState`], the
//! round state machine, and the [`Engine`] around it that is a node's whole
//! protocol (phases, rounds, state sync). Nothing in this crate touches a socket, a file or a
//! clock: time arrives as a millisecond timestamp on each event, so the same
//! code runs in a real node and in the simulator.

pub mod accountability;
pub mod aggregate;
pub mod chunks;
pub mod codec;
pub mod consensus;
pub mod data_spec;
pub mod delta;
pub mod engine;
pub mod group;
pub mod keys;
pub mod leave;
pub mod model_spec;
pub mod outer;
pub mod privacy;
pub mod round;
pub mod run_id;
pub mod snapshot;
pub mod spec;
pub mod state_file;
pub mod wire;

#[cfg(test)]
mod test_keys;

pub use accountability::{EquivocationProof, ProofError};
pub use aggregate::{AggregateError, AggregationRule, Contribution};
pub use chunks::{ChunkAssembly, ChunkError, StateManifest, StateOffer, StateSnapshot, MAX_SYNC_EXPECTED};
pub use codec::{Codec, CodecError, Matrix};
pub use consensus::consensus_distance;
pub use delta::{DeltaHeader, DeltaId, DeltaRules, Refusal, SignedDelta, SignedHeader};
pub use engine::{Engine, EngineConfig};
pub use keys::PublicKey;
pub use leave::{LeaveNotice, LeaveRefusal};
pub use outer::{OuterOptimizer, OuterRule};
pub use privacy::{Accountant, PrivacyLevel, PrivacySpec};
pub use round::{Action, Admission, Event, RoundConfig, RoundState};
pub use snapshot::{Checkpoint, ModelState, SyncReply};
pub use spec::{DatasetKind, InitSpec, ModelSpec, Partition, RunId, RunSpec, SpecError};
pub use wire::WireError;
