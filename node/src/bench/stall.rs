//! `starling bench stall`: how long a node's event loop stops answering the
//! swarm while it trains, merges and serves a model of about `--params`
//! parameters. Real node stacks in one process over TCP loopback: `--peers`
//! nodes train `--rounds` rounds (evaluating after each merge); once they have
//! merged their first round a late joiner starts, so they also build the
//! snapshots it fetches. The nodes keep serving after their last round until
//! every node, the joiner included, holds the last round's state (or the
//! joiner gives no sign of it for [`JOINER_WAIT`]). Every node times each handler of its event loop and
//! each piece of heavy work (see `crate::node::LoopStats`); the report gives
//! the longest stall of any node, and the figures by handler and by kind.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use starling_protocol::keys::node_key;
use tokio::sync::{mpsc, watch};

use super::BenchError;
use crate::{
    bench_sync::{spec_for, start_listening},
    net::NetOptions,
    node::{run_node_with, HarnessHooks, LoopStats, NodeEvent, NodeOptions, Timing},
};

/// How long the whole benchmark may take.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// How long the others wait for the joiner once they are done.
const JOINER_WAIT: Duration = Duration::from_secs(120);

/// The event loops' figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct StallReport {
    pub params: usize,
    /// Nodes from the start, and the late joiner besides.
    pub peers: usize,
    pub rounds: u64,
    /// The round of the state the late joiner installed, if it synced.
    pub joiner_installed: Option<u64>,
    /// The longest time any node's event loop spent in one handler.
    pub longest_stall_seconds: f64,
    /// The handler (`select!` arm) it was in.
    pub longest_stall_arm: String,
    /// The most CPU time any node's event-loop thread spent in one handler
    /// (the stall less the time the OS gave other threads).
    pub longest_stall_cpu_seconds: f64,
    /// The longest any node's 10 ms watchdog tick came late.
    pub longest_lag_seconds: f64,
    /// Time in handlers by arm, all nodes together.
    pub handlers: BTreeMap<String, Timing>,
    /// Heavy work by kind, all nodes together.
    pub work: BTreeMap<String, Timing>,
    /// Each node's longest stall, the joiner last.
    pub per_node_stall_seconds: Vec<f64>,
}

/// Runs the benchmark.
pub async fn stall(params: usize, rounds: u64, peers: usize) -> Result<StallReport, BenchError> {
    if params < 1000 {
        return Err(BenchError::TooFewParams(params));
    }
    if peers == 0 || rounds < 2 {
        return Err(BenchError::Net("--peers must be at least 1 and --rounds at least 2".into()));
    }
    let mut spec = spec_for(params);
    spec.name = format!("bench-stall-{params}");
    let dir = tempfile::tempdir().map_err(|e| BenchError::Net(format!("cannot make a datadir: {e}")))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = |i: usize, bootnodes: Vec<_>, wait_peers| NodeOptions {
        datadir: dir.path().join(format!("node-{i}")),
        spec: spec.clone(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid address")],
        bootnodes,
        net: NetOptions { mdns: false, ..NetOptions::default() },
        wait_peers,
        wait_timeout: Duration::from_secs(120),
        rounds: Some(rounds),
        key: Some(node_key(0x5374_616c, i)),
        evaluate: true,
        evaluate_every: 1,
        checkpoint_every: 1,
        data: Default::default(),
    };
    let hooks = HarnessHooks { linger_until_shutdown: true, ..HarnessHooks::default() };
    let run = async {
        let mut addresses = Vec::new();
        let mut handles = Vec::new();
        for i in 0..peers {
            let node = options(i, addresses.clone(), peers - 1);
            let (handle, address) = start_listening(node, &hooks, &events_tx, &stop_rx, &mut events).await;
            handles.push(handle);
            addresses
                .push(address.ok_or_else(|| BenchError::Net("a node stopped before it listened".into()))?);
        }
        // Once every node has merged its first round, a late joiner comes.
        let mut merged_first = 0;
        while merged_first < peers {
            match events.recv().await {
                Some(NodeEvent::Round(report)) if report.round == 0 => merged_first += 1,
                Some(_) => {}
                None => return Err(BenchError::Net("the nodes stopped".into())),
            }
        }
        handles.push(tokio::spawn(run_node_with(
            options(peers, addresses.clone(), peers),
            hooks.clone(),
            Some(events_tx.clone()),
            stop_rx.clone(),
        )));
        drop(events_tx);
        // Until every node holds the state of the last round.
        let mut joiner_installed = None;
        let mut done = std::collections::BTreeSet::new();
        let mut others_done: Option<tokio::time::Instant> = None;
        while done.len() < peers + 1 {
            let wait = match others_done {
                Some(since) => JOINER_WAIT.saturating_sub(since.elapsed()),
                None => TIMEOUT,
            };
            let event = match tokio::time::timeout(wait, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(BenchError::Net("the nodes stopped".into())),
                Err(_) => break,
            };
            match event {
                NodeEvent::Round(report) if report.round + 1 == rounds => {
                    done.insert(report.node);
                }
                NodeEvent::StateInstalled { node, round, .. } => {
                    joiner_installed = Some(round);
                    if round == rounds {
                        done.insert(node);
                    }
                }
                _ => {}
            }
            if done.len() >= peers && others_done.is_none() {
                others_done = Some(tokio::time::Instant::now());
            }
        }
        let _ = stop_tx.send(true);
        let mut outcomes = Vec::new();
        for handle in handles {
            match handle.await {
                Ok(Ok(outcome)) => outcomes.push(outcome),
                Ok(Err(e)) => return Err(BenchError::Net(format!("a node failed: {e}"))),
                Err(e) => return Err(BenchError::Net(format!("a node panicked: {e}"))),
            }
        }
        Ok((outcomes, joiner_installed))
    };
    let (outcomes, joiner_installed) = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| BenchError::Timeout("the nodes to finish"))??;
    Ok(report(spec.param_count(), peers, rounds, joiner_installed, outcomes.iter().map(|o| &o.loop_stats)))
}

fn report<'a>(
    params: usize,
    peers: usize,
    rounds: u64,
    joiner_installed: Option<u64>,
    stats: impl Iterator<Item = &'a LoopStats>,
) -> StallReport {
    let mut all = LoopStats::default();
    let mut per_node_stall_seconds = Vec::new();
    for node in stats {
        per_node_stall_seconds.push(node.longest_stall_seconds());
        all.merge(node);
    }
    let (longest_stall_arm, longest) = all
        .handlers
        .iter()
        .max_by(|a, b| a.1.max_seconds.total_cmp(&b.1.max_seconds))
        .map(|(arm, t)| (arm.clone(), t.max_seconds))
        .unwrap_or_default();
    StallReport {
        params,
        peers,
        rounds,
        joiner_installed,
        longest_stall_seconds: longest,
        longest_stall_arm,
        longest_stall_cpu_seconds: all.longest_stall_cpu_seconds(),
        longest_lag_seconds: all.lag.max_seconds,
        handlers: all.handlers,
        work: all.work,
        per_node_stall_seconds,
    }
}
