//! N real node stacks (`run_node`, the code of `starling run`) in one process,
//! training the built-in task together: `starling swarm` over loopback TCP, and
//! the live mode of netsim over libp2p's in-memory transport, up to a few
//! hundred nodes, with every node's figures reported as each round merges.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::Multiaddr;
use rand::{rngs::Xoshiro256PlusPlus, SeedableRng};
use starling_protocol::{keys::node_key, round::CloseReason, PublicKey, RunSpec};
use starling_training::datasets::Shard;
use tokio::sync::{mpsc, watch};

use crate::{
    net::{NetOptions, Transport},
    node::{
        run_node_with, DataOptions, HarnessHooks, NodeError, NodeEvent, NodeOptions, NodeOutcome, RoundReport,
    },
};

mod crashes;
mod partitions;
mod report;
mod running;

use crashes::Fault;
pub use crashes::{Crash, Departure};
pub use partitions::{sides_of, NetworkChange};
use running::RunningNodes;

use report::{summarize, Progress};
pub use report::{CurvePoint, SwarmSummary};

/// Swarms of at most this many nodes bootstrap as a full mesh under [`Bootstrap::Auto`].
pub const FULL_MESH_MAX_NODES: usize = 16;
/// Earlier nodes (besides node 0) each node dials under [`Bootstrap::Auto`] above that.
pub const AUTO_FANOUT: usize = 3;
/// How long a node may take to open its datadir and start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, once the swarm starts, a node waits for its bootstrap peers.
const PEER_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle connection of a local swarm stays open: longer than any run.
const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long stopping nodes may take to checkpoint and close before they are aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a local swarm is asked to do.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub nodes: usize,
    pub rounds: u64,
    pub spec: RunSpec,
    /// Where node datadirs go; a temporary directory when absent.
    pub datadir: Option<PathBuf>,
    /// Seeds the node keys and the bootstrap graph, so the whole run is reproducible.
    pub seed: u64,
    /// Print progress lines to stderr instead of stdout (stdout carries JSON).
    pub progress_to_stderr: bool,
    /// Print no progress lines at all.
    pub quiet: bool,
    /// Loopback TCP (`starling swarm`) or the in-memory transport (live mode).
    pub transport: Transport,
    /// Whom each node dials when it starts.
    pub bootstrap: Bootstrap,
    /// Whose deltas each node waits for before it closes a round.
    pub membership: Membership,
    /// Let Kademlia lookups connect nodes beyond the bootstrap graph (as
    /// `starling run` does). Above a few dozen nodes that approaches a full
    /// mesh, whose connections dominate memory and CPU in one process.
    pub peer_discovery: bool,
    /// Which nodes evaluate on the held-out set after every merge (the summary
    /// evaluates every node's final parameters either way).
    pub evaluate: Evaluate,
    /// Train the summary's centralized baseline: nodes × rounds × `inner.steps`
    /// steps on the union of the shards, on one thread. Off, its figures are NaN and 0.
    pub centralized_baseline: bool,
    /// Receives every node's figures of every round as it merges.
    pub rounds_tx: Option<mpsc::UnboundedSender<NodeRound>>,
    /// Put a copy of the merged parameters in every [`NodeRound`].
    pub report_params: bool,
    /// Fail when no node merges a round for this long (the first round's wait
    /// includes gathering peers and training).
    pub stall_timeout: Duration,
    /// The data every node reads (`--dataset`); the spec's when absent. Node i
    /// trains on shard i of `nodes`.
    pub dataset: Option<starling_protocol::DatasetKind>,
    /// Late joiners: the last `joiners.len()` of the `nodes` start only once a
    /// node has merged the round before the one given (`joiners[j]` for the
    /// j-th of them), dial the nodes before them, and sync the swarm's state.
    /// The others' roster ([`Membership::Roster`]) leaves them out.
    pub joiners: Vec<u64>,
    /// Crashes: nodes whose task is aborted at a round (as `kill -9` stops a
    /// process) and that start again from their datadirs (see [`Crash`]).
    pub crashes: Vec<Crash>,
    /// Nodes that leave for good at a round, gracefully or dead (see [`Departure`]).
    pub departures: Vec<Departure>,
    /// Partitions and heals: at a round, nodes split into sides that cannot
    /// reach one another, until a heal (see [`NetworkChange`]).
    pub network: Vec<NetworkChange>,
    /// Every node's copy of the spec's tokenizer (`--tokenizer`); the spec's path when absent.
    pub tokenizer: Option<std::path::PathBuf>,
    /// Deltas over this many bytes travel apart from gossip ([`NetOptions::pull_above`]).
    pub pull_above: usize,
}

