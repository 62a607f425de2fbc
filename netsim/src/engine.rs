//! Virtual mode: a discrete-event simulation of a whole swarm in virtual time.
//!
//! Every simulated node runs the real protocol core: its own
//! [`starling_protocol::Engine`] (the
//! very engine `starling run` drives: phases, rounds, state sync), real
//! ed25519-signed [`SignedDelta`]s encoded by the real codec with error
//! feedback, the real aggregation rule and outer optimizer, and lineage-based
//! repair by the real state sync: offers asked of the peers reached, the root a
//! majority announce, chunks fetched from several peers over the simulated
//! links and checked against their hashes. No state is ever copied from one
//! simulated node to another. Only the network and the clock are simulated:
//! messages travel a gossip mesh over links with sampled latency, per-node
//! uplink and downlink queues and loss; partitions, churn and stragglers come
//! from the scenario. All randomness flows from the scenario's seed, and
//! events at the same instant run in the order they were scheduled, so a run
//! is reproducible bit for bit.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    rc::Rc,
};

use ed25519_dalek::SigningKey;
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use starling_protocol::{
    engine::{Input, Output, RequestId},
    group,
    wire::{SyncRequest, SyncResponse},
    Codec, DeltaId, DeltaRules, Engine as NodeEngine, EngineConfig, ModelState, OuterOptimizer, PublicKey,
    RoundConfig, RunId, SignedDelta, StateSnapshot,
};

mod adversary;
mod delivery;
mod faults;
mod merge;
mod sync;
mod trace;

use crate::{
    attack::Junk,
    link::{self, Mesh},
    metrics::RoundLedger,
    scenario::{EventKind, Scenario, Workload},
    workload::{NodeModel, Task, Trained},
    SimError,
};

/// Virtual time in microseconds.
type Micros = u64;

const MS: Micros = 1_000;

enum Happening {
    /// A node's training job for a round is due.
    TrainDone { node: usize, job: usize },
    /// A message reached the receiver's network interface (before its downlink queue).
    Arrive { to: usize, from: usize, message: Rc<Message> },
    /// A message was fully received.
    Deliver { to: usize, from: usize, message: Rc<Message> },
    /// A node's round deadline may have passed.
    Deadline { node: usize },
    /// A sync request from `from` reached `to`.
    SyncRequest { to: usize, from: usize, id: Option<RequestId>, request: SyncRequest },
    /// The answer to `node`'s request `id` came back (`None`: it failed).
    SyncAnswer { node: usize, id: RequestId, response: Option<SyncResponse>, epoch: u64 },
    /// A crashed node comes back.
    Restart { node: usize },
    /// A node forwards a delta it accepted to its mesh peers.
    Forward { node: usize, from: usize, message: Rc<Message> },
}

/// How long a node holds an accepted delta before forwarding it, as the real
/// node does, so that IDONTWANTs from peers that already have it can arrive.
const FORWARD_HOLD: Micros = 25 * MS;

struct Message {
    body: Body,
    /// The round it belongs to (for byte accounting).
    round: u64,
    id: DeltaId,
    bytes: u64,
    published_at: Micros,
}

/// What travels the mesh.
#[allow(clippy::large_enum_variant)] // Shared behind an `Rc`, never moved by value in bulk.
enum Body {
    Delta(SignedDelta),
    /// A flood message from an attacker.
    Junk(Junk),
    /// Proof that `offender` signed two deltas for one round: every node that
    /// sees it bans the key for the run.
    Proof {
        offender: PublicKey,
    },
    /// A node's signed word that it leaves (see [`starling_protocol::leave`]).
    Leave(starling_protocol::LeaveNotice),
}

struct Scheduled {
    at: Micros,
    seq: u64,
    what: Happening,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Whether a node is running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    Crashed,
    Left,
}

