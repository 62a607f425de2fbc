//! `starling swarm`: N real nodes in one process, over loopback TCP, training
//! the built-in task together; then the figures that say how well it went.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration, time::Instant};

use ed25519_dalek::SigningKey;
use serde::Serialize;
use starling_protocol::{consensus_distance, RunSpec};
use tokio::sync::{mpsc, watch};

use crate::{
    data::{Dataset, SyntheticTask},
    model::Mlp,
    net::NetOptions,
    node::{run_node, shard_seed, NodeError, NodeEvent, NodeOptions, NodeOutcome, RoundReport},
    trainer::{evaluate, train_alone},
};

/// What `starling swarm` is asked to do.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub nodes: usize,
    pub rounds: u64,
    pub spec: RunSpec,
    /// Where node datadirs go; a temporary directory when absent.
    pub datadir: Option<PathBuf>,
    /// Seeds the node keys, so the whole run is reproducible.
    pub seed: u64,
    /// Print progress lines to stderr instead of stdout (stdout carries JSON).
    pub progress_to_stderr: bool,
    /// Print no progress lines at all.
    pub quiet: bool,
}

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
}

/// Errors of the local swarm.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error("--rounds must be at least 1")]
    NoRounds,
    #[error("node {index} failed: {source}")]
    Node { index: usize, source: NodeError },
    #[error("node {0} stopped before it started listening")]
    NoAddress(usize),
    #[error("cannot create a temporary datadir: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Train(#[from] crate::trainer::TrainError),
    #[error("data: {0}")]
    Data(String),
}

/// The key of node `index` in a swarm seeded with `seed`.
pub fn node_key(seed: u64, index: usize) -> SigningKey {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 local swarm node key v1");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(h.finalize().as_bytes())
}

/// Runs the swarm to the end and returns its summary.
pub async fn run_swarm(options: SwarmOptions) -> Result<SwarmSummary, SwarmError> {
    if options.nodes == 0 {
        return Err(SwarmError::NoNodes);
    }
    if options.rounds == 0 {
        return Err(SwarmError::NoRounds);
    }
    let wall = Instant::now();
    let temp = match &options.datadir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(SwarmError::TempDir)?),
    };
    let base =
        options.datadir.clone().unwrap_or_else(|| temp.as_ref().expect("temp dir").path().to_path_buf());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut addresses = Vec::new();
    let mut handles = Vec::new();
    let mut early_reports = Vec::new();
    for index in 0..options.nodes {
        let node_options = NodeOptions {
            datadir: base.join(format!("node-{index}")),
            spec: options.spec.clone(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            // Every node dials all earlier ones: a full mesh from the start.
            bootnodes: addresses.clone(),
            net: NetOptions { mdns: false, ..NetOptions::default() },
            wait_peers: options.nodes - 1,
            wait_timeout: Duration::from_secs(60),
            rounds: Some(options.rounds),
            key: Some(node_key(options.seed, index)),
            evaluate: true,
        };
        handles.push(tokio::spawn(run_node(node_options, Some(events_tx.clone()), shutdown_rx.clone())));
        loop {
            match events_rx.recv().await {
                Some(NodeEvent::Listening { address, .. }) => {
                    addresses.push(address);
                    break;
                }
                Some(NodeEvent::Round(report)) => early_reports.push(report),
                None => return Err(SwarmError::NoAddress(index)),
            }
        }
    }
    drop(events_tx);
    let swarm_start = Instant::now();
    let mut progress =
        Progress::new(options.nodes, options.rounds, options.progress_to_stderr, options.quiet);
    for report in early_reports {
        progress.add(report);
    }
    while let Some(event) = events_rx.recv().await {
        if let NodeEvent::Round(report) = event {
            progress.add(report);
        }
    }
    let mut outcomes = Vec::new();
    for (index, handle) in handles.into_iter().enumerate() {
        let outcome =
            handle.await.expect("node task panicked").map_err(|source| SwarmError::Node { index, source })?;
        outcomes.push(outcome);
    }
    drop(shutdown_tx);
    let swarm_seconds = swarm_start.elapsed().as_secs_f64();
    summarize(&options, &outcomes, swarm_seconds, wall)
}

