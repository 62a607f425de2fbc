//! What a local swarm reports: the progress line printed as each round
//! completes, and the summary of a finished run.

use std::{collections::BTreeMap, io::Write, time::Duration, time::Instant};

use serde::Serialize;
use starling_protocol::consensus_distance;
use starling_training::{
    datasets::{shard_seed, Shard, TrainData, Workload},
    trainer::{evaluate, train_alone},
};

use super::{SwarmError, SwarmOptions};
use crate::node::{NodeOutcome, RoundReport};
use crate::units::human_bytes;

/// The figures of a finished local swarm.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmSummary {
    pub run_id: String,
    pub nodes: usize,
    pub rounds: u64,
    pub params: usize,
    pub mean_accuracy: f32,
    pub min_accuracy: f32,
    pub centralized_accuracy: f32,
    /// Mean held-out loss of the nodes' final parameters (nats; for a
    /// language model, per token, so perplexity is its exp).
    pub mean_loss: f32,
    /// Held-out loss of the initial parameters.
    pub initial_loss: f32,
    /// `exp(mean_loss)`: a language model's held-out perplexity per token.
    pub mean_perplexity: f32,
    pub centralized_loss: f32,
    pub model: String,
    pub dataset: String,
    pub partition: String,
    pub consensus_distance: f64,
    pub bytes_sent_per_node: f64,
    pub bytes_received_per_node: f64,
    pub bytes_sent_per_node_per_round: f64,
    /// Bytes received per node per round, protocol overhead and gossip duplicates included.
    pub bytes_received_per_node_per_round: f64,
    /// Encoded bytes of all the distinct deltas of a round (every node's one delta).
    pub unique_delta_bytes_per_round: f64,
    /// What one node must receive at least: every other node's delta.
    pub needed_delta_bytes_per_node_per_round: f64,
    /// bytes_received_per_node_per_round / needed_delta_bytes_per_node_per_round.
    pub received_over_needed: f64,
    pub codec: String,
    pub dense_delta_bytes: usize,
    pub wall_seconds: f64,
    pub swarm_seconds: f64,
    pub centralized_seconds: f64,
    /// States installed by nodes that were new, behind or had diverged.
    pub state_syncs: u64,
    /// The largest ε any node spent, in a run with `[privacy]` (null otherwise).
    pub epsilon: Option<f64>,
    /// Per round, in order.
    pub curve: Vec<CurvePoint>,
}

pub(super) fn summarize(
    options: &SwarmOptions,
    outcomes: &[NodeOutcome],
    curve: Vec<CurvePoint>,
    swarm_seconds: f64,
    wall: Instant,
) -> Result<SwarmSummary, SwarmError> {
    let spec = &options.spec;
    let data_error = |e: starling_training::data::DataError| SwarmError::Data(e.to_string());
    let workload = Workload::open_with(spec, options.dataset.as_ref(), options.tokenizer.as_deref())
        .map_err(data_error)?;
    let eval = workload.eval();
    let initial_loss = evaluate(&spec.model, &starling_training::init::initial_params(spec)?, &eval)?.loss;
    let mut accuracies = Vec::new();
    let mut losses = Vec::new();
    for outcome in outcomes {
        let e = evaluate(&spec.model, &outcome.state.params, &eval)?;
        accuracies.push(e.accuracy);
        losses.push(e.loss);
    }

    let (centralized, centralized_seconds) = if options.centralized_baseline {
        let central_start = Instant::now();
        let count = outcomes.len();
        let shards = outcomes
            .iter()
            .enumerate()
            .map(|(index, o)| workload.shard(Shard { index, count }, shard_seed(&o.node)))
            .collect::<Result<Vec<TrainData>, _>>()
            .map_err(data_error)?;
        let all = workload.union(&shards).map_err(data_error)?;
        let initial = starling_training::init::initial_params(spec)?;
        let steps = options.rounds * spec.inner.steps as u64 * outcomes.len() as u64;
        let central = train_alone(spec, all, &initial, steps, spec.seed)?;
        (Some(evaluate(&spec.model, &central, &eval)?), central_start.elapsed().as_secs_f64())
    } else {
        (None, 0.0)
    };
    let centralized_accuracy = centralized.map_or(f32::NAN, |e| e.accuracy);
    let centralized_loss = centralized.map_or(f32::NAN, |e| e.loss);
    let mean_loss = losses.iter().sum::<f32>() / losses.len().max(1) as f32;

    let n = outcomes.len() as f64;
    let sent: f64 = outcomes.iter().map(|o| o.traffic.sent as f64).sum::<f64>() / n;
    let received: f64 = outcomes.iter().map(|o| o.traffic.received as f64).sum::<f64>() / n;
    let params: Vec<&[f32]> = outcomes.iter().map(|o| o.state.params.as_slice()).collect();
    let rounds = options.rounds as f64;
    let unique = outcomes.iter().map(|o| o.published_bytes as f64).sum::<f64>() / rounds;
    let needed = unique * (n - 1.0) / n;
    let received_per_round = received / rounds;
    Ok(SwarmSummary {
        run_id: spec.run_id().to_string(),
        nodes: outcomes.len(),
        rounds: options.rounds,
        params: spec.param_count(),
        initial_loss,
        mean_perplexity: mean_loss.exp(),
        mean_accuracy: accuracies.iter().sum::<f32>() / accuracies.len() as f32,
        min_accuracy: accuracies.iter().copied().fold(f32::INFINITY, f32::min),
        centralized_accuracy,
        mean_loss,
        centralized_loss,
        model: spec.model.kind().to_string(),
        dataset: options.dataset.as_ref().unwrap_or(&spec.dataset.kind).to_string(),
        partition: match spec.dataset.partition {
            starling_protocol::Partition::Iid => "iid".to_string(),
            starling_protocol::Partition::Dirichlet(a) => format!("dirichlet:{a}"),
        },
        consensus_distance: consensus_distance(&params),
        bytes_sent_per_node: sent,
        bytes_received_per_node: received,
        bytes_sent_per_node_per_round: sent / rounds,
        bytes_received_per_node_per_round: received_per_round,
        unique_delta_bytes_per_round: unique,
        needed_delta_bytes_per_node_per_round: needed,
        received_over_needed: if needed > 0.0 { received_per_round / needed } else { 0.0 },
        codec: spec.codec.to_string(),
        dense_delta_bytes: spec.param_count() * 4,
        wall_seconds: wall.elapsed().as_secs_f64(),
        swarm_seconds,
        centralized_seconds,
        state_syncs: 0,
        epsilon: curve.iter().filter_map(|c| c.epsilon).reduce(f64::max),
        curve,
    })
}