impl SwarmOptions {
    /// `nodes` nodes training `spec` for `rounds` rounds as `starling swarm` runs
    /// them: loopback TCP, a full mesh, every node evaluating, the centralized
    /// baseline trained, progress printed, no observer, keys seeded with 1.
    pub fn new(nodes: usize, rounds: u64, spec: RunSpec) -> Self {
        Self {
            nodes,
            rounds,
            spec,
            datadir: None,
            seed: 1,
            progress_to_stderr: false,
            quiet: false,
            transport: Transport::Tcp,
            bootstrap: Bootstrap::FullMesh,
            membership: Membership::Discovered,
            peer_discovery: true,
            evaluate: Evaluate::EveryNode,
            centralized_baseline: true,
            rounds_tx: None,
            report_params: false,
            stall_timeout: Duration::from_secs(600),
            dataset: None,
            joiners: Vec::new(),
            crashes: Vec::new(),
            departures: Vec::new(),
            network: Vec::new(),
            tokenizer: None,
            pull_above: crate::net::DEFAULT_PULL_ABOVE,
        }
    }
}

impl SwarmOptions {
    /// Live mode: `nodes` nodes over the in-memory transport, bootstrapped
    /// sparsely above [`FULL_MESH_MAX_NODES`] and kept sparse (no Kademlia
    /// discovery), every node expecting every other ([`Membership::Roster`]);
    /// no progress lines and no centralized baseline. Set `rounds_tx` (and
    /// `report_params`) to observe the rounds; set `membership` and
    /// `peer_discovery` back to see `starling run`'s own rules at work.
    pub fn live(nodes: usize, rounds: u64, spec: RunSpec) -> Self {
        Self {
            quiet: true,
            transport: Transport::Memory,
            bootstrap: Bootstrap::Auto,
            membership: Membership::Roster,
            peer_discovery: false,
            centralized_baseline: false,
            ..Self::new(nodes, rounds, spec)
        }
    }
}

/// Whom a node expects deltas from, which decides when a round closes at quorum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Membership {
    /// The rule of `starling run`: the run peers a node is directly connected to,
    /// and the nodes whose deltas reached it in the last rounds. In a sparse
    /// swarm, round 0 closes once the direct peers have delivered, so deltas of
    /// nodes further away can arrive too late and nodes merge different sets.
    #[default]
    Discovered,
    /// Every node is told every node's key before round 0 and expects them all
    /// (as a private swarm's allow-list would let it), so at quorum 1.0 a round
    /// closes only with every delta, or at the deadline.
    Roster,
}

/// Whom each node dials when it starts; nodes start in index order and dial
/// only earlier ones. Kademlia lookups and identify connect nodes further, and
/// gossipsub forwards deltas across its mesh to nodes not directly connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Bootstrap {
    /// [`Bootstrap::FullMesh`] up to [`FULL_MESH_MAX_NODES`] nodes,
    /// [`Bootstrap::Sparse`] with [`AUTO_FANOUT`] above.
    #[default]
    Auto,
    /// Every node dials every earlier one.
    FullMesh,
    /// Every node dials node 0 and `fanout` other earlier nodes drawn with the swarm's seed.
    Sparse { fanout: usize },
}

/// Which nodes evaluate after every merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Evaluate {
    #[default]
    EveryNode,
    /// Nodes `0..n` only. With the built-in spec one evaluation of 4096 samples
    /// costs about as much as 10 inner steps; `dataset.eval_samples` scales it.
    FirstNodes(usize),
}

