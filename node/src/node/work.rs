//! The event loop's side of the heavy work: training jobs started and their
//! deltas handed to the writer to encode, sign and save; rounds handed to the
//! writer to merge and checkpoint; evaluations; and the results that come back
//! ([`workers::Finished`]) turned into engine inputs, round reports and log lines.
//!
//! Crash safety holds as it did when this work ran on the loop: a merged
//! round's checkpoint (every `checkpoint_every` rounds) is queued on the writer
//! before the engine hears [`Input::Merged`], so it is on disk before anything
//! trained from that state is saved (the writer runs its jobs in order) while
//! the next round already trains, and the engine hears [`Input::Trained`]
//! (which publishes) only once the delta is in the outbox, every round: what
//! keeps a restarted node from signing twice (docs/checkpoints.md).
//! The engine is asked [`Engine::wants_trained`](starling_protocol::Engine::wants_trained)
//! before anything is encoded, and again when the signed delta comes back;
//! the new error-feedback residual is taken only if the delta is.

use std::{sync::Arc, time::Duration};

use starling_protocol::{engine::Input, round::CloseReason, Admission, ModelState, Refusal, SignedDelta};
use tracing::{debug, info, warn};

use super::{
    workers::{
        Done, EncodeJob, Encoded, EvalJob, Finished, Job, Kind, MergeJob, MergeRules, Merged, Origin, OwnJob,
        Submitted, Unverified, WorkError, INLINE_VERIFY_BYTES,
    },
    Node, NodeError, NodeEvent, RoundReport,
};
use crate::statesync::hex;

/// How long a stopping node waits for the work in hand (a merge and its checkpoint).
const FINISH_TIME: Duration = Duration::from_secs(60);

/// A training job's result: the pseudo-gradient, computed on the training thread.
pub(super) struct Trained {
    /// θ_i, the parameters after the round's inner steps. The delta
    /// Δ = θ_r − θ_i is taken in their place by the encode job, against the
    /// state they were trained from, so training holds one copy of the
    /// parameters, not two.
    pub(super) params: Vec<f32>,
    pub(super) samples: u64,
    pub(super) mean_loss: f32,
}

/// A merged round waiting to be reported (for its evaluation, or for an older one's).
pub(super) struct PendingReport {
    report: RoundReport,
    /// The round merged was trained here (its loss is this node's).
    trained: bool,
    /// Its evaluation is still on a worker.
    evaluating: bool,
}

impl From<WorkError> for NodeError {
    fn from(e: WorkError) -> Self {
        match e {
            WorkError::Store(e) => NodeError::Store(e),
            WorkError::Merge { round, reason } => NodeError::Merge { round, reason },
            WorkError::Train(e) => NodeError::Train(e),
        }
    }
}

/// Whether the state merged in `round` is evaluated: every `every` merged
/// rounds, and the one the node stops at (`stop`).
fn evaluates_after(round: u64, every: u64, stop: Option<u64>) -> bool {
    let next = round + 1;
    next.is_multiple_of(every.max(1)) || stop.is_some_and(|stop| next >= stop)
}

impl Node {
    /// Trains round `round` from the current state on a blocking thread.
    pub(super) fn start_training(&mut self, round: u64, base: [u8; 32]) {
        if self.stopping {
            return;
        }
        let Some(mut trainer) = self.trainer.take() else {
            // The engine runs one job at a time; the trainer is back before the next.
            warn!(round, "asked to train while the trainer is busy");
            return;
        };
        // The engine trains nothing while a merge has the state.
        debug_assert!(!self.lent, "training from a lent state");
        let state = self.state.clone();
        let steps = self.spec.inner.steps;
        let tx = self.train_tx.clone();
        if let Some(gap) = self.telemetry.training_started() {
            // What the rest of a round adds to its training, as the summary splits it.
            self.busy.stats_only("between_trainings", gap);
        }
        tokio::task::spawn_blocking(move || {
            // The trainer's copy of θ_r, made here rather than on the event loop
            // and trained in place; the shared state is let go at once, so a
            // merge never waits for it (nor copies it).
            let mut params = state.params.clone();
            drop(state);
            let outcome = trainer.train_in_place(&mut params, steps).map(|stats| Trained {
                params,
                samples: stats.samples,
                mean_loss: stats.mean_loss,
            });
            starling_training::alloc::release_free_memory();
            let _ = tx.send((trainer, round, base, outcome));
        });
    }