struct SimNode {
    key: SigningKey,
    public: PublicKey,
    engine: NodeEngine,
    state: ModelState,
    /// The snapshot this node serves, of its state when last asked.
    snapshot: Option<Rc<StateSnapshot>>,
    residual: Vec<f32>,
    /// Handed to a training job and back.
    model: Option<Box<dyn NodeModel>>,
    life: Life,
    /// Bumped when the node crashes: work of its earlier life is dropped.
    epoch: u64,
    speed: f64,
    attacker: bool,
    side: usize,
    uplink_free: Micros,
    downlink_free: Micros,
    /// Deltas seen, with when, for duplicate suppression and IDONTWANT.
    seen: HashMap<DeltaId, (u64, Micros)>,
    /// The last wake-up scheduled for the round state machine (virtual µs).
    wake: Option<Micros>,
    /// A replaying attacker's own past deltas (round, values).
    own_history: VecDeque<(u64, Vec<f32>)>,
    /// Deltas a replaying attacker received, to replay later.
    heard: VecDeque<SignedDelta>,
    /// The last delta this node signed: kept across a crash, as the real
    /// node's outbox is, and checked so that no node signs two for a round.
    signed: Option<SignedDelta>,
    /// The lures a sync attacker gossiped: each names a later round than the
    /// last, so that none is an equivocation.
    lures: u64,
}

/// A training job: inputs fixed when it starts, so its result does not depend
/// on when or on which thread it runs.
struct Job {
    node: usize,
    epoch: u64,
    round: u64,
    lineage: [u8; 32],
    start: Vec<f32>,
    model: Option<Box<dyn NodeModel>>,
    result: Option<Result<Trained, String>>,
}

/// The groups of a round: each group's node indices, and each node's group.
struct RoundGroups {
    members: Vec<Vec<usize>>,
    group_of: Vec<usize>,
}

/// What a virtual run produced.
pub struct Outcome {
    pub ledger: RoundLedger,
    pub virtual_ms: u64,
    pub params: usize,
    /// Rounds at which scheduled events fired, for plot markers.
    pub markers: Vec<(u64, String)>,
}

pub(crate) struct Engine<'a> {
    sc: &'a Scenario,
    task: &'a dyn Task,
    run: RunId,
    codec: Codec,
    /// The model's weight matrices, for `lowrank`.
    matrices: Vec<starling_protocol::Matrix>,
    /// What every delta must satisfy (run, codec, model, samples a node can train).
    rules: DeltaRules,
    outer: OuterOptimizer,
    config: RoundConfig,
    params: usize,
    rng: Xoshiro256PlusPlus,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    now: Micros,
    nodes: Vec<SimNode>,
    mesh: Mesh,
    /// Validation results by delta id: `None` when valid, else the refusal label.
    verdicts: HashMap<DeltaId, Option<&'static str>>,
    jobs: Vec<Job>,
    pending_jobs: Vec<usize>,
    free_jobs: Vec<usize>,
    merge_buffer: Vec<f32>,
    ledger: RoundLedger,
    events: Vec<(u64, EventKind)>,
    leading_round: u64,
    markers: Vec<(u64, String)>,
    eval_nodes: Vec<bool>,
    grouped: bool,
    groups: HashMap<u64, Rc<RoundGroups>>,
    index: HashMap<PublicKey, usize>,
    /// How many running nodes are at each round (the slowest one closes rows).
    live_rounds: std::collections::BTreeMap<u64, usize>,
    /// Print notes and merges (`NETSIM_NOTES`, see [`trace`]).
    trace: bool,
    /// Attackers among the initial nodes.
    attackers: usize,
    /// Honest deltas of the latest round, for omniscient attacks.
    honest_deltas: (u64, Vec<Vec<f32>>),
    /// The state sync attackers announce, and the lineages of every one they forged.
    forged: Option<Rc<StateSnapshot>>,
    forged_lineages: std::collections::HashSet<[u8; 32]>,
    /// Messages sent across a partition, held for the heal (see
    /// [`crate::scenario::Link::heal_retransmit_ms`]): sender, receiver, message.
    held: Vec<(usize, usize, Rc<Message>)>,
}

