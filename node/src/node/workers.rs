//! Heavy work off the event loop, on blocking workers fed by bounded queues
//! (Lighthouse's beacon processor in small). The event loop only hands work
//! in ([`Workers::submit`]) and takes results back ([`Finished`], over a
//! channel), which it then turns into engine inputs; the jobs themselves are
//! plain functions of what they own.
//!
//! | kind       | work                                              | pool            | capacity | when full |
//! | ---------- | ------------------------------------------------- | --------------- | -------- | --------- |
//! | `merge`    | aggregate and outer step; then, as a job of its own, the merged state's checkpoint (every `checkpoint_every` rounds); an installed state's checkpoint | writer | 3 | never: the engine runs one merge at a time and installs only between merges; a checkpoint follows its merge |
//! | `own`      | privacy ledger, node-level noise, encode, sign, outbox | writer     | 1        | never: one training job at a time, and the next starts only once this one's result is in |
//! | `snapshot` | a state's encoding and chunk hashes, to serve      | writer          | 1        | refused; the offers wait for the one in flight |
//! | `verify`   | decode and verify a large delta (gossip, or one an installed state came with) | 2 workers | 64 | the new one is dropped (gossip verdict: ignore) |
//! | `eval`     | held-out evaluation after a merge                 | 1 worker        | 2        | the oldest waiting one is dropped (its round reports no accuracy) |
//!
//! The writer runs its jobs one at a time in the order they came: merges
//! apply in round order, a checkpoint is on disk before the next state's, a
//! merged or installed state is checkpointed before any delta trained from it
//! is saved and published (so the next round may train while the checkpoint
//! is written: nothing durable happens before it is on disk), and a snapshot in progress never holds the state a merge
//! wants to change in place. Full-size buffers move into a job and come back
//! with its result (the state, the merge buffer, the delta that becomes the
//! new error-feedback residual); nothing is copied per round.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use libp2p::{gossipsub, PeerId};
use starling_protocol::{
    engine::StateDecode, round::CloseReason, wire::pool::BufferPool, AggregationRule, ChunkError, Codec,
    DeltaRules, Matrix, ModelSpec, ModelState, OuterOptimizer, Refusal, RunId, SignedDelta,
};
use starling_storage::{RefusalCount, ServedFile, Store, StoreError};
use tokio::sync::mpsc;
use tracing::warn;

use starling_training::{
    datasets::TrainData,
    error::TrainError,
    privacy::{pseudo_gradient::clip_and_noise, NoiseRng},
    trainer::Evaluation,
};

use crate::metrics::NodeMetrics;

/// Deltas up to this size are verified on the event loop: it takes microseconds.
pub(super) const INLINE_VERIFY_BYTES: usize = 64 * 1024;

/// A kind of work: its queue, capacity and policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Merge,
    Own,
    Snapshot,
    Verify,
    Eval,
    /// Decoding a fetched state (one at a time: the engine fetches one).
    Decode,
}

/// What a full queue does with more work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WhenFull {
    /// The engine bounds it; taken anyway (and logged) should it ever be over.
    Never,
    /// The new job is refused and handed back.
    DropNewest,
    /// The oldest waiting job of the kind is dropped and handed back.
    DropOldest,
}

/// Which workers run a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    Writer,
    Verify,
    Eval,
}

impl Kind {
    const ALL: [Kind; 6] = [Kind::Merge, Kind::Own, Kind::Snapshot, Kind::Verify, Kind::Eval, Kind::Decode];

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Merge => "merge",
            Kind::Own => "own",
            Kind::Snapshot => "snapshot",
            Kind::Verify => "verify",
            Kind::Eval => "eval",
            Kind::Decode => "decode",
        }
    }

    /// Jobs that may wait (not counting those running).
    fn capacity(self) -> usize {
        match self {
            Kind::Merge => 3,
            Kind::Own | Kind::Snapshot | Kind::Decode => 1,
            Kind::Verify => 64,
            Kind::Eval => 2,
        }
    }

    fn when_full(self) -> WhenFull {
        match self {
            Kind::Merge | Kind::Own | Kind::Decode => WhenFull::Never,
            Kind::Snapshot | Kind::Verify => WhenFull::DropNewest,
            Kind::Eval => WhenFull::DropOldest,
        }
    }

    fn pool(self) -> Pool {
        match self {
            Kind::Merge | Kind::Own | Kind::Snapshot => Pool::Writer,
            Kind::Verify | Kind::Decode => Pool::Verify,
            Kind::Eval => Pool::Eval,
        }
    }
}