    pub(super) fn on_trained(
        &mut self,
        (trainer, round, base, outcome): super::TrainDone,
    ) -> Result<(), NodeError> {
        self.trainer = Some(trainer);
        // A trained round spends privacy budget whether or not it is published.
        let ledger = if outcome.is_ok() { self.charge_round() } else { None };
        let paused = self.drop_trained_while_paused();
        if paused || !self.engine.wants_trained(round, base) {
            if !paused {
                debug!(
                    round,
                    now = self.state.round,
                    "dropping a delta trained from a state we have since left"
                );
            }
            return self.save_own(round, base, ledger, None);
        }
        let trained = match outcome {
            Ok(trained) => trained,
            Err(e) => {
                self.drive(Input::Trained { round, base, delta: None })?;
                return Err(e.into());
            }
        };
        self.last_loss = trained.mean_loss;
        // The engine wants the delta only while its state is the one trained from.
        debug_assert_eq!((self.state.round, self.state.lineage), (round, base), "trained from another state");
        let encode = EncodeJob {
            trained: trained.params,
            base: self.state.clone(),
            residual: self.residual.clone(),
            noise: self.lend_noise(),
            key: self.key.clone(),
            run_id: self.spec.run_id(),
            samples: trained.samples,
            codec: self.spec.codec,
            matrices: self.spec.model.matrices(),
            decay: self.spec.feedback_decay as f32,
            wire_pool: self.wire_pool.clone(),
        };
        self.save_own(round, base, ledger, Some(encode))
    }

    /// Hands the writer what a finished training job leaves to save; the engine
    /// hears of the job when it is saved (at once when there is nothing to save).
    fn save_own(
        &mut self,
        round: u64,
        base: [u8; 32],
        ledger: Option<Vec<u8>>,
        encode: Option<EncodeJob>,
    ) -> Result<(), NodeError> {
        if ledger.is_none() && encode.is_none() {
            return self.drive(Input::Trained { round, base, delta: None });
        }
        let job = OwnJob { round, base, ledger, encode, store: self.store.clone() };
        // Never dropped: see the queue's policy.
        let _ = self.workers.submit(Job::Own(job), &self.metrics);
        Ok(())
    }

    fn on_own_saved(
        &mut self,
        round: u64,
        base: [u8; 32],
        result: Result<Option<Encoded>, WorkError>,
        noise: Option<super::workers::Noise>,
    ) -> Result<(), NodeError> {
        self.return_noise(noise);
        match result? {
            Some(Encoded { delta, bytes, residual }) if self.engine.wants_trained(round, base) => {
                self.residual = Arc::new(residual);
                self.own_bytes = Some((delta.id(), bytes));
                self.drive(Input::Trained { round, base, delta: Some(delta) })
            }
            Some(_) => {
                debug!(
                    round,
                    "the state moved on while our delta was encoded; dropping it, error feedback unmoved"
                );
                self.drive(Input::Trained { round, base, delta: None })
            }
            None => self.drive(Input::Trained { round, base, delta: None }),
        }
    }

