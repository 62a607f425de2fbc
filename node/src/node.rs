//! The node event loop: drives the protocol's `RoundState` with real time,
//! real gossip and a real trainer, and persists every merged round.
//!
//! One task owns the swarm, the round state and the model state; training runs
//! on a blocking thread and reports back over a channel, so the node keeps
//! gossiping, validating and serving state while it trains.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{
    gossipsub, identify, kad, mdns, multiaddr::Protocol, request_response, swarm::SwarmEvent, Multiaddr,
    PeerId, Swarm,
};
use starling_protocol::{
    round::CloseReason, wire, Action, Admission, Event, ModelState, OuterOptimizer, PublicKey, RoundConfig,
    RoundState, RunSpec, SignedDelta, SyncReply,
};
use starling_storage::{Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::{
    datasets::{Shard, TrainData, Workload},
    metrics::{NodeMetrics, Traffic},
    net::{self, Behaviour, BehaviourEvent, NetOptions, StateRequest, StateResponse},
    trainer::{Evaluation, TrainError, TrainOutcome, Trainer},
};

/// Everything a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub datadir: PathBuf,
    pub spec: RunSpec,
    pub listen: Vec<Multiaddr>,
    pub bootnodes: Vec<Multiaddr>,
    pub net: NetOptions,
    /// Run peers to wait for before the first round.
    pub wait_peers: usize,
    /// How long to wait for them before training alone.
    pub wait_timeout: Duration,
    /// Stop once the state reaches this round.
    pub rounds: Option<u64>,
    /// Overrides the datadir's identity (the local swarm derives keys from a seed).
    pub key: Option<SigningKey>,
    /// Evaluate on the held-out set after every merge.
    pub evaluate: bool,
    /// Where this node's data is and which shard of it it trains on.
    pub data: DataOptions,
}

/// A node's own view of the run's data.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// The node's local copy of the data (`--dataset`); the spec's `dataset.kind` when absent.
    pub dataset: Option<starling_protocol::DatasetKind>,
    /// Which shard to train on (`--shard I/N`); the whole data set (`0/1`) when absent.
    /// Synthetic IID data is drawn from the node's key instead.
    pub shard: Option<Shard>,
}

/// What a node tells whoever started it.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    Listening { node: PublicKey, address: Multiaddr },
    Round(RoundReport),
}

/// One merged round, as the node saw it.
#[derive(Clone, Debug)]
pub struct RoundReport {
    pub node: PublicKey,
    /// The round that was merged; the state is now at `round + 1`.
    pub round: u64,
    pub train_loss: f32,
    pub eval: Option<Evaluation>,
    pub peers: usize,
    pub merged: usize,
    pub reason: CloseReason,
    pub traffic: Traffic,
    /// The parameters after the merge; only when [`HarnessHooks::report_params`] asks.
    pub params: Option<Arc<Vec<f32>>>,
}

/// What an in-process harness (the local swarm, netsim's live mode) can ask of
/// a node beyond [`NodeOptions`]; `starling run` leaves all of it at the default.
#[derive(Clone, Debug, Default)]
pub struct HarnessHooks {
    /// Put a copy of the merged parameters in every [`RoundReport`], so the
    /// harness can measure consensus distance round by round.
    pub report_params: bool,
    /// Hold the first round until this turns true, so that nodes started one
    /// after another begin round 0 together; `wait_peers` and `wait_timeout`
    /// count from then.
    pub start: Option<watch::Receiver<bool>>,
    /// Run members to expect from the first round as if they were connected,
    /// whether or not they ever connect directly (a roster known in advance).
    pub expected_peers: Vec<PublicKey>,
    /// After the last round, keep relaying gossip and serving state until
    /// `shutdown` turns true, rather than leave after a short drain: in a sparse
    /// swarm, slower nodes may still need their neighbours to forward deltas.
    pub linger_until_shutdown: bool,
}

impl HarnessHooks {
    fn holds_start(&self) -> bool {
        self.start.as_ref().is_some_and(|gate| !*gate.borrow())
    }
}

