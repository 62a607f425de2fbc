//! starling-netsim: runs the real Starling protocol for many nodes, on networks
//! one cannot build, reproducibly.
//!
//! A [`Scenario`] (TOML) names the swarm, workload, protocol settings, link
//! model and a schedule of faults. In **virtual mode** ([`engine`]) every node
//! runs the protocol core of `starling-protocol` (its `RoundState`, codecs,
//! aggregation, outer optimizer and signatures) in a discrete-event simulation
//! driven by the scenario's seed, so the same scenario gives the same files.
//! In **live mode** ([`live`]) the scenario starts real node stacks, the code of
//! `starling run`, in one process over libp2p's in-memory transport. Either way
//! the run is reported as `summary.json`, `rounds.csv` and SVG plots
//! ([`report`]).

pub mod attack;
mod draw;
pub mod engine;
pub mod link;
pub mod live;
pub mod matrix;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod workload;

use std::time::Instant;

pub use report::{RoundRow, Summary};
pub use scenario::{Mode, Scenario};

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error("workload: {0}")]
    Workload(String),
    #[error("node {node} failed to merge round {round}: {reason}")]
    Merge { node: usize, round: u64, reason: String },
    #[error(
        "the run is stuck: no node got past round {round} in {stalled_s} s of virtual time \
         (nodes still at it: {nodes:?}); run it with NETSIM_NOTES=1 to see what they do"
    )]
    Stalled { round: u64, stalled_s: u64, nodes: Vec<usize> },
    #[error("live mode: {0}")]
    Live(String),
    #[error("report: {0}")]
    Report(String),
}

/// A finished run: its summary, rows and event markers (round, label).
pub struct RunOutput {
    pub summary: Summary,
    pub rows: Vec<RoundRow>,
    pub markers: Vec<(u64, String)>,
}

/// Runs a scenario in its mode. `host_figures` adds wall time and peak memory
/// to the summary (they differ between runs of the same scenario).
pub fn run(
    scenario: &Scenario,
    host_figures: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunOutput, SimError> {
    scenario.validate()?;
    let start = Instant::now();
    let mut output = match scenario.mode {
        Mode::Virtual => {
            let task = workload::task(scenario).map_err(SimError::Workload)?;
            let outcome = engine::run(scenario, task.as_ref(), progress)?;
            let rows = outcome.ledger.rows().to_vec();
            let mut summary = summarize(scenario, &rows, outcome.params);
            summary.delivered_fraction = outcome.ledger.delivered_fraction();
            summary.refused_deltas = outcome.ledger.refused.clone();
            if scenario.attack.attackers(scenario.nodes) > 0 && scenario.attack.behaviour.protocol_attack() {
                summary.attack_deltas_merged = Some(outcome.ledger.attack_deltas_merged);
            }
            if scenario.attack.behaviour == attack::AttackBehaviour::SyncSybil {
                summary.forged_states_installed = Some(outcome.ledger.forged_states_installed);
            }
            summary.honest_equivocations = Some(outcome.ledger.honest_equivocations);
            summary.messages_delivered = outcome.ledger.messages_delivered;
            summary.messages_lost = outcome.ledger.messages_lost;
            summary.virtual_seconds = outcome.virtual_ms as f64 / 1000.0;
            RunOutput { summary, rows, markers: outcome.markers }
        }
        Mode::Live => live::run(scenario, progress)?,
    };
    if host_figures {
        output.summary.wall_seconds = Some(start.elapsed().as_secs_f64());
        output.summary.peak_rss_bytes = report::peak_rss_bytes();
    }
    Ok(output)
}

/// The summary figures that follow from the rows.
pub fn summarize(scenario: &Scenario, rows: &[RoundRow], params: usize) -> Summary {
    let last = rows.last().cloned().unwrap_or_default();
    let mean = |f: fn(&RoundRow) -> f64| {
        if rows.is_empty() {
            0.0
        } else {
            rows.iter().map(f).sum::<f64>() / rows.len() as f64
        }
    };
    Summary {
        scenario: scenario.name.clone(),
        mode: format!("{:?}", scenario.mode).to_lowercase(),
        seed: scenario.seed,
        nodes: scenario.nodes,
        rounds: scenario.rounds,
        params,
        codec: scenario.protocol.codec.to_string(),
        final_mean_accuracy: last.mean_accuracy,
        final_min_accuracy: last.min_accuracy,
        final_loss: last.mean_loss,
        final_consensus_distance: last.consensus_distance,
        delivered_fraction: mean(|r| r.delivered_fraction),
        bytes_sent_per_node_per_round: mean(|r| r.bytes_sent_per_node),
        bytes_received_per_node_per_round: mean(|r| r.bytes_received_per_node),
        deadline_closes: rows.iter().map(|r| r.deadline_closes).sum(),
        state_syncs: rows.iter().map(|r| r.state_syncs).sum(),
        honest_mean_accuracy: (scenario.attack.attackers(scenario.nodes) > 0)
            .then_some(last.mean_accuracy)
            .flatten(),
        attackers: (scenario.attack.attackers(scenario.nodes) > 0)
            .then(|| scenario.attack.attackers(scenario.nodes)),
        attack: (scenario.attack.attackers(scenario.nodes) > 0).then(|| scenario.attack.behaviour.name()),
        aggregation: Some(scenario.protocol.aggregation.to_string()),
        ..Summary::default()
    }
}