fn summarize(
    options: &SwarmOptions,
    outcomes: &[NodeOutcome],
    swarm_seconds: f64,
    wall: Instant,
) -> Result<SwarmSummary, SwarmError> {
    let spec = &options.spec;
    let task = SyntheticTask::new(spec).map_err(|e| SwarmError::Data(e.to_string()))?;
    let eval = task.eval_set();
    let shards: Vec<Dataset> =
        outcomes.iter().map(|o| task.shard(shard_seed(&o.node), spec.dataset.samples_per_node)).collect();
    let layers = &spec.model.layers;
    let mut accuracies = Vec::new();
    for outcome in outcomes {
        accuracies.push(evaluate(layers, &outcome.state.params, &eval)?.accuracy);
    }

    let central_start = Instant::now();
    let all = Dataset::concat(&shards).map_err(|e| SwarmError::Data(e.to_string()))?;
    let initial = Mlp::initial_params(&spec.model.layers, spec.seed);
    let steps = options.rounds * spec.inner.steps as u64 * outcomes.len() as u64;
    let central = train_alone(spec, all, &initial, steps, spec.seed)?;
    let centralized_accuracy = evaluate(layers, &central, &eval)?.accuracy;
    let centralized_seconds = central_start.elapsed().as_secs_f64();

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
        mean_accuracy: accuracies.iter().sum::<f32>() / accuracies.len() as f32,
        min_accuracy: accuracies.iter().copied().fold(f32::INFINITY, f32::min),
        centralized_accuracy,
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
    })
}

/// Prints one line per round once every node has merged it.
struct Progress {
    nodes: usize,
    rounds: u64,
    to_stderr: bool,
    quiet: bool,
    pending: BTreeMap<u64, Vec<RoundReport>>,
    started: Instant,
}

impl Progress {
    fn new(nodes: usize, rounds: u64, to_stderr: bool, quiet: bool) -> Self {
        Self { nodes, rounds, to_stderr, quiet, pending: BTreeMap::new(), started: Instant::now() }
    }

    fn add(&mut self, report: RoundReport) {
        let round = report.round;
        let reports = self.pending.entry(round).or_default();
        reports.push(report);
        if reports.len() < self.nodes {
            return;
        }
        let reports = self.pending.remove(&round).expect("just inserted");
        if self.quiet {
            return;
        }
        let n = reports.len() as f32;
        let loss = reports.iter().map(|r| r.train_loss).sum::<f32>() / n;
        let accs: Vec<f32> = reports.iter().filter_map(|r| r.eval.map(|e| e.accuracy)).collect();
        let acc = accs.iter().sum::<f32>() / accs.len().max(1) as f32;
        let min_acc = accs.iter().copied().fold(f32::INFINITY, f32::min);
        let peers = reports.iter().map(|r| r.peers).sum::<usize>() as f32 / n;
        let sent = reports.iter().map(|r| r.traffic.sent).sum::<u64>() as f64 / n as f64;
        let deadline =
            reports.iter().filter(|r| r.reason != starling_protocol::round::CloseReason::Quorum).count();
        let line = format!(
            "round {:>3}/{}  loss {loss:.4}  accuracy {:.2}% (min {:.2}%)  peers {peers:.1}  sent {}/node  {:.1}s{}",
            round + 1,
            self.rounds,
            acc * 100.0,
            min_acc * 100.0,
            human_bytes(sent),
            self.started.elapsed().as_secs_f64(),
            if deadline > 0 { format!("  ({deadline} closed by deadline)") } else { String::new() },
        );
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Bytes for people.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_are_deterministic_and_distinct() {
        assert_eq!(node_key(1, 0).to_bytes(), node_key(1, 0).to_bytes());
        assert_ne!(node_key(1, 0).to_bytes(), node_key(1, 1).to_bytes());
        assert_ne!(node_key(1, 0).to_bytes(), node_key(2, 0).to_bytes());
    }
}