/// Runs a scenario in virtual time; `progress(done, total)` after each finished round.
pub fn run(sc: &Scenario, task: &dyn Task, progress: &mut dyn FnMut(u64, u64)) -> Result<Outcome, SimError> {
    let mut engine = Engine::new(sc, task)?;
    for node in 0..engine.nodes.len() {
        engine.enter_round(node);
        engine.drive(node, Input::Start)?;
    }
    let mut done = 0;
    // The slowest node's round and when it got there: a protocol that stops
    // closing rounds (each node retrying a sync no majority answers, say)
    // ends the run with an error, rather than keep the timers going forever.
    let mut slowest = (engine.min_live_round(), 0);
    let stall_limit = engine.stall_limit();
    while let Some(Reverse(next)) = engine.queue.pop() {
        engine.now = next.at;
        engine.step(next.what)?;
        let round = engine.min_live_round();
        if round != slowest.0 {
            slowest = (round, engine.now);
        } else if engine.now.saturating_sub(slowest.1) > stall_limit {
            let nodes = (0..engine.nodes.len())
                .filter(|&i| engine.up(i) && engine.nodes[i].state.round == round)
                .collect();
            return Err(SimError::Stalled { round, stalled_s: stall_limit / MS / 1_000, nodes });
        }
        let finished = engine.ledger.finalize_ready(engine.min_live_round());
        if finished > done {
            done = finished;
            progress(done.min(sc.rounds), sc.rounds);
        }
        if engine.all_done() {
            break;
        }
    }
    engine.ledger.finalize_all();
    progress(sc.rounds, sc.rounds);
    Ok(Outcome {
        ledger: engine.ledger,
        virtual_ms: engine.now / MS,
        params: engine.params,
        markers: engine.markers,
    })
}