/// One node's figures of one merged round.
#[derive(Clone, Debug)]
pub struct NodeRound {
    /// The node's index in the swarm.
    pub node: usize,
    /// The round merged; the node's state is now at `round + 1`.
    pub round: u64,
    /// Accuracy on the held-out set, when this node evaluates (see [`Evaluate`]).
    pub accuracy: Option<f32>,
    /// Mean loss of the node's own inner steps for this round.
    pub train_loss: f32,
    /// Deltas merged, the node's own included.
    pub merged: usize,
    pub reason: CloseReason,
    /// Directly connected peers of the run (gossipsub subscribers of its topic).
    pub peers: usize,
    /// Transport bytes sent since the node started (cumulative; protocol
    /// overhead and gossip duplicates included).
    pub bytes_sent: u64,
    /// Transport bytes received since the node started (cumulative).
    pub bytes_received: u64,
    /// Time from the swarm's start (all nodes listening) to the harness receiving this.
    pub elapsed: Duration,
    /// ε the node has spent, in a run with `[privacy]`.
    pub epsilon: Option<f64>,
    /// The merged parameters, when [`SwarmOptions::report_params`] asks.
    pub params: Option<Arc<Vec<f32>>>,
}

/// Errors of the local swarm.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error("--rounds must be at least 1")]
    NoRounds,
    #[error("node {0} crashed and could not restart: its store was not let go")]
    Restart(usize),
    #[error("{joiners} late joiners leave none of the {nodes} nodes to start the swarm")]
    NoStarters { nodes: usize, joiners: usize },
    #[error("node {index} failed: {source}")]
    Node { index: usize, source: NodeError },
    #[error("node {index} panicked or was aborted: {reason}")]
    NodePanicked { index: usize, reason: String },
    #[error("node {index} stopped before the swarm finished, at round {round} of {rounds}")]
    NodeStoppedEarly { index: usize, round: u64, rounds: u64 },
    #[error("node {0} did not start listening within {LISTEN_TIMEOUT:?}")]
    NoAddress(usize),
    #[error("no node merged a round for {seconds:.0}s (last complete round: {complete}; raise stall_timeout or lower the spec's inner.steps)")]
    Stalled { seconds: f64, complete: String },
    #[error("cannot create a temporary datadir: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Train(#[from] starling_training::error::TrainError),
    #[error("data: {0}")]
    Data(String),
}

/// The earlier nodes each node dials, by index.
pub fn bootstrap_plan(nodes: usize, bootstrap: Bootstrap, seed: u64) -> Vec<Vec<usize>> {
    let fanout = match bootstrap {
        Bootstrap::Auto if nodes <= FULL_MESH_MAX_NODES => None,
        Bootstrap::Auto => Some(AUTO_FANOUT),
        Bootstrap::FullMesh => None,
        Bootstrap::Sparse { fanout } => Some(fanout),
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x626f_6f74_7374_7261);
    (0..nodes)
        .map(|index| match fanout {
            _ if index == 0 => Vec::new(),
            None => (0..index).collect(),
            Some(fanout) => {
                let others = index - 1;
                let mut dials = vec![0];
                dials.extend(
                    rand::seq::index::sample(&mut rng, others, fanout.min(others)).into_iter().map(|i| i + 1),
                );
                dials.sort_unstable();
                dials
            }
        })
        .collect()
}

/// How many run peers each node has in the bootstrap graph: the nodes it dials
/// and the nodes that dial it. A node waits for them before its first round.
fn bootstrap_degrees(plan: &[Vec<usize>]) -> Vec<usize> {
    let mut degrees: Vec<usize> = plan.iter().map(Vec::len).collect();
    for dials in plan {
        for &earlier in dials {
            degrees[earlier] += 1;
        }
    }
    degrees
}

type NodeResult = (usize, Result<NodeOutcome, NodeError>);