impl Pool {
    const ALL: [Pool; 3] = [Pool::Writer, Pool::Verify, Pool::Eval];

    fn workers(self) -> usize {
        match self {
            // One at a time, in order: see the module's doc.
            Pool::Writer => 1,
            Pool::Verify => 2,
            Pool::Eval => 1,
        }
    }
}

/// Where a delta to verify came from.
#[derive(Debug)]
pub(super) enum Origin {
    /// Gossip, awaiting our verdict.
    Gossip { source: PeerId, id: gossipsub::MessageId },
    /// With an installed state.
    Installed,
}

/// A delta to verify: gossiped bytes, or one already decoded.
#[derive(Debug)]
// Jobs and results live a short while, a handful at a time; boxing would
// only add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Unverified {
    Bytes(Vec<u8>),
    Decoded(SignedDelta),
}

/// What a merge needs besides the deltas.
#[derive(Clone, Copy, Debug)]
pub(super) struct MergeRules {
    pub(super) aggregation: AggregationRule,
    pub(super) codec: Codec,
    pub(super) outer: OuterOptimizer,
    pub(super) params: usize,
}

/// A round to merge into the state.
pub(super) struct MergeJob {
    pub(super) round: u64,
    pub(super) deltas: Vec<SignedDelta>,
    pub(super) reason: CloseReason,
    pub(super) state: Arc<ModelState>,
    /// The merge buffer, reused from round to round.
    pub(super) buffer: Vec<f32>,
    /// The error-feedback residual now, checkpointed with the merged state.
    pub(super) residual: Arc<Vec<f32>>,
    pub(super) rules: MergeRules,
    pub(super) store: Arc<Store>,
    /// The per-peer refusal counts to save with the merge, if they changed.
    pub(super) refusals: Option<Vec<RefusalCount>>,
    /// Copy the merged parameters for the harness (`report_params`).
    pub(super) copy_params: bool,
}

/// Node-level privacy noise: its clip, multiplier and generator (lent to the job).
pub(super) struct Noise {
    pub(super) clip: f64,
    pub(super) sigma: f64,
    pub(super) rng: NoiseRng,
}

/// Our pseudo-gradient to encode, sign and save before it is published.
pub(super) struct EncodeJob {
    /// θ_i, the trained parameters; replaced in place by Δ = θ_r − θ_i, which
    /// then becomes the new error-feedback residual.
    pub(super) trained: Vec<f32>,
    /// The state θ_r they were trained from, let go once Δ is taken.
    pub(super) base: Arc<ModelState>,
    /// The residual now, left as it is (the delta may yet be dropped).
    pub(super) residual: Arc<Vec<f32>>,
    pub(super) noise: Option<Noise>,
    pub(super) key: SigningKey,
    pub(super) run_id: RunId,
    pub(super) samples: u64,
    pub(super) codec: Codec,
    /// The model's weight matrices, for `lowrank`.
    pub(super) matrices: Vec<Matrix>,
    pub(super) decay: f32,
    /// Where the wire bytes are written: last round's, once every peer has them.
    pub(super) wire_pool: Arc<BufferPool>,
}

/// What a finished training job leaves to save (and maybe publish).
pub(super) struct OwnJob {
    pub(super) round: u64,
    pub(super) base: [u8; 32],
    /// The privacy ledger after charging the round: saved first.
    pub(super) ledger: Option<Vec<u8>>,
    /// The delta, when the engine still wants it.
    pub(super) encode: Option<EncodeJob>,
    pub(super) store: Arc<Store>,
}

/// A held-out evaluation of a merged state.
pub(super) struct EvalJob {
    pub(super) round: u64,
    pub(super) state: Arc<ModelState>,
    pub(super) model: ModelSpec,
    pub(super) data: Arc<TrainData>,
}