/// How a node ended.
#[derive(Clone, Debug)]
pub struct NodeOutcome {
    pub node: PublicKey,
    pub state: ModelState,
    pub traffic: Traffic,
    pub rounds_merged: u64,
    pub refused_deltas: u64,
    /// Bytes of the delta payloads this node published.
    pub published_bytes: u64,
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the datadir {path}: {source} (pass a writable --datadir)")]
    Datadir { path: PathBuf, source: std::io::Error },
    #[error("the datadir {datadir} belongs to run {stored}, but --spec describes run {given}; use another --datadir or the spec it was created with")]
    SpecMismatch { datadir: PathBuf, stored: String, given: String },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("data: {0}")]
    Data(String),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("cannot listen on {address}: {reason} (change --listen)")]
    Listen { address: Multiaddr, reason: String },
    #[error("merging round {round} failed: {reason}")]
    Merge { round: u64, reason: String },
}

/// How long an accepted delta waits before gossipsub may forward it.
const FORWARD_HOLD: Duration = Duration::from_millis(25);

/// A trainer handed back with the round and the state hash it trained from.
type TrainDone = (Trainer, u64, [u8; 32], Result<TrainOutcome, TrainError>);

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for enough peers to start.
    Gathering,
    /// Asked a peer for its state before the first round.
    Probing,
    Running,
    /// Reached the round limit; lingering so queued gossip gets out.
    Draining(Instant),
}

/// A running node.
struct Node {
    options: NodeOptions,
    spec: RunSpec,
    key: SigningKey,
    me: PublicKey,
    store: Store,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    metrics: NodeMetrics,
    rounds: RoundState,
    state: ModelState,
    /// What the lossy codec has not yet sent of our deltas (error feedback).
    residual: Vec<f32>,
    /// The round's aggregated pseudo-gradient, reused from round to round.
    merge_buffer: Vec<f32>,
    outer: OuterOptimizer,
    trainer: Option<Trainer>,
    /// The held-out set; built only when the node evaluates (it is the same for every node).
    eval: Option<TrainData>,
    train_tx: mpsc::UnboundedSender<TrainDone>,
    forward_tx: mpsc::UnboundedSender<(gossipsub::MessageId, PeerId)>,
    run_peers: BTreeSet<PeerId>,
    sync_pending: Option<request_response::OutboundRequestId>,
    phase: Phase,
    started: Instant,
    /// When we last asked the DHT for peers.
    last_lookup: Option<Instant>,
    last_loss: f32,
    rounds_merged: u64,
    /// Bytes of all the delta payloads this node published.
    published_bytes: u64,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    hooks: HarnessHooks,
    /// When gathering began (or the start gate opened): `wait_timeout` counts from here.
    gathering_since: Instant,
}

/// Runs a node until it reaches `options.rounds` or `shutdown` turns true.
pub async fn run_node(
    options: NodeOptions,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    shutdown: watch::Receiver<bool>,
) -> Result<NodeOutcome, NodeError> {
    run_node_with(options, HarnessHooks::default(), events, shutdown).await
}

/// [`run_node`] with what an in-process harness asks for besides.
pub async fn run_node_with(
    options: NodeOptions,
    hooks: HarnessHooks,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<NodeOutcome, NodeError> {
    let (train_tx, mut train_rx) = mpsc::unbounded_channel();
    let (forward_tx, mut forward_rx) = mpsc::unbounded_channel();
    let mut node = Node::open(options, hooks, events, train_tx, forward_tx)?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = node.swarm.select_next_some() => node.on_swarm_event(event)?,
            Some(done) = train_rx.recv() => node.on_trained(done)?,
            Some((id, source)) = forward_rx.recv() => {
                node.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &id,
                    &source,
                    gossipsub::MessageAcceptance::Accept,
                );
            }
            _ = tick.tick() => {
                if node.on_tick()? {
                    break;
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    info!(round = node.state.round, "shutting down; the last merged round is checkpointed");
                    break;
                }
            }
        }
    }
    Ok(node.outcome())
}

