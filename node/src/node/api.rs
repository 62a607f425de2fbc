//! What a node's caller hands it and gets back: its options, the events it
//! reports as it runs, its outcome and its errors.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use starling_protocol::{round::CloseReason, ModelState, PublicKey, RunSpec};
use starling_storage::StoreError;
use starling_training::{datasets::Shard, error::TrainError, trainer::Evaluation};

use tokio::sync::watch;

use super::LoopStats;
use crate::{
    metrics::Traffic,
    net::{self, NetOptions},
};

/// Everything a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub datadir: PathBuf,
    pub spec: RunSpec,
    pub listen: Vec<Multiaddr>,
    pub bootnodes: Vec<Multiaddr>,
    pub net: NetOptions,
    /// Run peers to wait for before the first round.
    pub wait_peers: usize,
    /// How long to wait for them before training alone.
    pub wait_timeout: Duration,
    /// Stop once the state reaches this round.
    pub rounds: Option<u64>,
    /// Overrides the datadir's identity (the local swarm derives keys from a seed).
    pub key: Option<SigningKey>,
    /// Evaluate on the held-out set after merges.
    pub evaluate: bool,
    /// Evaluate every this many merged rounds (1: every round), and the round
    /// the node stops at; [`auto_evaluate_every`] when the user does not say.
    pub evaluate_every: u64,
    /// Checkpoint every this many merged rounds (1: every round); a stop
    /// checkpoints the last. See docs/checkpoints.md for what a crash loses.
    pub checkpoint_every: u64,
    /// Where this node's data is and which shard of it it trains on.
    pub data: DataOptions,
}

/// The share of a round's training that held-out evaluation may cost when
/// the user does not say how often to evaluate.
pub const EVALUATION_BUDGET: f64 = 0.05;

/// One evaluation's cost as a share of one round's training, from the spec:
/// a forward pass over each held-out sample against a forward and a backward
/// pass (about three forward passes) over each of the round's `steps ×
/// batch_size` samples. The MLPs measure below it (0.30 where it says 0.43),
/// the language models a little above (0.09 where it says 0.07).
pub fn evaluation_cost_share(spec: &RunSpec) -> f64 {
    let trained = 3.0 * f64::from(spec.inner.steps) * spec.inner.batch_size as f64;
    spec.dataset.eval_samples as f64 / trained.max(1.0)
}

/// An evaluation of at most this many floating-point operations (a forward
/// pass over the held-out split) is cheap whatever its share of the
/// training: tens of milliseconds on one core.
pub const CHEAP_EVALUATION_FLOPS: f64 = 1e9;

/// How often to evaluate when `--evaluate-every` is not given: every round
/// when one evaluation is cheap (at most [`CHEAP_EVALUATION_FLOPS`], as for
/// the built-in spec) or costs at most [`EVALUATION_BUDGET`] of a round's
/// training; else every N rounds, so that it costs that budget over N rounds
/// (an MLP of 10⁶ parameters or more on the built-in task, whose 4096
/// held-out samples cost 0.43 of its 50 steps of 64: every 9).
pub fn auto_evaluate_every(spec: &RunSpec) -> u64 {
    let tokens = spec.dataset.eval_samples as f64 * spec.model.context().unwrap_or(1) as f64;
    if 2.0 * spec.model.param_count() as f64 * tokens <= CHEAP_EVALUATION_FLOPS {
        return 1;
    }
    (evaluation_cost_share(spec) / EVALUATION_BUDGET).ceil().clamp(1.0, 1e6) as u64
}

/// A node's own view of the run's data.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// The node's local copy of the data (`--dataset`); the spec's `dataset.kind` when absent.
    pub dataset: Option<starling_protocol::DatasetKind>,
    /// Which shard to train on (`--shard I/N`); the whole data set (`0/1`) when absent.
    /// Synthetic IID data is drawn from the node's key instead.
    pub shard: Option<Shard>,
    /// Where to train (`--device`); the CPU when absent.
    pub device: Option<candle_core::Device>,
    /// The node's copy of the spec's tokenizer (`--tokenizer`); the spec's path when absent.
    pub tokenizer: Option<std::path::PathBuf>,
}

/// What a node tells whoever started it.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    Listening {
        node: PublicKey,
        address: Multiaddr,
    },
    Round(RoundReport),
    /// A peer of the run subscribed to its topic at this node: it is
    /// connected, and this node's gossip (its own deltas and proofs) reaches it.
    RunPeerJoined {
        node: PublicKey,
        peer: PublicKey,
    },
    /// The node installed a state its peers agree on (it was behind, new, or had diverged).
    StateInstalled {
        node: PublicKey,
        from: u64,
        round: u64,
        traffic: Traffic,
        /// From choosing the state to the last chunk verified, when it was fetched.
        fetch_seconds: Option<f64>,
    },
    /// The node banned `key` for the run at its round `round`: it caught the
    /// equivocation itself (`caught`) or verified a peer's proof.
    Banned {
        node: PublicKey,
        key: PublicKey,
        round: u64,
        caught: bool,
    },
}