/// Runs the swarm to the end and returns its summary.
pub async fn run_swarm(options: SwarmOptions) -> Result<SwarmSummary, SwarmError> {
    if options.nodes == 0 {
        return Err(SwarmError::NoNodes);
    }
    if options.rounds == 0 {
        return Err(SwarmError::NoRounds);
    }
    let starters = options.nodes.saturating_sub(options.joiners.len());
    if starters == 0 {
        return Err(SwarmError::NoStarters { nodes: options.nodes, joiners: options.joiners.len() });
    }
    let wall = Instant::now();
    let temp = match &options.datadir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(SwarmError::TempDir)?),
    };
    let base =
        options.datadir.clone().unwrap_or_else(|| temp.as_ref().expect("temp dir").path().to_path_buf());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel(false);
    let mut running = RunningNodes::new(options.rounds);
    let plan = bootstrap_plan(options.nodes, options.bootstrap, options.seed);
    // The nodes that start together wait for each other only: joiners come later.
    let degrees = bootstrap_degrees(&plan[..starters]);
    let listen: Multiaddr = match options.transport {
        Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
        Transport::Memory => "/memory/0",
    }
    .parse()
    .expect("valid multiaddr");
    let keys: Vec<PublicKey> =
        (0..options.nodes).map(|index| PublicKey::of(&node_key(options.seed, index))).collect();
    let index_of: HashMap<PublicKey, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let roster = &keys[..starters];
    let mut network = partitions::NetworkPlan::new(options.network.clone());
    let cut_offs = partitions::CutOffs::new(keys.clone(), !options.network.is_empty());
    let node = |index: usize, addresses: &[Multiaddr]| {
        let key = node_key(options.seed, index);
        let joiner = index >= starters;
        let node_options = NodeOptions {
            datadir: base.join(format!("node-{index}")),
            spec: options.spec.clone(),
            listen: vec![listen.clone()],
            bootnodes: plan[index].iter().map(|&i| addresses[i].clone()).collect(),
            net: NetOptions {
                mdns: false,
                transport: options.transport,
                peer_discovery: options.peer_discovery,
                // Bootstrap connections outside the gossip mesh idle; closing one
                // would make both ends stop expecting each other's deltas.
                idle_timeout: CONNECTION_IDLE_TIMEOUT,
                pull_above: options.pull_above,
                ..NetOptions::default()
            },
            // A joiner waits for the nodes it dials, which are all running.
            wait_peers: if joiner { plan[index].len() } else { degrees[index] },
            wait_timeout: PEER_WAIT_TIMEOUT,
            rounds: Some(options.rounds),
            key: Some(key.clone()),
            evaluate: match options.evaluate {
                Evaluate::EveryNode => true,
                Evaluate::FirstNodes(n) => index < n,
            },
            evaluate_every: 1,
            checkpoint_every: 1,
            data: DataOptions {
                dataset: options.dataset.clone(),
                shard: Some(Shard { index, count: options.nodes }),
                device: None,
                tokenizer: options.tokenizer.clone(),
            },
        };
        let hooks = HarnessHooks {
            report_params: options.report_params,
            start: Some(start_rx.clone()),
            expected_peers: match options.membership {
                Membership::Roster if !joiner => {
                    roster.iter().copied().filter(|&k| k != PublicKey::of(&key)).collect()
                }
                _ => Vec::new(),
            },
            // The harness stops every node once all have merged the last round.
            linger_until_shutdown: true,
            cut_off: cut_offs.of(index),
        };
        (node_options, hooks, key)
    };
    let mut addresses: Vec<Multiaddr> = Vec::new();
    for index in 0..starters {
        let (node_options, hooks, key) = node(index, &addresses);
        let events = events_tx.clone();
        running.spawn(index, |stop| async move {
            (index, run_node_with(node_options, hooks, Some(events), stop).await)
        });
        match wait_listening(&mut running, &mut events_rx, PublicKey::of(&key)).await {
            Ok(address) => addresses.push(address),
            Err(e) => {
                running.stop().await;
                return Err(e.unwrap_or(SwarmError::NoAddress(index)));
            }
        }
    }
    // Joiners yet to start, in index order (they dial only nodes before them).
    let mut waiting: std::collections::VecDeque<(usize, u64)> =
        options.joiners.iter().enumerate().map(|(j, &round)| (starters + j, round)).collect();
    let mut joiner_events = (!waiting.is_empty()).then(|| events_tx.clone());
    let restart_events = (!options.crashes.is_empty()).then(|| events_tx.clone());
    drop(events_tx);
    let mut state_syncs = 0u64;
    // Every node is listening and has dialed its bootnodes: round 0 may begin.
    let _ = start_tx.send(true);
    let swarm_start = Instant::now();
    let mut progress =
        Progress::new(options.nodes, options.rounds, options.progress_to_stderr, options.quiet);
    let mut outcomes: Vec<Option<NodeOutcome>> = vec![None; options.nodes];
    let observer = Observer { index_of, rounds_tx: options.rounds_tx.clone(), started: swarm_start };
    let mut stopped = 0;
    // Nodes that merged the last round; they linger, relaying, until all have.
    let mut finished = HashSet::new();
    let mut crashes = crashes::CrashPlan::new(options.crashes.clone(), options.departures.clone());
    let mut up: std::collections::BTreeSet<usize> = (0..starters).collect();
    while stopped < options.nodes {
        tokio::select! {
            Some(event) = events_rx.recv() => {
                if let NodeEvent::StateInstalled { .. } = event {
                    state_syncs += 1;
                }
                if let NodeEvent::Listening { node, address } = &event {
                    // A restarted node listens anew: later restarts dial it there.
                    if let Some(&index) = observer.index_of.get(node).filter(|&&i| i < addresses.len()) {
                        addresses[index] = address.clone();
                    }
                }
                if let NodeEvent::Round(report) = event {
                    for change in network.due(report.round) {
                        tracing::info!(round = report.round, ?change, "the local swarm's network changes");
                        cut_offs.apply(&change);
                    }
                    for fault in crashes.due(report.round, &up, tokio::time::Instant::now()) {
                        match fault {
                            Fault::Crash(index) => {
                                up.remove(&index);
                                running.crash(index);
                            }
                            Fault::Depart { index, graceful } => {
                                up.remove(&index);
                                running.depart(index, graceful);
                                progress.node_gone();
                            }
                        }
                    }
                    while let Some(&(index, _)) = waiting.front().filter(|(_, at)| report.round + 1 >= *at) {
                        waiting.pop_front();
                        let (node_options, hooks, _) = node(index, &addresses);
                        let events = joiner_events.clone().expect("held while joiners wait");
                        running.spawn(index, |stop| async move {
                            (index, run_node_with(node_options, hooks, Some(events), stop).await)
                        });
                        up.insert(index);
                        if waiting.is_empty() {
                            joiner_events = None;
                        }
                    }
                    if report.round + 1 >= options.rounds {
                        if let Some(&index) = observer.index_of.get(&report.node) {
                            finished.insert(index);
                        }
                    }
                    observer.send(&report);
                    progress.add(report);
                    if all_finished(&finished, &running, options.nodes) {
                        // Every node left holds the last round: nothing left to relay.
                        running.shutdown_all();
                    }
                }
            }
            Some(result) = running.join_next() => {
                match result {
                    Ok((index, outcome)) => {
                        outcomes[index] = outcome;
                        stopped += 1;
                        if all_finished(&finished, &running, options.nodes) {
                            running.shutdown_all();
                        }
                    }
                    Err(e) => {
                        running.stop().await;
                        return Err(e);
                    }
                }
            }
            _ = sleep_until_some(crashes.next_restart()) => {
                for index in crashes.take_restarts(tokio::time::Instant::now()) {
                    let (mut node_options, hooks, _) = node(index, &addresses);
                    if !crashes::store_released(&node_options.datadir).await {
                        running.stop().await;
                        return Err(SwarmError::Restart(index));
                    }
                    // It dials every node up, and waits for one of them.
                    node_options.bootnodes =
                        up.iter().filter(|&&i| i < addresses.len()).map(|&i| addresses[i].clone()).collect();
                    node_options.wait_peers = 1;
                    let events = restart_events.clone().expect("held when crashes are planned");
                    running.spawn(index, |stop| async move {
                        (index, run_node_with(node_options, hooks, Some(events), stop).await)
                    });
                    up.insert(index);
                }
            }
            _ = tokio::time::sleep(options.stall_timeout.saturating_sub(progress.since_last_merge())) => {
                if progress.since_last_merge() >= options.stall_timeout {
                    running.stop().await;
                    return Err(SwarmError::Stalled {
                        seconds: options.stall_timeout.as_secs_f64(),
                        complete: progress.complete_rounds(),
                    });
                }
            }
        }
    }
    // Every node has stopped, so every report it sent is queued.
    while let Ok(event) = events_rx.try_recv() {
        if let NodeEvent::StateInstalled { .. } = event {
            state_syncs += 1;
        }
        if let NodeEvent::Round(report) = event {
            observer.send(&report);
            progress.add(report);
        }
    }
    running.stop().await;
    let swarm_seconds = swarm_start.elapsed().as_secs_f64();
    // The nodes gone for good have no outcome: the summary is of those left.
    let outcomes: Vec<NodeOutcome> = outcomes.into_iter().flatten().collect();
    let mut summary =
        summarize(&options, &outcomes, std::mem::take(&mut progress.curve), swarm_seconds, wall)?;
    summary.state_syncs = state_syncs;
    Ok(summary)
}