/// Prints one line per round once every node has merged it.
pub(super) struct Progress {
    nodes: usize,
    rounds: u64,
    to_stderr: bool,
    quiet: bool,
    pending: BTreeMap<u64, Vec<RoundReport>>,
    started: Instant,
    /// When the last report came (or the swarm started).
    last_report: Instant,
    /// The last round every node has merged.
    complete: Option<u64>,
    /// Each completed round's means over the nodes.
    pub(super) curve: Vec<CurvePoint>,
}

/// One round of the learning curve: means over the nodes that merged it.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub round: u64,
    pub train_loss: f32,
    /// Held-out loss and accuracy over the nodes that evaluate (NaN if none do).
    pub eval_loss: f32,
    pub accuracy: f32,
    /// The largest ε spent by a node after this round, in a private run.
    pub epsilon: Option<f64>,
}

impl Progress {
    pub(super) fn new(nodes: usize, rounds: u64, to_stderr: bool, quiet: bool) -> Self {
        let now = Instant::now();
        Self {
            nodes,
            rounds,
            to_stderr,
            quiet,
            pending: BTreeMap::new(),
            started: now,
            last_report: now,
            complete: None,
            curve: Vec::new(),
        }
    }

    pub(super) fn since_last_merge(&self) -> Duration {
        self.last_report.elapsed()
    }

    /// Where the swarm got to, for a stall message.
    pub(super) fn complete_rounds(&self) -> String {
        let complete = self.complete.map_or("none".to_string(), |r| (r + 1).to_string());
        let partial: Vec<String> = self
            .pending
            .iter()
            .map(|(round, r)| format!("{}/{} nodes merged round {}", r.len(), self.nodes, round + 1))
            .collect();
        if partial.is_empty() {
            complete
        } else {
            format!("{complete}; {}", partial.join(", "))
        }
    }

    pub(super) fn add(&mut self, mut report: RoundReport) {
        self.last_report = Instant::now();
        report.params = None;
        let round = report.round;
        let reports = self.pending.entry(round).or_default();
        reports.push(report);
        if reports.len() >= self.nodes {
            self.complete(round);
        }
    }

    /// A node is gone for good: rounds count as merged by every node once the
    /// others have merged them.
    pub(super) fn node_gone(&mut self) {
        self.nodes = self.nodes.saturating_sub(1).max(1);
        let ready: Vec<u64> =
            self.pending.iter().filter(|(_, r)| r.len() >= self.nodes).map(|(&round, _)| round).collect();
        for round in ready {
            self.complete(round);
        }
    }

    /// Prints and records `round`, which every node has merged.
    fn complete(&mut self, round: u64) {
        let reports = self.pending.remove(&round).expect("a pending round");
        self.complete = self.complete.max(Some(round));
        let n = reports.len() as f32;
        let loss = reports.iter().map(|r| r.train_loss).sum::<f32>() / n;
        let accs: Vec<f32> = reports.iter().filter_map(|r| r.eval.map(|e| e.accuracy)).collect();
        let acc = accs.iter().sum::<f32>() / accs.len().max(1) as f32;
        let eval_losses: Vec<f32> = reports.iter().filter_map(|r| r.eval.map(|e| e.loss)).collect();
        let eval_loss = eval_losses.iter().sum::<f32>() / eval_losses.len() as f32;
        let epsilon = reports.iter().filter_map(|r| r.epsilon).reduce(f64::max);
        self.curve.push(CurvePoint { round, train_loss: loss, eval_loss, accuracy: acc, epsilon });
        if self.quiet {
            return;
        }
        let min_acc = accs.iter().copied().fold(f32::INFINITY, f32::min);
        let peers = reports.iter().map(|r| r.peers).sum::<usize>() as f32 / n;
        let sent = reports.iter().map(|r| r.traffic.sent).sum::<u64>() as f64 / n as f64;
        let deadline =
            reports.iter().filter(|r| r.reason != starling_protocol::round::CloseReason::Quorum).count();
        let loss = if loss.is_finite() { format!("{loss:.4}") } else { "-".into() };
        let line = format!(
            "round {:>3}/{}  loss {loss}  accuracy {:.2}% (min {:.2}%)  peers {peers:.1}  sent {}/node  {:.1}s{}",
            round + 1,
            self.rounds,
            acc * 100.0,
            min_acc * 100.0,
            human_bytes(sent),
            self.started.elapsed().as_secs_f64(),
            if deadline > 0 { format!("  ({deadline} closed by deadline)") } else { String::new() },
        );
        let line = match epsilon {
            Some(epsilon) => format!("{line}  ε {epsilon:.2}"),
            None => line,
        };
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    }
}
