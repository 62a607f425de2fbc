//! Live mode: the scenario's nodes as real node stacks — the code of
//! `starling run`, with libp2p gossipsub, signatures, the trainer and sled
//! checkpoints — in one process, connected by libp2p's in-memory transport.
//!
//! What the in-memory transport cannot shape is not simulated here: `[link]`,
//! `[compute]`, `[churn]`, `[attack]`, leaves and crashes without a restart
//! are virtual-mode features, and a live scenario that sets them is refused
//! rather than run without them. A join starts real nodes late: they dial the
//! running ones and fetch the swarm's state as `starling run` does. A crash
//! aborts real nodes' tasks (as `kill -9` stops a process) and starts them
//! again from their datadirs after `restart_after_ms`. A partition makes each
//! node close and refuse the connections of the other sides' nodes until the
//! heal, when they dial each other again: what was sent across the cut is
//! lost, as when a cut outlasts TCP's patience. Delta latency is not observed per delta in live mode (the
//! CSV's latency columns are empty); bytes are the nodes' transport counters,
//! protocol overhead and gossip duplicates included.

use std::{collections::BTreeMap, time::Duration};

use starling_node::{
    local_swarm::{
        run_swarm, Bootstrap, Crash, Departure, Evaluate, Membership, NetworkChange, NodeRound, SwarmOptions,
    },
    net::Transport,
};
use starling_protocol::{consensus_distance, round::CloseReason, RunSpec};

use crate::{
    report::RoundRow,
    scenario::{partition_label, Attack, Churn, Compute, EventKind, Link, Workload},
    summarize,
    workload::candle_spec,
    RunOutput, Scenario, SimError,
};

/// The RunSpec the live nodes share: the built-in task with the scenario's settings.
pub fn spec_for(sc: &Scenario) -> Result<RunSpec, SimError> {
    if !matches!(sc.workload, Workload::Candle { .. }) {
        return Err(SimError::Live(
            "live mode trains the node's real model: set [workload] kind = \"candle\"".into(),
        ));
    }
    let p = &sc.protocol;
    let mut spec = RunSpec::builtin_with_codec(p.codec);
    spec.name = format!("netsim-live-{}", sc.name);
    spec.feedback_decay = p.feedback_decay as f64;
    spec.outer = p.outer_spec();
    spec.round.deadline_ms = p.deadline_ms;
    spec.round.quorum = p.quorum;
    spec.aggregation = p.aggregation;
    candle_spec(&sc.workload, spec).map_err(SimError::Live)
}