impl<'a> Engine<'a> {
    fn new(sc: &'a Scenario, task: &'a dyn Task) -> Result<Self, SimError> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(sc.seed);
        let run = RunId(*blake3::hash(sc.name.as_bytes()).as_bytes());
        let initial = task.initial_params();
        let params = initial.len();
        let codec = sc.protocol.codec;
        let config = RoundConfig {
            quorum: sc.protocol.quorum,
            deadline_ms: sc.protocol.deadline_ms,
            ..RoundConfig::from_spec(&starling_protocol::spec::RoundSpec {
                deadline_ms: sc.protocol.deadline_ms,
                quorum: sc.protocol.quorum,
            })
        };
        let attackers = sc.attack.attackers(sc.nodes);
        let stragglers = (sc.nodes as f64 * sc.compute.straggler_fraction).round() as usize;
        // Stragglers are a seeded random subset of the nodes.
        let mut order: Vec<usize> = (0..sc.nodes).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let slow: Vec<bool> = {
            let mut v = vec![false; sc.nodes];
            for &i in order.iter().take(stragglers) {
                v[i] = true;
            }
            v
        };
        let mut engine = Self {
            sc,
            task,
            run,
            rules: DeltaRules::new(run, codec, params).with_max_samples(task.max_samples()),
            codec,
            matrices: task.matrices(),
            outer: sc.protocol.outer(),
            config,
            params,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            nodes: Vec::with_capacity(sc.nodes),
            mesh: Mesh::default(),
            verdicts: HashMap::new(),
            jobs: Vec::new(),
            pending_jobs: Vec::new(),
            free_jobs: Vec::new(),
            merge_buffer: vec![0.0; params],
            ledger: RoundLedger::new(sc.rounds),
            events: sc.events.iter().map(|e| (e.at_round, e.what.clone())).collect(),
            leading_round: 0,
            markers: Vec::new(),
            eval_nodes: Vec::new(),
            grouped: sc.protocol.group_size >= 2,
            groups: HashMap::new(),
            index: HashMap::new(),
            live_rounds: std::collections::BTreeMap::new(),
            trace: trace::wanted(),
            attackers,
            honest_deltas: (0, Vec::new()),
            forged: None,
            forged_lineages: std::collections::HashSet::new(),
            held: Vec::new(),
        };
        engine.events.sort_by_key(|e| e.0);
        for (i, &slow) in slow.iter().enumerate() {
            let speed = if slow { sc.compute.straggler_slowdown } else { 1.0 };
            // The first nodes start at genesis together: nothing to probe for.
            engine.add_node(initial.clone(), speed, i >= sc.nodes - attackers, false)?;
        }
        engine.mesh = link::mesh(sc.nodes, sc.link.mesh_degree, &mut engine.rng);
        engine.eval_nodes = eval_sample(sc, task, sc.nodes - attackers);
        if !engine.grouped {
            let keys: Vec<PublicKey> = engine.nodes.iter().map(|n| n.public).collect();
            for i in 0..engine.nodes.len() {
                for (j, k) in keys.iter().enumerate() {
                    if engine.direct(i, j) {
                        engine.nodes[i].engine.handle(0, Input::PeerConnected(*k));
                    }
                }
            }
        }
        Ok(engine)
    }

    /// The engine of a node at `round` with `lineage`; `probe`: ask the peers
    /// for a newer state before the first round, as a real node does.
    fn new_engine(&self, public: PublicKey, round: u64, lineage: [u8; 32], probe: bool) -> NodeEngine {
        let state_bytes = self.params * 8 + 1024;
        let config = EngineConfig {
            stop_at: Some(self.sc.rounds),
            probe_on_start: probe,
            ..EngineConfig::new(self.config.clone(), self.params, state_bytes)
        };
        NodeEngine::new(public, config, round, lineage)
    }

    fn add_node(
        &mut self,
        params: Vec<f32>,
        speed: f64,
        attacker: bool,
        probe: bool,
    ) -> Result<usize, SimError> {
        let index = self.nodes.len();
        let key = starling_protocol::keys::node_key(self.sc.seed, index);
        let public = PublicKey::of(&key);
        let poisoned = attacker && self.sc.attack.behaviour == crate::attack::AttackBehaviour::LabelFlip;
        let model = self.task.node_model(index, &public, poisoned).map_err(SimError::Workload)?;
        self.index.insert(public, index);
        self.groups.clear();
        let state = ModelState::initial(params);
        let engine = self.new_engine(public, 0, state.lineage, probe);
        self.nodes.push(SimNode {
            key,
            public,
            engine,
            state,
            snapshot: None,
            residual: Vec::new(),
            model: Some(model),
            life: Life::Up,
            epoch: 0,
            speed,
            attacker,
            side: 0,
            uplink_free: 0,
            downlink_free: 0,
            seen: HashMap::new(),
            wake: None,
            own_history: VecDeque::new(),
            heard: VecDeque::new(),
            lures: 0,
            signed: None,
        });
        self.track(index);
        Ok(index)
    }

    fn schedule(&mut self, at: Micros, what: Happening) {
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, what }));
        self.seq += 1;
    }

    fn up(&self, node: usize) -> bool {
        self.nodes[node].life == Life::Up
    }

    fn min_live_round(&self) -> u64 {
        self.live_rounds.keys().next().copied().unwrap_or(u64::MAX)
    }

    /// How long the slowest node may stay in one round (virtual time): fifty
    /// rounds of the slowest node's training and a deadline, plus the longest
    /// restart delay the scenario schedules.
    fn stall_limit(&self) -> Micros {
        let c = &self.sc.compute;
        let round_ms = (c.round_ms as f64 * c.straggler_slowdown * (1.0 + c.jitter)) as u64;
        let restart = self
            .sc
            .events
            .iter()
            .filter_map(|e| match e.what {
                EventKind::Crash { restart_after_ms, .. } => Some(restart_after_ms),
                _ => None,
            })
            .chain([self.sc.churn.restart_after_ms])
            .max()
            .unwrap_or(0);
        (50 * (round_ms + self.config.deadline_ms) + restart) * MS
    }

    fn all_done(&self) -> bool {
        self.min_live_round() >= self.sc.rounds
    }

    /// Stops counting a node's round (before its round or life changes).
    /// Sync attackers never count: they train nothing, and the run ends when
    /// the nodes that do are done.
    fn untrack(&mut self, node: usize) {
        if self.nodes[node].life == Life::Up && !self.sync_sybil(node) {
            let round = self.nodes[node].state.round;
            if let std::collections::btree_map::Entry::Occupied(mut e) = self.live_rounds.entry(round) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Counts a node's round again (after its round or life changed).
    fn track(&mut self, node: usize) {
        if self.nodes[node].life == Life::Up && !self.sync_sybil(node) {
            *self.live_rounds.entry(self.nodes[node].state.round).or_default() += 1;
        }
    }

    fn step(&mut self, what: Happening) -> Result<(), SimError> {
        match what {
            Happening::TrainDone { node, job } => self.on_trained(node, job),
            Happening::Arrive { to, from, message } => {
                if !self.up(to) {
                    return Ok(());
                }
                let rx = link::transfer_time(message.bytes, self.sc.link.downlink_mbps);
                let done = self.now.max(self.nodes[to].downlink_free) + rx;
                self.nodes[to].downlink_free = done;
                self.schedule(done, Happening::Deliver { to, from, message });
                Ok(())
            }
            Happening::Deliver { to, from, message } => self.on_deliver(to, from, message),
            Happening::Deadline { node } => {
                if self.up(node) {
                    self.drive(node, Input::Timer)?;
                }
                Ok(())
            }
            Happening::SyncRequest { to, from, id, request } => self.on_sync_request(to, from, id, request),
            Happening::SyncAnswer { node, id, response, epoch } => {
                if self.up(node) && self.nodes[node].epoch == epoch {
                    self.drive(node, Input::SyncResponse { id, response })?;
                }
                Ok(())
            }
            Happening::Restart { node } => {
                self.restart(node);
                Ok(())
            }
            Happening::Forward { node, from, message } => {
                self.forward(node, from, message);
                Ok(())
            }
        }
    }

    /// Starts the training job the engine asked for.
    fn start_training(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.life != Life::Up {
            return;
        }
        let Some(model) = n.model.take() else { return };
        let job = Job {
            node,
            epoch: n.epoch,
            round: n.state.round,
            lineage: n.state.lineage,
            start: n.state.params.clone(),
            model: Some(model),
            result: None,
        };
        let speed = n.speed;
        let index = match self.free_jobs.pop() {
            Some(i) => {
                self.jobs[i] = job;
                i
            }
            None => {
                self.jobs.push(job);
                self.jobs.len() - 1
            }
        };
        self.pending_jobs.push(index);
        let jitter = self.sc.compute.jitter;
        let factor = speed * (1.0 + if jitter > 0.0 { self.rng.random_range(-jitter..jitter) } else { 0.0 });
        let at = self.now + (self.sc.compute.round_ms as f64 * factor * MS as f64) as Micros;
        self.schedule(at, Happening::TrainDone { node, job: index });
    }

    /// Runs every started job whose result is not in yet, on all cores.
    fn run_pending_jobs(&mut self) {
        let pending = std::mem::take(&mut self.pending_jobs);
        let mut batch: Vec<&mut Job> = Vec::with_capacity(pending.len());
        // Safe disjoint borrows: indices in `pending` are distinct.
        let mut rest: &mut [Job] = &mut self.jobs;
        let mut offset = 0;
        let mut sorted = pending;
        sorted.sort_unstable();
        for i in sorted {
            let (_, tail) = rest.split_at_mut(i - offset);
            let (job, tail) = tail.split_first_mut().expect("job index in range");
            batch.push(job);
            rest = tail;
            offset = i + 1;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(batch.len().max(1));
        let chunk = batch.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for part in batch.chunks_mut(chunk) {
                s.spawn(move || {
                    for job in part {
                        let model = job.model.as_mut().expect("a pending job holds its model");
                        job.result = Some(model.train(&job.start));
                    }
                });
            }
        });
    }

    fn on_trained(&mut self, node: usize, job_index: usize) -> Result<(), SimError> {
        if self.jobs[job_index].result.is_none() {
            self.run_pending_jobs();
        }
        let job = &mut self.jobs[job_index];
        let (epoch, round, lineage) = (job.epoch, job.round, job.lineage);
        let result = job.result.take().expect("ran");
        self.nodes[node].model = job.model.take();
        self.free_jobs.push(job_index);
        let trained = result.map_err(|e| SimError::Workload(format!("node {node}: {e}")))?;
        if self.nodes[node].life != Life::Up || self.nodes[node].epoch != epoch {
            // A job of a node since crashed: its new engine never asked for it.
            return Ok(());
        }
        // A sync attacker never contributes a delta of the round: as the
        // colluders of `tests/sync_sybil.rs`, it only gossips its lures, so
        // that every round waits for it until the deadline.
        let sybil = self.sync_sybil(node);
        let n = &mut self.nodes[node];
        if !n.engine.wants_trained(round, lineage) || sybil {
            self.drive(node, Input::Trained { round, base: lineage, delta: None })?;
            if sybil {
                self.lure(node);
            }
            return Ok(());
        }
        let payload = if self.grouped {
            // Grouped rounds average models: see `merge`. (Attacks are refused
            // with groups.)
            self.codec.encode(&trained.params)
        } else {
            let mut delta: Vec<f32> =
                n.state.params.iter().zip(&trained.params).map(|(a, b)| a - b).collect();
            if n.attacker {
                self.tamper(node, round, &mut delta);
            } else if self.sc.attack.behaviour.omniscient() {
                self.note_honest(round, &delta);
            }
            let n = &mut self.nodes[node];
            self.codec.encode_with_feedback_shaped(
                &delta,
                &mut n.residual,
                self.sc.protocol.feedback_decay,
                &self.matrices,
            )
        };
        let n = &mut self.nodes[node];
        let signed = SignedDelta::sign(
            &n.key,
            self.run,
            round,
            n.state.lineage,
            trained.samples.max(1),
            self.codec,
            payload,
        );
        let n = &mut self.nodes[node];
        if !n.attacker {
            // Honest nodes never sign a second delta for a round they signed,
            // not even after going back to an older state.
            if n.signed
                .as_ref()
                .is_some_and(|last| last.header.round >= round && last.header != signed.header)
            {
                self.ledger.honest_equivocations += 1;
            }
            n.signed = Some(signed.clone());
        }
        self.drive(node, Input::Trained { round, base: lineage, delta: Some(signed) })
    }

    /// Hands node `node`'s engine one input and carries out what it asks.
    fn drive(&mut self, node: usize, input: Input) -> Result<(), SimError> {
        let outputs = self.nodes[node].engine.handle(self.now / MS, input);
        self.apply(node, outputs)
    }

    fn apply(&mut self, node: usize, outputs: Vec<Output>) -> Result<(), SimError> {
        let mut queue = std::collections::VecDeque::from(outputs);
        while let Some(output) = queue.pop_front() {
            if !self.up(node) {
                // Crashed meanwhile (after a merge): what is left dies with it.
                return Ok(());
            }
            match output {
                Output::Publish(delta) => self.publish(node, delta),
                Output::Train { .. } => self.start_training(node),
                Output::Merge { round, deltas, reason } => {
                    if self.merge(node, round, deltas, reason)? {
                        let lineage = self.nodes[node].state.lineage;
                        let more =
                            self.nodes[node].engine.handle(self.now / MS, Input::Merged { round, lineage });
                        queue.extend(more);
                    }
                }
                Output::Request { peer, id, request } => {
                    self.send_sync_request(node, peer, Some(id), request)
                }
                Output::Notify { peer, request } => self.send_sync_request(node, peer, None, request),
                Output::DecodeState(decode) => {
                    // Decoded at once: a simulated node's decode takes no time.
                    let root = decode.root();
                    let input = Input::StateDecoded { root, result: decode.decode() };
                    queue.extend(self.nodes[node].engine.handle(self.now / MS, input));
                }
                Output::Install { state, deltas, .. } => {
                    let more = self.install(node, state, deltas);
                    queue.extend(more);
                }
                Output::Deltas(deltas) => {
                    let more = self.take_offered(node, deltas);
                    queue.extend(more);
                }
                Output::Timer(at) => {
                    let at = at * MS;
                    if self.nodes[node].wake != Some(at) {
                        self.nodes[node].wake = Some(at);
                        self.schedule(at.max(self.now), Happening::Deadline { node });
                    }
                }
                Output::Note(note) => self.trace_note(node, &note),
                Output::Finished => {}
            }
        }
        Ok(())
    }

    /// Tells a grouped node its group for the round it is in.
    fn enter_round(&mut self, node: usize) {
        if !self.grouped {
            return;
        }
        let round = self.nodes[node].state.round;
        let members: Vec<PublicKey> =
            self.group_of(round, node).into_iter().map(|i| self.nodes[i].public).collect();
        let outputs = self.nodes[node].engine.handle(self.now / MS, Input::Group { round, members });
        debug_assert!(outputs.iter().all(|o| matches!(o, Output::Timer(_))));
    }

    /// Indices of the members of `node`'s group in `round` (itself included).
    fn group_of(&mut self, round: u64, node: usize) -> Vec<usize> {
        let groups = match self.groups.get(&round) {
            Some(g) => g.clone(),
            None => {
                // Groups come from the member list everyone shares: all nodes that
                // joined and have not left (a crashed node is still a member).
                let members: Vec<PublicKey> =
                    self.nodes.iter().filter(|n| n.life != Life::Left).map(|n| n.public).collect();
                let assigned = group::assign(&self.run.0, round, &members, self.sc.protocol.group_size);
                let mut of = vec![usize::MAX; self.nodes.len()];
                let groups: Vec<Vec<usize>> = assigned
                    .iter()
                    .enumerate()
                    .map(|(g, keys)| {
                        keys.iter()
                            .map(|k| {
                                let i = self.index[k];
                                of[i] = g;
                                i
                            })
                            .collect()
                    })
                    .collect();
                let entry = Rc::new(RoundGroups { members: groups, group_of: of });
                self.groups.retain(|r, _| *r + 4 > round);
                self.groups.insert(round, entry.clone());
                entry
            }
        };
        match groups.group_of.get(node) {
            Some(&g) if g != usize::MAX => groups.members[g].clone(),
            _ => vec![node],
        }
    }

    fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.index.get(key).copied()
    }
}

/// Which nodes are evaluated each round: all for cheap workloads, else an evenly spaced sample.
fn eval_sample(sc: &Scenario, task: &dyn Task, nodes: usize) -> Vec<bool> {
    if task.cheap_to_evaluate() {
        return vec![true; nodes];
    }
    let want = match sc.workload {
        Workload::Candle { eval_nodes, .. } => eval_nodes.clamp(1, nodes),
        Workload::Quadratic { .. } => nodes,
    };
    let mut v = vec![false; nodes];
    for j in 0..want {
        v[j * nodes / want] = true;
    }
    v
}