/// Whether every node not gone for good has merged the last round.
fn all_finished(finished: &HashSet<usize>, running: &RunningNodes, nodes: usize) -> bool {
    finished.iter().filter(|&&i| !running.is_gone(i)).count() + running.gone() >= nodes
}

/// Sleeps until `at`; forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the node with `key` to report its listen address. `Err(None)`
/// means it timed out; `Err(Some(_))` that a node stopped.
async fn wait_listening(
    running: &mut RunningNodes,
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    key: PublicKey,
) -> Result<Multiaddr, Option<SwarmError>> {
    let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(event) = events.recv() => {
                // Nothing else can come yet: the start gate holds every node's first round.
                if let NodeEvent::Listening { node, address } = event {
                    if node == key {
                        return Ok(address);
                    }
                }
            }
            Some(result) = running.join_next() => {
                // A node that stops before the swarm starts has failed, whatever it returned.
                return Err(Some(match result {
                    Ok((index, outcome)) => SwarmError::NodeStoppedEarly {
                        index,
                        round: outcome.map_or(0, |o| o.state.round),
                        rounds: running.rounds(),
                    },
                    Err(e) => e,
                }));
            }
            _ = &mut deadline => return Err(None),
        }
    }
}

/// Turns node reports into [`NodeRound`]s for the caller.
struct Observer {
    index_of: HashMap<PublicKey, usize>,
    rounds_tx: Option<mpsc::UnboundedSender<NodeRound>>,
    started: Instant,
}