    /// Hands the state to the writer to merge `deltas` into.
    pub(super) fn start_merge(&mut self, round: u64, deltas: Vec<SignedDelta>, reason: CloseReason) {
        let stand_in = Arc::new(ModelState {
            round: self.state.round,
            lineage: self.state.lineage,
            params: Vec::new(),
            momentum: Vec::new(),
        });
        let state = std::mem::replace(&mut self.state, stand_in);
        self.lent = true;
        let job = MergeJob {
            round,
            deltas,
            reason,
            state,
            buffer: std::mem::take(&mut self.merge_buffer),
            residual: self.residual.clone(),
            rules: MergeRules {
                aggregation: self.spec.aggregation,
                codec: self.spec.codec,
                outer: self.outer,
                params: self.spec.param_count(),
            },
            store: self.store.clone(),
            refusals: self.take_refusals(),
            copy_params: self.hooks.report_params,
        };
        // Never dropped: see the queue's policy.
        let _ = self.workers.submit(Job::Merge(job), &self.metrics);
    }

    fn on_merged(&mut self, merged: Result<Merged, WorkError>) -> Result<(), NodeError> {
        let Merged { round, reason, merged, state, buffer, params, copied, residual } = merged?;
        self.state = state;
        self.lent = false;
        // The checkpoint goes to the writer before the engine hears of the
        // merge, so before anything trained from the state can be saved.
        self.unsaved = !self.checkpoints_after(round);
        if !self.unsaved {
            let job = Job::Checkpoint { state: self.state.clone(), residual, store: self.store.clone() };
            // Never dropped: see the queue's policy.
            let _ = self.workers.submit(job, &self.metrics);
        }
        self.merge_buffer = buffer;
        self.pulls.forget_before(self.state.round);
        if copied {
            self.metrics.state_copies.inc();
            debug!(round, "a reader still held the state when it was merged; it was copied");
        }
        self.rounds_merged += 1;
        self.metrics.merges.inc();
        self.metrics.round.set(self.state.round as i64);
        let trained = self.record_merged(round);
        let report = RoundReport {
            node: self.me,
            round,
            train_loss: self.last_loss,
            eval: None,
            peers: self.run_peers.len(),
            merged,
            reason,
            traffic: self.metrics.transport_bytes(),
            epsilon: self.epsilon(),
            params,
        };
        let evaluating = self.evaluate(round);
        self.reports.push_back(PendingReport { report, trained, evaluating });
        self.flush_reports();
        self.answer_model_waiters();
        let lineage = self.state.lineage;
        self.drive(Input::Merged { round, lineage })?;
        self.want_snapshot();
        Ok(())
    }

    /// Whether the merge of `round` is checkpointed: every `checkpoint_every`
    /// states, and the state the node stops at.
    fn checkpoints_after(&self, round: u64) -> bool {
        let next = round + 1;
        next.is_multiple_of(self.options.checkpoint_every.max(1))
            || self.options.rounds.is_some_and(|stop| next >= stop)
            || self.stopping
    }