impl Node {
    fn open(
        options: NodeOptions,
        hooks: HarnessHooks,
        events: Option<mpsc::UnboundedSender<NodeEvent>>,
        train_tx: mpsc::UnboundedSender<TrainDone>,
        forward_tx: mpsc::UnboundedSender<(gossipsub::MessageId, PeerId)>,
    ) -> Result<Self, NodeError> {
        let spec = options.spec.clone();
        std::fs::create_dir_all(&options.datadir)
            .map_err(|source| NodeError::Datadir { path: options.datadir.clone(), source })?;
        let store = Store::open(&options.datadir)?;
        let key = match &options.key {
            Some(key) => {
                store.set_identity(key)?;
                key.clone()
            }
            None => store.identity()?,
        };
        match store.spec()? {
            Some(stored) if stored.run_id() != spec.run_id() => {
                return Err(NodeError::SpecMismatch {
                    datadir: options.datadir.clone(),
                    stored: stored.run_id().short(),
                    given: spec.run_id().short(),
                })
            }
            Some(_) => {}
            None => store.set_spec(&spec)?,
        }
        let params = spec.param_count();
        let scan = store.latest_checkpoint(params)?;
        for bad in &scan.skipped {
            warn!(round = bad.round, reason = %bad.reason, "skipping unreadable checkpoint");
        }
        let (state, residual) = match scan.checkpoint {
            Some(checkpoint) => {
                info!(round = checkpoint.state.round, "resuming from checkpoint");
                (checkpoint.state, checkpoint.residual)
            }
            None => {
                let state = ModelState::initial(crate::init::initial_params(&spec)?);
                store.save_checkpoint(&state, &[])?;
                (state, Vec::new())
            }
        };
        let me = PublicKey::of(&key);
        let workload = Workload::open(&spec, options.data.dataset.as_ref())
            .map_err(|e| NodeError::Data(e.to_string()))?;
        let shard_seed = shard_seed(&me);
        let shard = options.data.shard.unwrap_or(Shard { index: 0, count: 1 });
        let data = workload.shard(shard, shard_seed).map_err(|e| NodeError::Data(e.to_string()))?;
        let trainer = Trainer::new(&spec, data, shard_seed)?;
        let eval = options.evaluate.then(|| workload.eval());

        let mut metrics = NodeMetrics::default();
        let mut swarm = net::build_swarm(&key, &spec, &options.net, &mut metrics.registry)?;
        for address in &options.listen {
            swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Listen { address: address.clone(), reason: e.to_string() })?;
        }
        for address in &options.bootnodes {
            if let Some(Protocol::P2p(peer)) = address.iter().last() {
                swarm.behaviour_mut().kad.add_address(&peer, address.clone());
            }
            if let Err(e) = swarm.dial(address.clone()) {
                warn!(%address, error = %e, "cannot dial bootnode");
            }
        }
        let topic = net::delta_topic(&spec);
        swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribing to a new topic cannot fail");
        info!(run = %spec.run_id().short(), peer = %swarm.local_peer_id(), round = state.round, "node started");