/// One merged round, as the node saw it.
#[derive(Clone, Debug)]
pub struct RoundReport {
    pub node: PublicKey,
    /// The round that was merged; the state is now at `round + 1`.
    pub round: u64,
    pub train_loss: f32,
    pub eval: Option<Evaluation>,
    pub peers: usize,
    pub merged: usize,
    pub reason: CloseReason,
    pub traffic: Traffic,
    /// ε this node has spent, in a run with `[privacy]`.
    pub epsilon: Option<f64>,
    /// The parameters after the merge; only when [`HarnessHooks::report_params`] asks.
    pub params: Option<Arc<Vec<f32>>>,
}

/// What an in-process harness (the local swarm, netsim's live mode) can ask of
/// a node beyond [`NodeOptions`]; `starling run` leaves all of it at the default.
#[derive(Clone, Debug, Default)]
pub struct HarnessHooks {
    /// Put a copy of the merged parameters in every [`RoundReport`], so the
    /// harness can measure consensus distance round by round.
    pub report_params: bool,
    /// Hold the first round until this turns true, so that nodes started one
    /// after another begin round 0 together; `wait_peers` and `wait_timeout`
    /// count from then.
    pub start: Option<watch::Receiver<bool>>,
    /// Run members to expect from the first round as if they were connected,
    /// whether or not they ever connect directly (a roster known in advance).
    pub expected_peers: Vec<PublicKey>,
    /// After the last round, keep relaying gossip and serving state until
    /// `shutdown` turns true, rather than leave after a short drain: in a sparse
    /// swarm, slower nodes may still need their neighbours to forward deltas.
    pub linger_until_shutdown: bool,
    /// Keys this node cannot reach while they are listed (a harness's
    /// partition): their connections close and dials to and from them are
    /// refused; a key taken off the list is dialled again at once (see
    /// [`cut_off`]).
    pub cut_off: Option<watch::Receiver<Vec<PublicKey>>>,
}

impl HarnessHooks {
    pub(super) fn holds_start(&self) -> bool {
        self.start.as_ref().is_some_and(|gate| !*gate.borrow())
    }
}

/// How a node ended.
#[derive(Clone, Debug)]
pub struct NodeOutcome {
    pub node: PublicKey,
    pub state: ModelState,
    pub traffic: Traffic,
    pub rounds_merged: u64,
    pub refused_deltas: u64,
    /// Bytes of the delta payloads this node published.
    pub published_bytes: u64,
    /// Payload bytes of announced deltas it fetched from peers (see `--pull-above`).
    pub pulled_bytes: u64,
    /// Refused deltas and proofs by reason (the labels of `starling_deltas_refused`).
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Keys banned for the run (reloaded ones included).
    pub banned: Vec<PublicKey>,
    /// Gossipsub scores of the peers this node saw, at the end.
    pub peer_scores: Vec<(PublicKey, f64)>,
    /// How long the event loop stayed busy, and the heavy work by kind.
    pub loop_stats: LoopStats,
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the datadir {path}: {source} (pass a writable --datadir)")]
    Datadir { path: PathBuf, source: std::io::Error },
    #[error("the datadir {datadir} belongs to run {stored}, but --spec describes run {given}; use another --datadir or the spec it was created with")]
    SpecMismatch { datadir: PathBuf, stored: String, given: String },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Privacy(#[from] starling_training::privacy::PrivacyError),
    #[error("data: {0}")]
    Data(String),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("cannot listen on {address}: {reason} (change --listen)")]
    Listen { address: Multiaddr, reason: String },
    #[error("merging round {round} failed: {reason}")]
    Merge { round: u64, reason: String },
    #[error("this node's key {key} is not in the run spec's allowed_keys: add it to the spec (`starling spec new --allow {key}`) or use a --datadir whose identity is listed")]
    NotAllowed { key: PublicKey },
}

#[cfg(test)]
mod tests {
    use starling_protocol::ModelSpec;

    use super::*;

    #[test]
    fn evaluation_is_spread_over_rounds_only_when_it_is_costly_and_over_its_budget() {
        let mut spec = RunSpec::builtin();
        // 22k parameters: an evaluation is cheap, whatever its share.
        assert_eq!(auto_evaluate_every(&spec), 1);
        // 10⁶: 4096 held-out samples against 50 steps of 64 is 0.43 of a round.
        spec.model = ModelSpec::mlp(vec![32, 978, 978, 10]);
        assert_eq!(auto_evaluate_every(&spec), 9);
        spec.model = ModelSpec::mlp(vec![32, 4096, 4096, 10]);
        spec.dataset.eval_samples = 480; // exactly the budget: 480 / 9600
        assert_eq!(auto_evaluate_every(&spec), 1);
        spec.dataset.eval_samples = 481;
        assert_eq!(auto_evaluate_every(&spec), 2);
    }
}