/// A piece of work.
// Jobs and results live a short while, a handful at a time; boxing would
// only add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Merge(MergeJob),
    /// Checkpoint a merged state; queued as its merge comes back, so before
    /// anything trained from the state is saved.
    Checkpoint {
        state: Arc<ModelState>,
        residual: Arc<Vec<f32>>,
        store: Arc<Store>,
    },
    /// Checkpoint a state installed from peers (`from` is the round left),
    /// from the chunks kept on disk under `fetched` when they are whole.
    Install {
        state: Arc<ModelState>,
        residual: Arc<Vec<f32>>,
        store: Arc<Store>,
        fetched: Option<[u8; 32]>,
        from: u64,
        expected_from: u64,
    },
    Own(OwnJob),
    /// Find or write the state file of a state, to serve it.
    Snapshot {
        state: Arc<ModelState>,
        store: Arc<Store>,
    },
    Verify {
        origin: Origin,
        delta: Unverified,
        rules: DeltaRules,
    },
    Eval(EvalJob),
    /// Decode a fetched state, off the event loop.
    Decode(StateDecode),
}

impl Job {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Job::Merge(_) | Job::Checkpoint { .. } | Job::Install { .. } => Kind::Merge,
            Job::Own(_) => Kind::Own,
            Job::Snapshot { .. } => Kind::Snapshot,
            Job::Verify { .. } => Kind::Verify,
            Job::Eval(_) => Kind::Eval,
            Job::Decode(_) => Kind::Decode,
        }
    }
}

/// Why a job failed; the node stops, as it would have had it done the work itself.
#[derive(Debug, thiserror::Error)]
pub(super) enum WorkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("merging round {round} failed: {reason}")]
    Merge { round: u64, reason: String },
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A merged round, its state back from the worker.
pub(super) struct Merged {
    pub(super) round: u64,
    pub(super) reason: CloseReason,
    pub(super) merged: usize,
    pub(super) state: Arc<ModelState>,
    pub(super) buffer: Vec<f32>,
    pub(super) params: Option<Arc<Vec<f32>>>,
    /// The state was still shared (a reader held it) and had to be copied.
    pub(super) copied: bool,
    /// The residual the merge was handed, to checkpoint with the state.
    pub(super) residual: Arc<Vec<f32>>,
}

/// Our delta, signed and saved, its wire bytes (for gossip), and the residual it leaves.
pub(super) struct Encoded {
    pub(super) delta: SignedDelta,
    /// Its wire bytes, which its payload is a slice of.
    pub(super) bytes: bytes::Bytes,
    pub(super) residual: Vec<f32>,
}

/// What a job gave back.
// Jobs and results live a short while, a handful at a time; boxing would
// only add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Done {
    Merged(Result<Merged, WorkError>),
    /// A merged state's checkpoint, its file to serve.
    Checkpointed {
        round: u64,
        result: Result<ServedFile, WorkError>,
    },
    Installed {
        result: Result<ServedFile, WorkError>,
        round: u64,
        from: u64,
        expected_from: u64,
        params_hash: [u8; 32],
    },
    Own {
        round: u64,
        base: [u8; 32],
        result: Result<Option<Encoded>, WorkError>,
        noise: Option<Noise>,
    },
    Snapshot(Result<ServedFile, StoreError>),
    Verified {
        origin: Origin,
        result: Result<SignedDelta, Refusal>,
    },
    Evaluated {
        round: u64,
        result: Result<Evaluation, WorkError>,
    },
    Decoded {
        root: [u8; 32],
        result: Result<ModelState, ChunkError>,
    },
}

impl Done {
    /// The event loop's arm its handling is counted under.
    pub(super) fn arm(&self) -> &'static str {
        match self {
            Done::Merged(_) => "work/merged",
            Done::Checkpointed { .. } => "work/checkpointed",
            Done::Installed { .. } => "work/installed",
            Done::Own { .. } => "work/own",
            Done::Snapshot(_) => "work/snapshot",
            Done::Verified { .. } => "work/verified",
            Done::Evaluated { .. } => "work/evaluated",
            Done::Decoded { .. } => "work/decoded",
        }
    }
}