        let mut rounds = RoundState::new(me, RoundConfig::from_spec(&spec.round), state.round);
        for peer in &hooks.expected_peers {
            // Nothing is published yet, so this only records whom to expect.
            let _ = rounds.handle(0, Event::PeerConnected(*peer));
        }
        Ok(Self {
            outer: OuterOptimizer::from(&spec.outer),
            spec,
            key,
            me,
            store,
            swarm,
            topic,
            metrics,
            rounds,
            state,
            residual,
            merge_buffer: Vec::new(),
            trainer: Some(trainer),
            eval,
            train_tx,
            forward_tx,
            run_peers: BTreeSet::new(),
            sync_pending: None,
            phase: Phase::Gathering,
            started: Instant::now(),
            last_lookup: None,
            last_loss: f32::NAN,
            rounds_merged: 0,
            published_bytes: 0,
            events,
            hooks,
            gathering_since: Instant::now(),
            options,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn done(&self) -> bool {
        self.options.rounds.is_some_and(|r| self.state.round >= r)
    }

    /// Periodic work. Returns true when the node should stop.
    fn on_tick(&mut self) -> Result<bool, NodeError> {
        match self.phase {
            Phase::Gathering => {
                // Ask the peers we know whom they know, until enough are here: a peer
                // that joined our bootnode after our first lookup is found by the next.
                if self.run_peers.len() < self.options.wait_peers
                    && self.last_lookup.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    self.last_lookup = Some(Instant::now());
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                if self.hooks.holds_start() {
                    self.gathering_since = Instant::now();
                    return Ok(false);
                }
                let waited = self.gathering_since.elapsed();
                if self.run_peers.len() >= self.options.wait_peers || waited >= self.options.wait_timeout {
                    if self.run_peers.len() < self.options.wait_peers {
                        warn!(
                            peers = self.run_peers.len(),
                            wanted = self.options.wait_peers,
                            "starting with fewer peers than --wait-peers"
                        );
                    }
                    self.probe_or_start();
                }
            }
            Phase::Draining(since) => {
                return Ok(!self.hooks.linger_until_shutdown && since.elapsed() >= Duration::from_secs(2))
            }
            Phase::Probing | Phase::Running => {
                let actions = self.rounds.handle(self.now_ms(), Event::Tick);
                self.apply(actions)?;
            }
        }
        Ok(false)
    }

    /// Before the first round, ask a peer whether the run is further along.
    fn probe_or_start(&mut self) {
        if self.done() {
            self.phase = Phase::Draining(Instant::now());
            return;
        }
        match self.run_peers.iter().next().copied() {
            Some(peer) => {
                self.request_state(peer);
                self.phase = Phase::Probing;
            }
            None => self.start_running(),
        }
    }

    fn start_running(&mut self) {
        self.phase = Phase::Running;
        self.maybe_train();
    }

    /// Starts training the current round if nothing is in flight.
    fn maybe_train(&mut self) {
        if self.phase != Phase::Running || self.done() || !self.rounds.wants_local() {
            return;
        }
        let Some(mut trainer) = self.trainer.take() else { return };
        let round = self.state.round;
        let base = self.state.lineage;
        let start = self.state.params.clone();
        let steps = self.spec.inner.steps;
        let tx = self.train_tx.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = trainer.train_round(&start, steps);
            let _ = tx.send((trainer, round, base, outcome));
        });
    }

    fn on_trained(&mut self, (trainer, round, base, outcome): TrainDone) -> Result<(), NodeError> {
        self.trainer = Some(trainer);
        if round != self.state.round || base != self.state.lineage {
            debug!(round, now = self.state.round, "dropping a delta trained from a state we have since left");
            self.maybe_train();
            return Ok(());
        }
        let outcome = outcome?;
        self.last_loss = outcome.mean_loss;
        // Pseudo-gradient Δ = θ_r − θ_i: the outer step moves against it.
        let delta: Vec<f32> = self.state.params.iter().zip(&outcome.params).map(|(a, b)| a - b).collect();
        let payload =
            self.spec.codec.encode_with_feedback(&delta, &mut self.residual, self.spec.feedback_decay as f32);
        let signed = SignedDelta::sign(
            &self.key,
            self.spec.run_id(),
            round,
            base,
            outcome.samples,
            self.spec.codec,
            payload,
        );
        let actions = self.rounds.handle(self.now_ms(), Event::LocalDelta(signed));
        self.apply(actions)
    }