fn refuse_virtual_only(sc: &Scenario) -> Result<(), SimError> {
    let partitioned = sc.events.iter().any(|e| matches!(e.what, EventKind::Partition { .. }));
    if partitioned && !sc.link.partition_disconnects {
        return Err(SimError::Live(
            "live mode's partition closes the connections across the cut: set [link] partition_disconnects = true".into(),
        ));
    }
    let link = Link { partition_disconnects: false, ..sc.link.clone() };
    let set: Vec<&str> = [
        ("[link] other than partition_disconnects", link != Link::default()),
        ("[compute]", sc.compute != Compute::default()),
        ("[churn]", sc.churn != Churn::default()),
        ("[attack]", sc.attack != Attack::default()),
        ("protocol.group_size", sc.protocol.group_size != 0),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if set.is_empty() {
        Ok(())
    } else {
        Err(SimError::Live(format!(
            "{} only apply in virtual mode; remove them or set mode = \"virtual\"",
            set.join(", ")
        )))
    }
}

/// Runs the scenario's nodes as real stacks; `progress(done, total)` as rounds complete.
pub fn run(sc: &Scenario, progress: &mut dyn FnMut(u64, u64)) -> Result<RunOutput, SimError> {
    refuse_virtual_only(sc)?;
    let spec = spec_for(sc)?;
    let params = spec.param_count();
    let eval_nodes = match sc.workload {
        Workload::Candle { eval_nodes, .. } => eval_nodes.clamp(1, sc.nodes),
        Workload::Quadratic { .. } => 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| SimError::Live(format!("cannot start a runtime: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Joined nodes come after the scenario's own, each starting at its event's round.
    let mut joiners: Vec<u64> = sc
        .events
        .iter()
        .flat_map(|e| match e.what {
            EventKind::Join { count } => vec![e.at_round; count],
            _ => Vec::new(),
        })
        .collect();
    joiners.sort_unstable();
    let nodes = sc.nodes + joiners.len();
    let mut options = SwarmOptions::new(nodes, sc.rounds, spec);
    options.joiners = joiners;
    options.crashes = sc
        .events
        .iter()
        .filter_map(|e| match e.what {
            EventKind::Crash { count, restart_after_ms } if restart_after_ms > 0 => Some(Crash {
                at_round: e.at_round,
                count,
                restart_after: Duration::from_millis(restart_after_ms),
            }),
            _ => None,
        })
        .collect();
    // A crash with no restart is a departure by kill, as in virtual mode.
    options.departures = sc
        .events
        .iter()
        .filter_map(|e| match e.what {
            EventKind::Crash { count, restart_after_ms: 0 } => {
                Some(Departure { at_round: e.at_round, count, graceful: false })
            }
            EventKind::Leave { count, graceful } => Some(Departure { at_round: e.at_round, count, graceful }),
            _ => None,
        })
        .collect();
    // How many nodes are gone by each round: a round is complete once the rest merged it.
    let expected: Vec<usize> = (0..sc.rounds)
        .map(|round| {
            let gone: usize =
                options.departures.iter().filter(|d| d.at_round <= round).map(|d| d.count).sum();
            nodes.saturating_sub(gone).max(1)
        })
        .collect();
    options.network = sc
        .events
        .iter()
        .filter_map(|e| match &e.what {
            EventKind::Partition { sides } => {
                Some(NetworkChange::Partition { at_round: e.at_round, sides: sides.clone() })
            }
            EventKind::Heal => Some(NetworkChange::Heal { at_round: e.at_round }),
            _ => None,
        })
        .collect();
    options.seed = sc.seed;
    options.quiet = true;
    options.transport = Transport::Memory;
    options.bootstrap = Bootstrap::Auto;
    options.membership = Membership::Roster;
    options.peer_discovery = false;
    options.evaluate = Evaluate::FirstNodes(eval_nodes);
    options.centralized_baseline = false;
    options.rounds_tx = Some(tx);
    options.report_params = true;
    options.stall_timeout = Duration::from_secs(300);
    let start = std::time::Instant::now();
    // Each node's latest report of each round: a node that goes back to an
    // older state (the faster side of a healed partition) merges some rounds
    // twice, and its second merge is the one that counts.
    let mut reports: BTreeMap<u64, BTreeMap<usize, NodeRound>> = BTreeMap::new();
    let mut complete = 0u64;
    let outcome = runtime.block_on(async {
        let swarm = tokio::spawn(run_swarm(options));
        while let Some(report) = rx.recv().await {
            let entry = reports.entry(report.round).or_default();
            entry.insert(report.node, report);
            // Rounds complete in order; a round is done when every node has merged it.
            while reports
                .get(&complete)
                .is_some_and(|done| done.len() >= expected.get(complete as usize).copied().unwrap_or(1))
            {
                complete += 1;
                progress(complete, sc.rounds);
            }
        }
        match swarm.await {
            Ok(result) => result.map_err(|e| SimError::Live(e.to_string())),
            Err(e) => Err(SimError::Live(format!("the swarm task failed: {e}"))),
        }
    });
    let summary = outcome?;
    // Rounds some node never merged (it synced past them) still get a row.
    let mut last_bytes: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut rows: Vec<RoundRow> =
        reports.into_iter().map(|(r, done)| row(r, done.into_values().collect(), &mut last_bytes)).collect();
    rows.sort_by_key(|r| r.round);
    let mut out = summarize(sc, &rows, params);
    out.virtual_seconds = start.elapsed().as_secs_f64();
    out.final_consensus_distance = summary.consensus_distance;
    out.state_syncs = summary.state_syncs as usize;
    progress(sc.rounds, sc.rounds);
    Ok(RunOutput { summary: out, rows, markers: markers(sc) })
}

/// The scenario's events by round, labelled as virtual mode labels them.
fn markers(sc: &Scenario) -> Vec<(u64, String)> {
    sc.events
        .iter()
        .map(|e| {
            let label = match &e.what {
                EventKind::Partition { sides } => partition_label(sides),
                EventKind::Heal => "heal".to_string(),
                EventKind::Crash { count, .. } => format!("{count} crash"),
                EventKind::Join { count } => format!("{count} join"),
                EventKind::Leave { count, .. } => format!("{count} leave"),
            };
            (e.at_round, label)
        })
        .collect()
}

fn row(round: u64, reports: Vec<NodeRound>, last_bytes: &mut BTreeMap<usize, (u64, u64)>) -> RoundRow {
    let n = reports.len().max(1) as f64;
    let accuracies: Vec<f64> = reports.iter().filter_map(|r| r.accuracy.map(f64::from)).collect();
    let losses: Vec<f64> = reports.iter().map(|r| r.train_loss as f64).collect();
    let params: Vec<&[f32]> =
        reports.iter().filter_map(|r| r.params.as_deref().map(|p| p.as_slice())).collect();
    let (mut sent, mut received) = (0u64, 0u64);
    for r in &reports {
        let (s0, r0) = last_bytes.insert(r.node, (r.bytes_sent, r.bytes_received)).unwrap_or((0, 0));
        sent += r.bytes_sent.saturating_sub(s0);
        received += r.bytes_received.saturating_sub(r0);
    }
    let most = reports.iter().map(|r| r.merged).max().unwrap_or(0).max(1) as f64;
    RoundRow {
        round,
        active_nodes: reports.len(),
        mean_accuracy: (!accuracies.is_empty())
            .then(|| accuracies.iter().sum::<f64>() / accuracies.len() as f64),
        min_accuracy: accuracies.iter().copied().reduce(f64::min),
        mean_loss: losses.iter().sum::<f64>() / n,
        max_loss: losses.iter().copied().reduce(f64::max).unwrap_or(f64::NAN),
        consensus_distance: if params.len() >= 2 { consensus_distance(&params) } else { 0.0 },
        // Deltas merged over the most any node merged: 1 when every node merged the same set size.
        delivered_fraction: reports.iter().map(|r| r.merged as f64).sum::<f64>() / (n * most),
        p50_latency_ms: f64::NAN,
        p99_latency_ms: f64::NAN,
        bytes_sent_per_node: sent as f64 / n,
        bytes_received_per_node: received as f64 / n,
        deadline_closes: reports.iter().filter(|r| r.reason == CloseReason::Deadline).count(),
        state_syncs: 0,
    }
}
