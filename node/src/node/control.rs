//! How the world outside the event loop (the HTTP API) asks a running node for
//! its status and metrics and pauses or resumes its training: requests over a
//! channel, answered by the loop itself, so nothing is shared behind a lock and
//! every answer is the node's state of that instant.

use std::time::{Duration, Instant};

use starling_protocol::engine::{Input, Phase};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use super::{Node, NodeError};
use crate::status::{History, NodeState, NodeStatus, RoundPoint};

/// A request to the event loop.
#[derive(Debug)]
pub enum ControlRequest {
    Status(oneshot::Sender<NodeStatus>),
    /// The metrics in Prometheus text format.
    Metrics(oneshot::Sender<String>),
    /// Pause (`true`) or resume (`false`) training; answers with the status after.
    Pause(bool, oneshot::Sender<NodeStatus>),
    /// The node's current model (its state after its last merge).
    Model(oneshot::Sender<ModelSnapshot>),
}

/// A copy of a running node's model, for `starling export` while it runs.
#[derive(Clone, Debug)]
pub struct ModelSnapshot {
    pub spec: starling_protocol::RunSpec,
    /// The merges that made it.
    pub round: u64,
    pub params: Vec<f32>,
}

/// Model requests that may wait for a merge; more get no answer (the client
/// is told the node stopped, and may ask again).
const MODEL_WAITERS: usize = 8;

/// Why a control request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the node has stopped")]
    Stopped,
    #[error("the node did not answer within {0:?} (it may be starting, or busy merging)")]
    Busy(Duration),
}

/// The handle the HTTP server holds; cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeControl {
    tx: mpsc::Sender<ControlRequest>,
    timeout: Duration,
}

impl NodeControl {
    /// A handle and the receiver to give [`super::run_node_controlled`].
    pub fn channel() -> (Self, mpsc::Receiver<ControlRequest>) {
        let (tx, rx) = mpsc::channel(64);
        (Self { tx, timeout: Duration::from_secs(5) }, rx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.tx.send(make(reply)).await.map_err(|_| ControlError::Stopped)?;
            answer.await.map_err(|_| ControlError::Stopped)
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ControlError::Busy(self.timeout))?
    }

    pub async fn status(&self) -> Result<NodeStatus, ControlError> {
        self.ask(ControlRequest::Status).await
    }

    pub async fn metrics(&self) -> Result<String, ControlError> {
        self.ask(ControlRequest::Metrics).await
    }

    pub async fn set_paused(&self, paused: bool) -> Result<NodeStatus, ControlError> {
        self.ask(|reply| ControlRequest::Pause(paused, reply)).await
    }

    pub async fn model(&self) -> Result<ModelSnapshot, ControlError> {
        self.ask(ControlRequest::Model).await
    }
}

/// What the node keeps for its status beyond its metrics.
#[derive(Debug)]
pub(super) struct Telemetry {
    started: Instant,
    history: History,
    /// When the training in flight began.
    training_since: Option<Instant>,
    /// When the last training ended.
    trained_at: Option<Instant>,
    /// Whether the round being merged was trained here.
    trained_round: Option<u64>,
    last_accuracy: Option<f32>,
    last_eval_loss: Option<f32>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            history: History::default(),
            training_since: None,
            trained_at: None,
            trained_round: None,
            last_accuracy: None,
            last_eval_loss: None,
        }
    }
}

impl Telemetry {
    /// Notes that training began; returns how long since the last one ended.
    pub(super) fn training_started(&mut self) -> Option<std::time::Duration> {
        let now = Instant::now();
        self.training_since = Some(now);
        self.trained_at.take().map(|at| now - at)
    }
}

impl Node {
    /// Answers one control request.
    pub(super) fn on_control(&mut self, request: ControlRequest) -> Result<(), NodeError> {
        match request {
            ControlRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ControlRequest::Metrics(reply) => {
                self.metrics.peers.set(self.run_peers.len() as i64);
                let _ = reply.send(self.metrics.render());
            }
            ControlRequest::Pause(paused, reply) => {
                self.set_paused(paused)?;
                let _ = reply.send(self.status());
            }
            ControlRequest::Model(reply) => {
                if self.lent {
                    // Answered when the merge hands the state back.
                    if self.model_waiters.len() < MODEL_WAITERS {
                        self.model_waiters.push(reply);
                    }
                } else {
                    self.send_model(reply);
                }
            }
        }
        Ok(())
    }

    /// Sends a copy of the model, made on a blocking thread.
    fn send_model(&self, reply: oneshot::Sender<ModelSnapshot>) {
        let (state, spec) = (self.state.clone(), self.spec.clone());
        tokio::task::spawn_blocking(move || {
            let _ = reply.send(ModelSnapshot { spec, round: state.round, params: state.params.clone() });
        });
    }