    /// Checkpoints the state if a merge left it unsaved (`checkpoint_every`),
    /// so that a clean stop loses nothing.
    async fn save_unsaved(&mut self) -> Result<(), NodeError> {
        if !self.unsaved || self.lent {
            return Ok(());
        }
        let (store, state, residual) = (self.store.clone(), self.state.clone(), self.residual.clone());
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || store.save_checkpoint(&state, &residual)).await.map_err(
            |e| NodeError::Merge {
                round: self.state.round,
                reason: format!("the checkpoint task failed: {e}"),
            },
        )??;
        self.busy.work(&self.metrics, "checkpoint", started.elapsed(), None);
        self.unsaved = false;
        info!(round = self.state.round, "checkpointed the last merged round on the way out");
        Ok(())
    }

    /// Queues the evaluation of the state just merged in `round`; whether it was.
    fn evaluate(&mut self, round: u64) -> bool {
        let Some(data) = self.eval.clone().filter(|_| !self.stopping) else { return false };
        if !evaluates_after(round, self.options.evaluate_every, self.options.rounds) {
            return false;
        }
        let job = EvalJob { round, state: self.state.clone(), model: self.spec.model.clone(), data };
        if let Submitted::Dropped(Job::Eval(older)) = self.workers.submit(Job::Eval(job), &self.metrics) {
            debug!(round = older.round, "evaluations fall behind the rounds; this round reports no accuracy");
            self.evaluated(older.round, None);
        }
        true
    }

    /// The evaluation of `round` is done (`None`: dropped); reports what is ready.
    fn evaluated(&mut self, round: u64, eval: Option<starling_training::trainer::Evaluation>) {
        if let Some(pending) = self.reports.iter_mut().find(|p| p.report.round == round && p.evaluating) {
            pending.report.eval = eval;
            pending.evaluating = false;
        }
        self.flush_reports();
    }

    /// Logs and sends the merged rounds whose evaluations are in, in order.
    fn flush_reports(&mut self) {
        while self.reports.front().is_some_and(|p| !p.evaluating) {
            let PendingReport { report, trained, .. } = self.reports.pop_front().expect("a report");
            info!(
                round = report.round,
                merged = report.merged,
                reason = ?report.reason,
                loss = report.train_loss,
                accuracy = report.eval.map(|e| e.accuracy),
                eval_loss = report.eval.map(|e| e.loss),
                perplexity = report.eval.map(|e| e.perplexity()),
                peers = report.peers,
                epsilon = report.epsilon,
                "round merged"
            );
            self.record_report(&report, trained);
            if let Some(events) = &self.events {
                let _ = events.send(NodeEvent::Round(report));
            }
        }
    }

    /// Replaces the state with one installed from peers; the writer checkpoints
    /// it, and the deltas of its round that verify go to the engine.
    pub(super) fn install(
        &mut self,
        state: ModelState,
        from: u64,
        expected_from: u64,
        deltas: Vec<SignedDelta>,
    ) -> Result<(), NodeError> {
        // The engine installs nothing while a merge has the state.
        debug_assert!(!self.lent, "installing over a lent state");
        self.state = Arc::new(state);
        self.unsaved = false;
        self.metrics.state_syncs.inc();
        let job = Job::Install {
            state: self.state.clone(),
            residual: self.residual.clone(),
            store: self.store.clone(),
            fetched: self.kept_chunks_root.take(),
            from,
            expected_from,
        };
        // Never dropped: see the queue's policy.
        let _ = self.workers.submit(job, &self.metrics);
        self.take_offered(deltas)?;
        self.want_snapshot();
        Ok(())
    }

    /// Peers' deltas of our round that came with their offers: those that
    /// verify and that the engine admits go to it (large ones through a worker).
    pub(super) fn take_offered(&mut self, deltas: Vec<SignedDelta>) -> Result<(), NodeError> {
        for delta in deltas {
            if self.stopping {
                break;
            }
            if delta.payload.len() > INLINE_VERIFY_BYTES {
                self.verify_later(Origin::Installed, Unverified::Decoded(delta));
            } else {
                let rules = self.rules;
                self.on_installed_delta(delta.validate(&rules).map(|()| delta))?;
            }
        }
        Ok(())
    }

    fn on_installed_delta(&mut self, verified: Result<SignedDelta, Refusal>) -> Result<(), NodeError> {
        match verified {
            Ok(delta) if self.engine.admit(&delta.header) == Admission::Accept => {
                self.drive(Input::PeerDelta(delta))
            }
            _ => Ok(()),
        }
    }

    /// Queues a large delta for verification; a full queue drops it (a gossiped one is ignored, not blamed).
    pub(super) fn verify_later(&mut self, origin: Origin, delta: Unverified) {
        let job = Job::Verify { origin, delta, rules: self.rules };
        if let Submitted::Dropped(job) = self.workers.submit(job, &self.metrics) {
            self.dropped(job);
        }
    }

    /// What a job dropped from its queue leaves to do.
    fn dropped(&mut self, job: Job) {
        match job {
            Job::Verify { origin: Origin::Gossip { source, id }, .. } => {
                debug!(peer = %source, "the verification queue is full; ignoring a delta");
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &id,
                    &source,
                    libp2p::gossipsub::MessageAcceptance::Ignore,
                );
            }
            Job::Eval(job) => self.evaluated(job.round, None),
            _ => {}
        }
    }

    /// A worker's result.
    pub(super) fn on_work_done(&mut self, finished: Finished) -> Result<(), NodeError> {
        let Finished { kind, done, timings } = finished;
        self.workers.finished(kind, &self.metrics);
        for (what, took, cpu) in timings {
            self.busy.work(&self.metrics, what, took, Some(cpu));
            if what == "merge" {
                self.metrics.merge_seconds.observe(took.as_secs_f64());
            }
        }
        match done {
            Done::Merged(merged) => self.on_merged(merged),
            Done::Checkpointed { round, result } => {
                self.snapshots.insert(result?);
                debug!(round, "checkpointed");
                self.answer_offers()?;
                self.want_snapshot();
                Ok(())
            }
            Done::Installed { result, round, from, expected_from, params_hash } => {
                self.snapshots.insert(result?);
                self.answer_offers()?;
                info!(
                    from,
                    to = round,
                    expected_from,
                    params_hash = %hex(&params_hash),
                    "installed the state of the swarm"
                );
                if let Some(events) = &self.events {
                    let _ = events.send(NodeEvent::StateInstalled {
                        node: self.me,
                        from,
                        round,
                        traffic: self.metrics.transport_bytes(),
                        fetch_seconds: self.fetch_clock.1.take().map(|d| d.as_secs_f64()),
                    });
                }
                Ok(())
            }
            Done::Own { round, base, result, noise } => self.on_own_saved(round, base, result, noise),
            Done::Snapshot(Ok(served)) => {
                self.snapshots.insert(served);
                self.answer_offers()?;
                self.want_snapshot();
                Ok(())
            }
            Done::Snapshot(Err(e)) => {
                warn!(error = %e, "cannot write the state file to serve; answering the waiting offer requests unavailable");
                self.refuse_offers();
                Ok(())
            }
            Done::Verified { origin: Origin::Gossip { source, id }, result } => {
                self.on_verified(source, id, result)
            }
            Done::Verified { origin: Origin::Installed, result } => self.on_installed_delta(result),
            Done::Evaluated { round, result } => {
                let eval = result?;
                self.evaluated(round, Some(eval));
                Ok(())
            }
            Done::Decoded { root, result } => self.drive(Input::StateDecoded { root, result }),
        }
    }

    /// When the loop ends: drops the work that only served the running node
    /// (verifications, snapshots, evaluations) and waits for the rest, so the
    /// last merge is checkpointed and its state is back for the outcome.
    pub(super) async fn finish_work(
        &mut self,
        work: &mut tokio::sync::mpsc::UnboundedReceiver<Finished>,
    ) -> Result<(), NodeError> {
        self.stopping = true;
        for kind in [Kind::Verify, Kind::Snapshot, Kind::Eval, Kind::Decode] {
            for job in self.workers.cancel(kind, &self.metrics) {
                self.dropped(job);
            }
        }
        let until = tokio::time::sleep(FINISH_TIME);
        tokio::pin!(until);
        while !self.workers.idle() {
            tokio::select! {
                Some(done) = work.recv() => self.on_work_done(done)?,
                _ = &mut until => {
                    warn!("work still running after {FINISH_TIME:?}; stopping without it");
                    break;
                }
            }
        }
        self.save_unsaved().await?;
        for pending in &mut self.reports {
            pending.evaluating = false;
        }
        self.flush_reports();
        while let Some((_, channel)) = self.offers.pop_front() {
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, starling_protocol::wire::SyncResponse::Unavailable);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::evaluates_after;

    #[test]
    fn evaluation_every_n_rounds_keeps_the_last() {
        let evaluated = |every, stop| (0..7).filter(|&r| evaluates_after(r, every, stop)).collect::<Vec<_>>();
        assert_eq!(evaluated(1, Some(7)), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(evaluated(3, Some(7)), vec![2, 5, 6]);
        assert_eq!(evaluated(3, None), vec![2, 5]);
        assert_eq!(evaluated(0, None), vec![0, 1, 2, 3, 4, 5, 6], "0 reads as every round");
    }
}