    fn apply(&mut self, actions: Vec<Action>) -> Result<(), NodeError> {
        for action in actions {
            match action {
                Action::Publish(delta) => {
                    let bytes = delta.to_bytes();
                    self.published_bytes += bytes.len() as u64;
                    if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
                        // Alone in the run: nobody to send to, and the round closes on our delta alone.
                        debug!(error = %e, "delta not published");
                    }
                }
                Action::Merge { round, deltas, reason } => self.merge(round, deltas, reason)?,
                Action::Diverged { peer, round } => {
                    warn!(
                        round,
                        "most deltas of this round came from a state other than ours; fetching a peer's state"
                    );
                    if let Some(target) = net::peer_id(&peer).filter(|p| self.swarm.is_connected(p)) {
                        self.request_state(target);
                    }
                }
                Action::RequestState { peer, round } => {
                    info!(
                        behind_by = round.saturating_sub(self.state.round),
                        "a peer is ahead; requesting its state"
                    );
                    let target = net::peer_id(&peer)
                        .filter(|p| self.swarm.is_connected(p))
                        .or_else(|| self.run_peers.iter().next().copied());
                    if let Some(target) = target {
                        self.request_state(target);
                    }
                }
            }
        }
        Ok(())
    }

    fn merge(&mut self, round: u64, deltas: Vec<SignedDelta>, reason: CloseReason) -> Result<(), NodeError> {
        let merged = deltas.len();
        self.merge_buffer.resize(self.spec.param_count(), 0.0);
        self.spec
            .aggregation
            .aggregate_deltas_into(&deltas, self.spec.codec, &mut self.merge_buffer)
            .map_err(|e| NodeError::Merge { round, reason: e.to_string() })?;
        self.outer.step(&mut self.state.params, &mut self.state.momentum, &self.merge_buffer);
        self.state.record_merge(round, &deltas);
        self.store.save_checkpoint(&self.state, &self.residual)?;
        self.rounds_merged += 1;
        self.metrics.merges.inc();
        self.metrics.round.set(self.state.round as i64);

        let eval = match (&self.trainer, &self.eval) {
            (Some(trainer), Some(eval)) => Some(trainer.evaluate(&self.state.params, eval)?),
            _ => None,
        };
        let report = RoundReport {
            node: self.me,
            round,
            train_loss: self.last_loss,
            eval,
            peers: self.run_peers.len(),
            merged,
            reason,
            traffic: self.metrics.transport_bytes(),
            params: self.hooks.report_params.then(|| Arc::new(self.state.params.clone())),
        };
        info!(
            round,
            merged,
            reason = ?reason,
            loss = report.train_loss,
            accuracy = eval.map(|e| e.accuracy),
            peers = report.peers,
            "round merged"
        );
        if let Some(events) = &self.events {
            let _ = events.send(NodeEvent::Round(report));
        }
        if self.done() {
            info!(round = self.state.round, "reached the requested number of rounds");
            self.phase = Phase::Draining(Instant::now());
        } else {
            self.maybe_train();
        }
        Ok(())
    }

    fn request_state(&mut self, peer: PeerId) {
        if self.sync_pending.is_some() {
            return;
        }
        let id =
            self.swarm.behaviour_mut().sync.send_request(&peer, StateRequest { run_id: self.spec.run_id() });
        self.sync_pending = Some(id);
    }

    fn on_state_response(&mut self, bytes: Option<Vec<u8>>) -> Result<(), NodeError> {
        self.sync_pending = None;
        if let Some(bytes) = bytes {
            match wire::decode_sync_reply(&bytes, self.spec.max_sync_reply_bytes(), self.spec.param_count()) {
                Ok(reply) if reply.state.round > self.state.round || self.rounds.observing() => {
                    self.install(reply)?
                }
                Ok(reply) => debug!(peer_round = reply.state.round, "peer is not ahead of us"),
                Err(e) => warn!(error = %e, "peer sent an unreadable state"),
            }
        }
        if self.phase == Phase::Probing {
            self.start_running();
        } else {
            self.maybe_train();
        }
        Ok(())
    }

    /// Installs a peer's state, then the deltas of its current round it holds.
    fn install(&mut self, reply: SyncReply) -> Result<(), NodeError> {
        info!(
            from = self.state.round,
            to = reply.state.round,
            expected_from = reply.expected_from,
            "installed the state of a peer"
        );
        self.state = reply.state;
        self.store.save_checkpoint(&self.state, &self.residual)?;
        self.metrics.state_syncs.inc();
        let now = self.now_ms();
        let synced = Event::Synced { round: self.state.round, expected_from: reply.expected_from };
        let mut actions = self.rounds.handle(now, synced);
        let (run, codec, params) = (self.spec.run_id(), self.spec.codec, self.spec.param_count());
        for delta in reply.deltas {
            if delta.validate(run, codec, params).is_ok()
                && self.rounds.admit(&delta.header) == Admission::Accept
            {
                actions.extend(self.rounds.handle(now, Event::PeerDelta(delta)));
            }
        }
        self.apply(actions)
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Result<(), NodeError> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                info!(address = %full, "listening");
                if let Some(events) = &self.events {
                    let _ = events.send(NodeEvent::Listening { node: self.me, address: full });
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => self.peer_left(peer_id)?,
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event)?,
            _ => {}
        }
        Ok(())
    }

    fn peer_left(&mut self, peer: PeerId) -> Result<(), NodeError> {
        if self.run_peers.remove(&peer) {
            debug!(%peer, "run peer left");
            if let Some(key) = net::peer_key(&peer) {
                let actions = self.rounds.handle(self.now_ms(), Event::PeerDisconnected(key));
                self.apply(actions)?;
            }
        }
        Ok(())
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) -> Result<(), NodeError> {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.on_gossip(propagation_source, message_id, &message.data)?;
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })
                if topic == self.topic.hash() =>
            {
                if let Some(key) = net::peer_key(&peer_id) {
                    if self.run_peers.insert(peer_id) {
                        debug!(peer = %peer_id, "run peer joined");
                        let actions = self.rounds.handle(self.now_ms(), Event::PeerConnected(key));
                        self.apply(actions)?;
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic })
                if topic == self.topic.hash() =>
            {
                self.peer_left(peer_id)?;
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let mut new = false;
                for address in info.listen_addrs {
                    new |= matches!(kad.add_address(&peer_id, address), kad::RoutingUpdate::Success);
                }
                // Ask the newcomer whom it knows, so swarms bootstrapped from one node become a mesh.
                if new {
                    let _ = kad.bootstrap();
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(address);
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = if request.run_id == self.spec.run_id() && self.phase != Phase::Gathering {
                        let expected_from = net::peer_key(&peer)
                            .map_or(self.state.round + 2, |k| self.rounds.expected_from(&k));
                        StateResponse::State(wire::encode_sync_reply(&SyncReply {
                            state: self.state.clone(),
                            expected_from,
                            deltas: self.rounds.current_deltas(),
                        }))
                    } else {
                        StateResponse::Unavailable
                    };
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
                }
                request_response::Message::Response { response, .. } => {
                    let bytes = match response {
                        StateResponse::State(bytes) => Some(bytes),
                        StateResponse::Unavailable => None,
                    };
                    self.on_state_response(bytes)?;
                }
            },
            BehaviourEvent::Sync(request_response::Event::OutboundFailure { error, .. }) => {
                warn!(%error, "state request failed");
                self.on_state_response(None)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, data: &[u8]) -> Result<(), NodeError> {
        let spec = &self.spec;
        let acceptance = match SignedDelta::from_untrusted(
            data,
            spec.run_id(),
            spec.codec,
            spec.param_count(),
        ) {
            Err(refusal) => {
                warn!(peer = %source, reason = %refusal, "refused a delta");
                self.metrics.refused(refusal.label());
                gossipsub::MessageAcceptance::Reject
            }
            Ok(delta) => match self.rounds.admit(&delta.header) {
                Admission::Accept => {
                    self.metrics.deltas_accepted.inc();
                    let actions = self.rounds.handle(self.now_ms(), Event::PeerDelta(delta));
                    self.apply(actions)?;
                    gossipsub::MessageAcceptance::Accept
                }
                Admission::Equivocation => {
                    warn!(peer = %source, sender = %delta.header.sender.short(), round = delta.header.round, "equivocating delta refused");
                    self.metrics.refused("equivocation");
                    gossipsub::MessageAcceptance::Reject
                }
                other => {
                    self.metrics.ignored(&format!("{other:?}").to_lowercase());
                    gossipsub::MessageAcceptance::Ignore
                }
            },
        };
        if acceptance == gossipsub::MessageAcceptance::Accept {
            // Forward a little later: peers that got the delta at the same time as
            // us have by then told us so (gossipsub's IDONTWANT, sent on receipt),
            // and gossipsub skips them. Without the hold, every node of a small
            // mesh forwards every delta to every other node that already has it.
            let tx = self.forward_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FORWARD_HOLD).await;
                let _ = tx.send((id, source));
            });
        } else {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        }
        Ok(())
    }

    fn outcome(&self) -> NodeOutcome {
        NodeOutcome {
            node: self.me,
            state: self.state.clone(),
            traffic: self.metrics.transport_bytes(),
            rounds_merged: self.rounds_merged,
            refused_deltas: self.metrics.refused_total(),
            published_bytes: self.published_bytes,
        }
    }
}

/// The seed of a node's own data shard: derived from its key, so every node
/// holds different data from the same distribution.
pub fn shard_seed(key: &PublicKey) -> u64 {
    u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"))
}