/// A job's result and how long its parts took, by kind of work.
pub(super) struct Finished {
    pub(super) kind: Kind,
    pub(super) done: Done,
    /// Each part's wall time and its thread's CPU seconds.
    pub(super) timings: Vec<(&'static str, Duration, f64)>,
}

/// What [`Workers::submit`] did with a job.
// Jobs and results live a short while, a handful at a time; boxing would
// only add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Submitted {
    Queued,
    /// Refused (the job is handed back) or, for [`WhenFull::DropOldest`], an
    /// older job dropped to make room.
    Dropped(Job),
}

/// The queues and the workers that drain them.
pub(super) struct Workers {
    queues: [VecDeque<Job>; 3],
    busy: [usize; 3],
    /// Jobs of each kind waiting or running.
    counts: [usize; 6],
    done: mpsc::UnboundedSender<Finished>,
}

fn pool_index(pool: Pool) -> usize {
    Pool::ALL.iter().position(|p| *p == pool).expect("a pool")
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).expect("a kind")
}

impl Workers {
    /// Workers whose results come back on `done`.
    pub(super) fn new(done: mpsc::UnboundedSender<Finished>) -> Self {
        Self { queues: Default::default(), busy: [0; 3], counts: [0; 6], done }
    }

    /// Queues a job, or drops one as its kind's policy says; starts it if a worker is free.
    pub(super) fn submit(&mut self, job: Job, metrics: &NodeMetrics) -> Submitted {
        let kind = job.kind();
        let queue = &mut self.queues[pool_index(kind.pool())];
        let waiting = queue.iter().filter(|j| j.kind() == kind).count();
        let mut dropped = None;
        if waiting >= kind.capacity() {
            match kind.when_full() {
                WhenFull::Never => {
                    warn!(kind = kind.name(), waiting, "more work queued than the engine should allow")
                }
                WhenFull::DropNewest => dropped = Some(job),
                WhenFull::DropOldest => {
                    let oldest = queue.iter().position(|j| j.kind() == kind).expect("a waiting job");
                    dropped = queue.remove(oldest);
                    queue.push_back(job);
                }
            }
        } else {
            queue.push_back(job);
        }
        if dropped.is_none() {
            self.counts[kind_index(kind)] += 1;
        }
        if let Some(job) = &dropped {
            metrics.work_dropped(job.kind().name());
        }
        self.refresh(metrics);
        self.start(kind.pool());
        match dropped {
            Some(job) => Submitted::Dropped(job),
            None => Submitted::Queued,
        }
    }

    /// Takes note that a job of `kind` finished, and starts the next.
    pub(super) fn finished(&mut self, kind: Kind, metrics: &NodeMetrics) {
        let pool = pool_index(kind.pool());
        self.busy[pool] = self.busy[pool].saturating_sub(1);
        self.counts[kind_index(kind)] = self.counts[kind_index(kind)].saturating_sub(1);
        self.start(kind.pool());
        self.refresh(metrics);
    }

    /// Jobs of `kind` waiting or running.
    pub(super) fn pending(&self, kind: Kind) -> usize {
        self.counts[kind_index(kind)]
    }