impl Observer {
    fn send(&self, report: &RoundReport) {
        let Some(tx) = &self.rounds_tx else { return };
        let _ = tx.send(NodeRound {
            node: self.index_of.get(&report.node).copied().unwrap_or(usize::MAX),
            round: report.round,
            accuracy: report.eval.map(|e| e.accuracy),
            train_loss: report.train_loss,
            merged: report.merged,
            reason: report.reason,
            peers: report.peers,
            bytes_sent: report.traffic.sent,
            bytes_received: report.traffic.received,
            elapsed: self.started.elapsed(),
            epsilon: report.epsilon,
            params: report.params.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use starling_protocol::consensus_distance;

    use super::*;

    /// A spec small enough that a dozen nodes train two rounds in seconds in the dev profile.
    fn small_spec(name: &str) -> RunSpec {
        let mut spec = RunSpec::builtin();
        spec.name = format!("test-{name}");
        spec.model = starling_protocol::ModelSpec::mlp(vec![16, 32, 4]);
        spec.dataset.samples_per_node = 256;
        spec.dataset.eval_samples = 256;
        spec.inner.steps = 5;
        spec.inner.batch_size = 32;
        spec.round.deadline_ms = 10_000;
        spec
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sparse_in_memory_swarm_merges_every_delta_and_agrees() {
        const NODES: usize = 12;
        const ROUNDS: u64 = 2;
        let (rounds_tx, mut rounds_rx) = mpsc::unbounded_channel();
        // Live mode's defaults: memory transport, a roster, no Kademlia, so the
        // bootstrap graph stays sparse and gossipsub must relay most deltas.
        let options = SwarmOptions {
            seed: 3,
            bootstrap: Bootstrap::Sparse { fanout: 2 },
            evaluate: Evaluate::FirstNodes(2),
            rounds_tx: Some(rounds_tx),
            report_params: true,
            stall_timeout: Duration::from_secs(60),
            ..SwarmOptions::live(NODES, ROUNDS, small_spec("live-memory"))
        };
        let summary = tokio::time::timeout(Duration::from_secs(120), run_swarm(options))
            .await
            .expect("the swarm finishes within two minutes")
            .expect("the swarm runs");
        let mut by_round: BTreeMap<u64, Vec<NodeRound>> = BTreeMap::new();
        while let Ok(report) = rounds_rx.try_recv() {
            by_round.entry(report.round).or_default().push(report);
        }
        assert_eq!(by_round.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        for (round, reports) in &by_round {
            let mut nodes: Vec<usize> = reports.iter().map(|r| r.node).collect();
            nodes.sort_unstable();
            assert_eq!(nodes, (0..NODES).collect::<Vec<_>>(), "every node merged round {round} once");
            assert!(reports.iter().any(|r| r.peers < NODES - 1), "the swarm stayed sparse");
            for r in reports {
                assert_eq!(r.merged, NODES, "node {} merged {} deltas in round {round}", r.node, r.merged);
                assert_eq!(r.accuracy.is_some(), r.node < 2, "only the first two nodes evaluate");
            }
            let params: Vec<&[f32]> =
                reports.iter().map(|r| r.params.as_ref().expect("params are reported").as_slice()).collect();
            // Same deltas, canonical order: bit-identical parameters.
            assert!(params.iter().all(|p| *p == params[0]), "nodes disagree after round {round}");
            assert!(consensus_distance(&params) < 1e-12);
        }
        assert!(summary.consensus_distance < 1e-12);
        assert!(summary.bytes_received_per_node > 0.0);
        assert!(summary.centralized_accuracy.is_nan());
    }

    #[test]
    fn sparse_bootstrap_dials_node_zero_and_a_few_earlier_nodes() {
        let plan = bootstrap_plan(50, Bootstrap::Sparse { fanout: 3 }, 9);
        assert_eq!(plan, bootstrap_plan(50, Bootstrap::Sparse { fanout: 3 }, 9), "seeded");
        assert!(plan[0].is_empty());
        assert_eq!(plan[1], vec![0]);
        assert_eq!(plan[3], vec![0, 1, 2]);
        for (index, dials) in plan.iter().enumerate().skip(4) {
            assert_eq!(dials.len(), 4, "node {index}: {dials:?}");
            assert_eq!(dials[0], 0);
            assert!(dials.windows(2).all(|w| w[0] < w[1]) && dials.iter().all(|&d| d < index));
        }
        let degrees = bootstrap_degrees(&plan);
        assert_eq!(degrees[0], 49);
        assert_eq!(degrees.iter().sum::<usize>(), 2 * plan.iter().map(Vec::len).sum::<usize>());
        assert_eq!(bootstrap_plan(4, Bootstrap::Auto, 9), bootstrap_plan(4, Bootstrap::FullMesh, 9));
        assert_eq!(bootstrap_plan(4, Bootstrap::FullMesh, 9)[3], vec![0, 1, 2]);
    }
}