    /// Answers the model requests that waited for a merge.
    pub(super) fn answer_model_waiters(&mut self) {
        for reply in std::mem::take(&mut self.model_waiters) {
            self.send_model(reply);
        }
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), NodeError> {
        if self.engine.rounds().paused() == paused {
            return Ok(());
        }
        info!(round = self.state.round, "{}", if paused { "training paused" } else { "training resumed" });
        self.metrics.paused.set(i64::from(paused));
        self.drive(Input::Paused(paused))
    }

    /// Whether a trained delta must be dropped rather than published: training
    /// was paused while it ran.
    pub(super) fn drop_trained_while_paused(&mut self) -> bool {
        if let Some(since) = self.telemetry.training_since.take() {
            let took = since.elapsed();
            self.telemetry.trained_at = Some(Instant::now());
            self.metrics.train_seconds.observe(took.as_secs_f64());
            // Beside the heavy work, so a run's summary splits a round's time.
            self.busy.stats_only("train", took);
        }
        if self.engine.rounds().paused() {
            info!(round = self.state.round, "paused: the delta trained for this round is not published");
            return true;
        }
        self.telemetry.trained_round = Some(self.state.round);
        false
    }

    /// Records a merged round in the metrics; returns whether it was trained here.
    pub(super) fn record_merged(&mut self, round: u64) -> bool {
        self.metrics.peers.set(self.run_peers.len() as i64);
        let trained = self.telemetry.trained_round.take() == Some(round);
        if trained {
            self.metrics.train_loss.set(f64::from(self.last_loss));
        }
        trained
    }

    /// Records a reported round (with its evaluation, if any) in the metrics and the history.
    pub(super) fn record_report(&mut self, report: &super::RoundReport, trained: bool) {
        if let Some(eval) = report.eval {
            self.metrics.eval_accuracy.set(f64::from(eval.accuracy));
            self.metrics.eval_loss.set(f64::from(eval.loss));
            self.telemetry.last_accuracy = Some(eval.accuracy);
            self.telemetry.last_eval_loss = Some(eval.loss);
        }
        let point = RoundPoint {
            round: report.round,
            at_seconds: self.telemetry.started.elapsed().as_secs_f64(),
            loss: trained.then_some(report.train_loss).filter(|l| l.is_finite()),
            accuracy: report.eval.map(|e| e.accuracy),
            eval_loss: report.eval.map(|e| e.loss),
            peers: report.peers,
            merged: report.merged,
            bytes_in: 0,
            bytes_out: 0,
        };
        self.telemetry.history.push(point, report.traffic.received, report.traffic.sent);
    }

    fn node_state(&self) -> NodeState {
        match self.engine.phase() {
            Phase::Gathering => NodeState::Waiting,
            Phase::Probing => NodeState::Syncing,
            Phase::Done => NodeState::Finished,
            Phase::Running if self.syncing() => NodeState::Syncing,
            Phase::Running if self.engine.rounds().paused() => NodeState::Paused,
            Phase::Running => NodeState::Training,
        }
    }

    fn status(&self) -> NodeStatus {
        let traffic = self.metrics.transport_bytes();
        NodeStatus {
            peer_id: self.swarm.local_peer_id().to_string(),
            run_id: self.spec.run_id().to_string(),
            run_name: self.spec.name.clone(),
            round: self.state.round,
            lineage: crate::statesync::hex(&self.state.lineage),
            state: self.node_state(),
            paused: self.engine.rounds().paused(),
            loss: Some(self.last_loss).filter(|l| l.is_finite()),
            accuracy: self.telemetry.last_accuracy,
            eval_loss: self.telemetry.last_eval_loss,
            peers: self.run_peers.len(),
            bytes_in: traffic.received,
            bytes_out: traffic.sent,
            rounds_merged: self.rounds_merged,
            deltas_published: self.metrics.deltas_published.get(),
            deltas_accepted: self.metrics.deltas_accepted.get(),
            deltas_refused: self.refused_by_reason.clone(),
            uptime_seconds: self.telemetry.started.elapsed().as_secs_f64(),
            privacy: self.privacy_status(),
            history: self.telemetry.history.points(),
        }
    }
}

/// Waits for the next control request; never, when there is no channel.
pub(super) async fn next_request(control: &mut Option<mpsc::Receiver<ControlRequest>>) -> ControlRequest {
    match control {
        Some(rx) => match rx.recv().await {
            Some(request) => request,
            None => {
                // The server is gone: stop asking.
                *control = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

impl Node {
    /// Counts a swarm event, and the protocol event inside it, in libp2p's metrics.
    pub(super) fn record_p2p(&self, event: &libp2p::swarm::SwarmEvent<super::BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        let p2p = &self.metrics.p2p;
        p2p.record(event);
        if let libp2p::swarm::SwarmEvent::Behaviour(event) = event {
            match event {
                super::BehaviourEvent::Gossipsub(e) => p2p.record(e),
                super::BehaviourEvent::Identify(e) => p2p.record(e),
                super::BehaviourEvent::Kad(e) => p2p.record(e),
                super::BehaviourEvent::Ping(e) => p2p.record(e),
                _ => {}
            }
        }
    }
}