    /// Whether no job is waiting or running.
    pub(super) fn idle(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// Forgets the waiting jobs of `kind` (when the node stops); returns them.
    pub(super) fn cancel(&mut self, kind: Kind, metrics: &NodeMetrics) -> Vec<Job> {
        let queue = &mut self.queues[pool_index(kind.pool())];
        let (cancelled, kept): (Vec<Job>, Vec<Job>) = queue.drain(..).partition(|j| j.kind() == kind);
        queue.extend(kept);
        self.counts[kind_index(kind)] -= cancelled.len();
        self.refresh(metrics);
        cancelled
    }

    fn refresh(&self, metrics: &NodeMetrics) {
        for kind in Kind::ALL {
            metrics.work_pending(kind.name(), self.counts[kind_index(kind)]);
        }
    }

    fn start(&mut self, pool: Pool) {
        let index = pool_index(pool);
        while self.busy[index] < pool.workers() {
            let Some(job) = self.queues[index].pop_front() else { return };
            self.busy[index] += 1;
            let done = self.done.clone();
            tokio::task::spawn_blocking(move || {
                let kind = job.kind();
                let mut timings = Vec::new();
                let done_job = run(job, &mut timings);
                let _ = done.send(Finished { kind, done: done_job, timings });
                // A job's transient buffers go back to the system, not to a
                // heap that would keep them until the next burst of the same
                // size; after its result is sent, so the next step need not wait.
                starling_training::alloc::release_free_memory();
            });
        }
    }
}

/// Does one job, noting how long its parts took.
fn run(job: Job, timings: &mut Vec<(&'static str, Duration, f64)>) -> Done {
    // Each part's CPU time runs from the end of the part before (or the job's start).
    let mut cpu_since = super::busy::thread_cpu();
    let mut timed = |kind: &'static str, since: Instant| {
        let cpu = super::busy::thread_cpu();
        timings.push((kind, since.elapsed(), (cpu - cpu_since).max(0.0)));
        cpu_since = cpu;
    };
    match job {
        Job::Merge(job) => Done::Merged(merge(job, &mut timed)),
        Job::Checkpoint { state, residual, store } => {
            let started = Instant::now();
            let result = store.save_checkpoint(&state, &residual).map_err(WorkError::from);
            timed("checkpoint", started);
            Done::Checkpointed { round: state.round, result }
        }
        Job::Install { state, residual, store, fetched, from, expected_from } => {
            let started = Instant::now();
            let result =
                store.save_fetched_checkpoint(&state, &residual, fetched.as_ref()).map_err(WorkError::from);
            timed("checkpoint", started);
            Done::Installed {
                result,
                round: state.round,
                from,
                expected_from,
                params_hash: state.params_hash(),
            }
        }
        Job::Own(job) => {
            let OwnJob { round, base, ledger, encode, store } = job;
            let mut noise = None;
            let result = (|| {
                if let Some(ledger) = ledger {
                    store.save_privacy_ledger(&ledger)?;
                }
                let Some(mut job) = encode else { return Ok(None) };
                let started = Instant::now();
                let delta = &mut job.trained;
                for (d, start) in delta.iter_mut().zip(&job.base.params) {
                    *d = start - *d;
                }
                drop(job.base);
                if let Some(n) = &mut job.noise {
                    clip_and_noise(delta, n.clip, n.sigma, &mut n.rng);
                }
                noise = job.noise.take();
                let signed = Signing { key: &job.key, run_id: job.run_id, round, base, samples: job.samples };
                let (delta, bytes) = encode_and_sign(
                    &signed,
                    job.codec,
                    &job.matrices,
                    delta,
                    &job.residual,
                    job.decay,
                    Some(&job.wire_pool),
                );
                timed("encode", started);
                let started = Instant::now();
                // Saved before it goes out: after a crash, the same delta is published again.
                // A lossless codec sends everything: its residual is zero, kept as empty.
                let residual = if job.codec.is_lossless() { Vec::new() } else { job.trained };
                store.save_outbox(&delta, &residual)?;
                timed("outbox", started);
                Ok(Some(Encoded { delta, bytes, residual }))
            })();
            Done::Own { round, base, result, noise }
        }
        Job::Snapshot { state, store } => {
            let started = Instant::now();
            let served = store.serve_state(&state);
            timed("snapshot", started);
            Done::Snapshot(served)
        }
        Job::Verify { origin, delta, rules } => {
            let started = Instant::now();
            let result = match delta {
                Unverified::Bytes(bytes) => SignedDelta::from_untrusted(&bytes, &rules),
                Unverified::Decoded(delta) => delta.validate(&rules).map(|()| delta),
            };
            timed("verify", started);
            Done::Verified { origin, result }
        }
        Job::Eval(EvalJob { round, state, model, data }) => {
            let started = Instant::now();
            let result =
                starling_training::trainer::evaluate(&model, &state.params, &data).map_err(WorkError::from);
            timed("eval", started);
            Done::Evaluated { round, result }
        }
        Job::Decode(decode) => {
            let started = Instant::now();
            let root = decode.root();
            let result = decode.decode();
            timed("decode", started);
            Done::Decoded { root, result }
        }
    }
}

fn merge(job: MergeJob, timed: &mut impl FnMut(&'static str, Instant)) -> Result<Merged, WorkError> {
    let MergeJob { round, deltas, reason, state, mut buffer, residual, rules, store, refusals, copy_params } =
        job;
    let started = Instant::now();
    let (mut state, copied) = match Arc::try_unwrap(state) {
        Ok(state) => (state, false),
        Err(shared) => (ModelState::clone(&shared), true),
    };
    buffer.resize(rules.params, 0.0);
    // No delta at all: every node sat the round out (privacy budgets spent).
    if !deltas.is_empty() {
        rules
            .aggregation
            .aggregate_deltas_with(&deltas, rules.codec, Some(&state.momentum), &mut buffer)
            .map_err(|e| WorkError::Merge { round, reason: e.to_string() })?;
        rules.outer.step(&mut state.params, &mut state.momentum, &buffer);
    }
    state.record_merge(round, &deltas);
    if let Some(refusals) = refusals {
        store.save_refusals(&refusals)?;
    }
    timed("merge", started);
    let params = copy_params.then(|| Arc::new(state.params.clone()));
    Ok(Merged {
        round,
        reason,
        merged: deltas.len(),
        state: Arc::new(state),
        buffer,
        params,
        copied,
        residual,
    })
}

/// Error feedback that leaves `residual` as it is: `delta` becomes
/// `delta + decay × residual`, is encoded, and is left holding what the payload
/// did not carry, the next residual. The same payload and residual as
/// [`Codec::encode_with_feedback`], which updates the residual in place.
/// Who signs a delta, for which run and round, from which state, on how many samples.
pub(crate) struct Signing<'a> {
    pub(crate) key: &'a SigningKey,
    pub(crate) run_id: RunId,
    pub(crate) round: u64,
    pub(crate) base: [u8; 32],
    pub(crate) samples: u64,
}

/// Encodes `delta + decay × residual` with `codec`, signs it, and returns
/// the signed delta with its wire bytes (its payload a slice of them);
/// `delta` is left holding what the payload does not carry, the new residual
/// (as [`encode_keeping_residual`]). A `dense` payload is written straight
/// into the wire bytes (the buffer `pool` keeps, if any): no payload buffer of
/// its own, no copy.
pub(crate) fn encode_and_sign(
    signing: &Signing,
    codec: Codec,
    matrices: &[Matrix],
    delta: &mut [f32],
    residual: &[f32],
    decay: f32,
    pool: Option<&Arc<BufferPool>>,
) -> (SignedDelta, bytes::Bytes) {
    let Signing { key, run_id, round, base, samples } = *signing;
    if codec != Codec::Dense {
        let payload = encode_keeping_residual(codec, matrices, delta, residual, decay);
        let signed = SignedDelta::sign(key, run_id, round, base, samples, codec, payload);
        return starling_protocol::wire::encode_delta_shared(signed);
    }
    // One pass, a cache-sized block at a time: add the residual, write the
    // bytes, leave what a lossless payload leaves (v − v). Three passes over
    // a model-sized buffer were a third of encoding it.
    const BLOCK: usize = 16 << 10;
    let residual = if residual.len() == delta.len() { residual } else { &[] };
    starling_protocol::wire::sign_delta_encoded(
        pool,
        key,
        run_id,
        round,
        base,
        samples,
        codec,
        delta.len() * 4,
        |out| {
            crate::net::large_buffer::advise_huge_pages(out.spare_capacity_mut());
            for (i, block) in delta.chunks_mut(BLOCK).enumerate() {
                let start = i * BLOCK;
                add_residual(block, residual.get(start..start + block.len()).unwrap_or(&[]), decay);
                starling_protocol::wire::extend_le_bytes(out, block);
                for d in block.iter_mut() {
                    *d -= *d;
                }
            }
        },
    )
}

/// `delta += decay × residual` (an empty residual counts as zeros).
fn add_residual(delta: &mut [f32], residual: &[f32], decay: f32) {
    if residual.len() == delta.len() {
        for (d, r) in delta.iter_mut().zip(residual) {
            *d += decay * r;
        }
    } else {
        for d in delta.iter_mut() {
            *d += decay * 0.0;
        }
    }
}

pub(super) fn encode_keeping_residual(
    codec: Codec,
    matrices: &[Matrix],
    delta: &mut [f32],
    residual: &[f32],
    decay: f32,
) -> Vec<u8> {
    add_residual(delta, residual, decay);
    let payload = codec.encode_shaped(delta, matrices);
    codec.accumulate(&payload, delta.len(), -1.0, delta).expect("a payload we just encoded decodes");
    payload
}

#[cfg(test)]
mod tests;
