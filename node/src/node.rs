//! The node event loop: a driver of the protocol's [`Engine`] with real time,
//! real gossip and a real trainer, which persists every merged round.
//!
//! The engine decides (phases, rounds, state sync); this task turns its
//! outputs into effects (gossip, requests, training jobs, merges, writes) and
//! effects back into inputs. Training runs on a blocking thread, and every
//! other piece of heavy work (merges, checkpoints, encoding and signing our
//! delta, verifying large deltas, snapshots, evaluation) on bounded worker
//! queues ([`workers`]); both report back over channels, so the node keeps
//! gossiping, validating and serving state while it trains and merges.

mod accountability;
mod bounded;
mod busy;
mod control;
mod cut_off;
mod events;
mod leaving;

mod api;
pub use api::{
    auto_evaluate_every, evaluation_cost_share, DataOptions, HarnessHooks, NodeError, NodeEvent, NodeOptions,
    NodeOutcome, RoundReport,
};
pub use busy::{LoopStats, Timing};
pub use control::{ControlError, ControlRequest, NodeControl};
mod privacy;
mod pull;
mod sync;
mod work;
mod workers;

pub(crate) use workers::{encode_and_sign, Signing};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{gossipsub, request_response, PeerId, Swarm};
use starling_protocol::{
    engine::{Input, Note, Output, Phase, RequestId},
    wire::SyncResponse,
    DeltaRules, Engine, EngineConfig, ModelState, OuterOptimizer, PublicKey, RoundConfig, RunSpec,
};
use starling_storage::{SavedDelta, Store, UnreadableOutbox};
use starling_training::{
    datasets::{shard_seed, Shard, TrainData, Workload},
    error::TrainError,
    trainer::Trainer,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::{
    metrics::NodeMetrics,
    net::{self, Behaviour, BehaviourEvent},
    statesync::SnapshotCache,
};

/// How long leaving the run may take: the unsubscribe goes out, then connections close.
const LEAVE_TIME: Duration = Duration::from_millis(400);

/// How long an accepted delta waits before gossipsub may forward it (see [`net::forward_hold`]).
const FORWARD_HOLD: Duration = Duration::from_millis(25);

/// A trainer handed back with the round and the state hash it trained from.
type TrainDone = (Trainer, u64, [u8; 32], Result<work::Trained, TrainError>);

/// A running node.
struct Node {
    options: NodeOptions,
    spec: RunSpec,
    key: SigningKey,
    me: PublicKey,
    /// Shared with the writer worker, which saves checkpoints and the outbox.
    store: Arc<Store>,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    /// The run's equivocation proofs travel here.
    proof_topic: gossipsub::IdentTopic,
    /// The run's leave notices travel here (see `leaving`).
    leave_topic: gossipsub::IdentTopic,
    /// Announcements of deltas whose payload is fetched apart (see `pull`).
    announce_topic: gossipsub::IdentTopic,
    /// Payloads held for peers and fetched from them (see `pull`).
    pulls: pull::Pulls,
    /// A private run's allowed keys; `None` for a public run.
    allowed: Option<BTreeSet<PublicKey>>,
    /// Refused messages per peer key and reason, saved with each merge.
    /// Bound: [`starling_storage::MAX_REFUSAL_RECORDS`] entries; past it the
    /// smallest count gives way.
    refusals: bounded::BoundedCounts<(PublicKey, String)>,
    refusals_dirty: bool,
    /// Refusals by reason. Bound: the reasons are the node's fixed labels.
    refused_by_reason: BTreeMap<String, u64>,
    /// Peers that subscribed to the run, for the scores in the outcome.
    /// Bound: [`bounded::MAX_MET_PEERS`], the oldest met forgotten past it.
    met_peers: bounded::RecentSet<PeerId>,
    /// Peers blocked because a private run does not allow their key. Bound:
    /// [`bounded::MAX_REFUSED_BLOCKS`], the oldest unblocked past it.
    refused_blocks: bounded::RecentSet<PeerId>,
    metrics: NodeMetrics,
    /// How long the event loop stays busy.
    busy: busy::Busy,
    /// The node's protocol: phases, rounds, state sync.
    engine: Engine,
    /// What every delta of the run must satisfy.
    rules: DeltaRules,
    /// The model state, shared with the workers that read it (snapshots,
    /// evaluation, the trainer's start). While a merge has it (`lent`), a
    /// stand-in with its round and lineage and no parameters.
    state: Arc<ModelState>,
    lent: bool,
    /// The state is newer than the newest checkpoint (`checkpoint_every` > 1).
    unsaved: bool,
    /// What the lossy codec has not yet sent of our deltas (error feedback).
    residual: Arc<Vec<f32>>,
    /// The round's aggregated pseudo-gradient, reused from round to round (with the merge while it runs).
    merge_buffer: Vec<f32>,
    outer: OuterOptimizer,
    trainer: Option<Trainer>,
    /// The privacy budget of a run with `[privacy]`.
    privacy: Option<privacy::NodePrivacy>,
    /// The held-out set; built only when the node evaluates (it is the same for every node).
    eval: Option<Arc<TrainData>>,
    train_tx: mpsc::UnboundedSender<TrainDone>,
    /// Accepted gossip waiting [`FORWARD_HOLD`] before gossipsub may forward
    /// it. Bound: [`net::forward_hold::MAX_HELD`] messages, the oldest let go early.
    held_forwards: net::forward_hold::ForwardHold,
    /// The queues of heavy work and their workers.
    workers: workers::Workers,
    /// Merged rounds not yet reported, oldest first (some wait for their evaluation).
    reports: VecDeque<work::PendingReport>,
    /// Peers' offer requests waiting for the snapshot of our state.
    offers: VecDeque<(PublicKey, request_response::ResponseChannel<SyncResponse>)>,
    /// `starling export` requests waiting for the state to come back from a merge.
    model_waiters: Vec<oneshot::Sender<control::ModelSnapshot>>,
    /// The loop has ended: finish the work in hand, start none.
    stopping: bool,
    /// Our delta's wire bytes, encoded by the writer, until the engine publishes it.
    own_bytes: Option<(starling_protocol::DeltaId, bytes::Bytes)>,
    /// Peers subscribed to the run's topic. Bound: the open connections (a
    /// peer leaves it when its last connection closes).
    run_peers: BTreeSet<PeerId>,
    /// The engine's ids of the sync requests in flight. Bound:
    /// [`bounded::MAX_SYNC_REQUESTS`]; each leaves on its answer or its failure
    /// (request-response times every request out).
    sync_requests: HashMap<request_response::OutboundRequestId, RequestId>,
    /// Per-peer rate limits on the offer and chunk requests this node answers.
    /// Bound: [`net::rate_limit::MAX_TRACKED_PEERS`] peers per kind.
    sync_limits: net::rate_limit::RateLimiter,
    /// The states this node serves to syncing peers.
    snapshots: SnapshotCache,
    /// The root of the state whose verified chunks are kept on disk.
    kept_chunks_root: Option<[u8; 32]>,
    /// When the fetch under way chose its state, and how long the last fetch took.
    fetch_clock: (Option<Instant>, Option<std::time::Duration>),
    /// Whether the engine was told it may start (the harness's gate opened).
    start_told: bool,
    /// Since when the node lingers after its last round, so queued gossip gets out.
    draining_since: Option<Instant>,
    started: Instant,
    /// When we last asked the DHT for peers.
    last_lookup: Option<Instant>,
    last_loss: f32,
    /// Our last delta's wire buffer, back once every peer has it, for the next.
    wire_pool: Arc<starling_protocol::wire::pool::BufferPool>,
    rounds_merged: u64,
    /// Bytes of all the delta payloads this node published.
    published_bytes: u64,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    hooks: HarnessHooks,
    /// What `/status` reports beyond the metrics.
    telemetry: control::Telemetry,
    /// Autonat status, relay reservations and hole punching (see [`net::reach`]).
    reach: net::reach::Reachability,
    /// Bootnodes and `--relay` relays, dialled once the listeners are up.
    first_dials: net::first_dials::FirstDials,
    /// The slots kept on the `--relay` relays.
    given_relays: net::given_relays::GivenRelays,
    /// Known peers and their redials, to keep `--target-peers` run peers.
    /// Bound: [`net::upkeep::MAX_KNOWN_PEERS`] peers.
    upkeep: net::upkeep::Upkeep,
    /// The keys [`HarnessHooks::cut_off`] keeps away now.
    cut: BTreeSet<PublicKey>,
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
    shutdown: watch::Receiver<bool>,
) -> Result<NodeOutcome, NodeError> {
    run_node_controlled(options, hooks, events, shutdown, None).await
}

/// [`run_node_with`], answering the requests of a [`NodeControl`] (the HTTP API).
pub async fn run_node_controlled(
    options: NodeOptions,
    hooks: HarnessHooks,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    mut shutdown: watch::Receiver<bool>,
    mut control: Option<mpsc::Receiver<ControlRequest>>,
) -> Result<NodeOutcome, NodeError> {
    let (train_tx, mut train_rx) = mpsc::unbounded_channel();
    let (work_tx, mut work_rx) = mpsc::unbounded_channel();
    let mut node = Node::open(options, hooks, events, train_tx, workers::Workers::new(work_tx))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = tokio::time::interval(busy::WATCHDOG);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = node.swarm.select_next_some() => {
                node.timed(busy::swarm_arm(&event), |node| node.on_swarm_event(event))?
            }
            Some(done) = train_rx.recv() => node.timed("trained", |node| node.on_trained(done))?,
            Some(done) = work_rx.recv() => node.timed(done.done.arm(), |node| node.on_work_done(done))?,
            request = control::next_request(&mut control) => node.timed("control", |node| node.on_control(request))?,
            _ = net::forward_hold::sleep_until(node.held_forwards.next_due()) => {
                node.timed("forward", |node| node.release_forwards())
            }
            _ = tick.tick() => {
                if node.timed("tick", Node::on_tick)? {
                    break;
                }
            }
            due = watchdog.tick() => node.busy.lag(&node.metrics, due),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    info!(round = node.state.round, "shutting down; the last merged round is checkpointed");
                    break;
                }
            }
        }
    }
    node.finish_work(&mut work_rx).await?;
    let saved = node.save_refusals();
    node.leave().await;
    saved?;
    Ok(node.outcome())
}

impl Node {
    fn open(
        options: NodeOptions,
        hooks: HarnessHooks,
        events: Option<mpsc::UnboundedSender<NodeEvent>>,
        train_tx: mpsc::UnboundedSender<TrainDone>,
        workers: workers::Workers,
    ) -> Result<Self, NodeError> {
        let spec = options.spec.clone();
        std::fs::create_dir_all(&options.datadir)
            .map_err(|source| NodeError::Datadir { path: options.datadir.clone(), source })?;
        let mut store = Store::open(&options.datadir)?;
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
        store.set_layout(
            starling_storage::Layout::new(starling_training::init::layout(&spec.model)?)
                .map_err(|reason| NodeError::Data(format!("the model's tensor names: {reason}")))?,
        );
        if let Some(migrated) = store.migrate_legacy(params, spec.max_delta_bytes())? {
            store = store.compact()?;
            info!(
                round = migrated.round,
                unreadable = migrated.unreadable,
                dir = %store.checkpoint_dir().display(),
                "moved the checkpoint out of the database into a file (datadir of an older version)"
            );
        }
        let scan = store.latest_checkpoint(params)?;
        for bad in &scan.skipped {
            warn!(round = bad.round, reason = %bad.reason, "skipping unreadable checkpoint");
        }
        let (state, mut residual) = match scan.checkpoint {
            Some(checkpoint) => {
                info!(round = checkpoint.state.round, "resuming from checkpoint");
                (checkpoint.state, checkpoint.residual)
            }
            None if !scan.skipped.is_empty() => {
                warn!("no checkpoint is readable; starting from genesis and syncing the swarm's state from peers");
                let state = ModelState::initial(starling_training::init::initial_params(&spec)?);
                store.save_checkpoint(&state, &[])?;
                (state, Vec::new())
            }
            None => {
                let state = ModelState::initial(starling_training::init::initial_params(&spec)?);
                store.save_checkpoint(&state, &[])?;
                (state, Vec::new())
            }
        };
        // Our delta of this round, if we published one before a crash: republish
        // it. Any later one (the checkpoint is an older state it installed)
        // still goes to the engine, which then signs nothing up to its round.
        let mut signed_before = None;
        let own_delta = match store.outbox(params, spec.max_delta_bytes()) {
            Ok(Some(SavedDelta { delta, residual: after }))
                if delta.header.round == state.round && delta.header.base == state.lineage =>
            {
                info!(
                    round = state.round,
                    "republishing the delta this node signed for the round before it stopped"
                );
                match after {
                    Ok(Some(after)) => residual = after,
                    // Error feedback then resends what the delta carried of
                    // the old residual: a small bias, never a second delta.
                    Ok(None) => warn!("the residual of that delta was not saved; keeping the checkpoint's"),
                    Err(reason) => {
                        warn!(%reason, "the residual of that delta is unreadable; keeping the checkpoint's")
                    }
                }
                Some(delta)
            }
            Ok(Some(SavedDelta { delta, .. })) if delta.header.round >= state.round => {
                // A checkpoint older than the last delta (`--checkpoint-every`,
                // an unreadable newest checkpoint, an older state installed).
                warn!(
                    round = state.round,
                    signed = delta.header.round,
                    "this node signed a delta for a later round than its checkpoint: it sits out the rounds \
                     up to that one (never signing twice) and follows its peers; alone, it closes them empty at their deadline"
                );
                Some(delta)
            }
            Ok(_) => None,
            Err(UnreadableOutbox { reason, signed: Some(header) }) => {
                // Its record was flushed before the delta went out: it may
                // have been published, so its round is never signed again.
                warn!(
                    %reason,
                    round = state.round,
                    signed = header.round,
                    "the saved own delta is unreadable (its file torn by a machine crash?); this node signed \
                     a delta for that round, so it sits out the rounds up to it (never signing twice)"
                );
                signed_before = Some(*header);
                None
            }
            Err(UnreadableOutbox { reason, signed: None }) => {
                warn!(%reason, "the saved own delta is unreadable; training the round afresh");
                None
            }
        };
        let me = PublicKey::of(&key);
        let mut engine = Engine::new(
            me,
            EngineConfig {
                wait_peers: options.wait_peers,
                wait_timeout_ms: options.wait_timeout.as_millis() as u64,
                stop_at: options.rounds,
                ..EngineConfig::new(RoundConfig::from_spec(&spec.round), params, spec.max_state_bytes())
            },
            state.round,
            state.lineage,
        );
        if let Some(delta) = own_delta {
            engine = engine.with_outbox(delta);
        }
        if let Some(header) = signed_before {
            engine = engine.with_signed(header);
        }
        let mut kept_chunks_root = None;
        match store.sync_chunks() {
            Ok(Some((root, chunks))) => {
                kept_chunks_root = Some(root);
                engine = engine.with_stored_chunks(root, chunks);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the chunks kept from an earlier state fetch; fetching afresh")
            }
        }
        if !spec.allows(&me) {
            return Err(NodeError::NotAllowed { key: me });
        }
        let workload =
            Workload::open_with(&spec, options.data.dataset.as_ref(), options.data.tokenizer.as_deref())
                .map_err(|e| NodeError::Data(e.to_string()))?;
        let shard_seed = shard_seed(&me);
        let shard = options.data.shard.unwrap_or(Shard { index: 0, count: 1 });
        let data = workload.shard(shard, shard_seed).map_err(|e| NodeError::Data(e.to_string()))?;
        let device = options.data.device.clone().unwrap_or(candle_core::Device::Cpu);
        let mut trainer = Trainer::new_on(&spec, data, shard_seed, &device)?;
        let privacy = privacy::open_privacy(&spec, &store, &mut trainer)?;
        let eval = options.evaluate.then(|| Arc::new(workload.eval()));

        let mut metrics = NodeMetrics::default();
        let mut swarm = net::build_swarm(&key, &spec, &options.net, &mut metrics.registry)?;
        let mut listeners = Vec::with_capacity(options.listen.len());
        for address in &options.listen {
            let id = swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Listen { address: address.clone(), reason: e.to_string() })?;
            listeners.push((id, address.clone()));
        }
        let first_dials = net::first_dials::FirstDials::new(
            options.bootnodes.clone(),
            &options.net.reach.relays,
            &listeners,
        );
        let given_relays = net::given_relays::GivenRelays::new(&options.net.reach.relays);
        let upkeep = net::upkeep::Upkeep::new(
            options.net.target_peers,
            &options.bootnodes,
            options.net.reach.relays.iter().filter_map(net::reach::relay_peer),
            &swarm.local_peer_id().to_bytes(),
            Instant::now(),
        );
        let (topic, proof_topic) = net::subscribe_run(&mut swarm, &spec);
        let leave_topic = net::leave_topic(&spec);
        let announce_topic = net::announce_topic(&spec);
        info!(run = %spec.run_id().short(), peer = %swarm.local_peer_id(), round = state.round, "node started");

        for peer in &hooks.expected_peers {
            engine.expect(*peer);
        }
        let mut node = Self {
            outer: OuterOptimizer::from(&spec.outer),
            allowed: spec.allowed(),
            rules: spec.delta_rules(),
            spec,
            key,
            me,
            store: Arc::new(store),
            swarm,
            topic,
            proof_topic,
            leave_topic,
            announce_topic,
            pulls: pull::Pulls::default(),
            refusals: bounded::BoundedCounts::new(starling_storage::MAX_REFUSAL_RECORDS),
            refusals_dirty: false,
            refused_by_reason: BTreeMap::new(),
            met_peers: bounded::RecentSet::new(bounded::MAX_MET_PEERS),
            refused_blocks: bounded::RecentSet::new(bounded::MAX_REFUSED_BLOCKS),
            metrics,
            busy: busy::Busy::default(),
            engine,
            state: Arc::new(state),
            lent: false,
            unsaved: false,
            residual: Arc::new(residual),
            merge_buffer: Vec::new(),
            trainer: Some(trainer),
            privacy,
            eval,
            train_tx,
            held_forwards: net::forward_hold::ForwardHold::new(FORWARD_HOLD, net::forward_hold::MAX_HELD),
            workers,
            reports: VecDeque::new(),
            offers: VecDeque::new(),
            model_waiters: Vec::new(),
            stopping: false,
            own_bytes: None,
            run_peers: BTreeSet::new(),
            sync_requests: HashMap::new(),
            sync_limits: net::rate_limit::RateLimiter::for_state(options.spec.max_state_bytes()),
            snapshots: SnapshotCache::default(),
            kept_chunks_root,
            fetch_clock: (None, None),
            start_told: false,
            draining_since: None,
            started: Instant::now(),
            last_lookup: None,
            last_loss: f32::NAN,
            wire_pool: starling_protocol::wire::pool::BufferPool::new(),
            rounds_merged: 0,
            published_bytes: 0,
            events,
            hooks,
            telemetry: control::Telemetry::default(),
            reach: net::reach::Reachability::new(
                &options.net.reach,
                &options.listen,
                options.net.swarm_key.is_some(),
            ),
            first_dials,
            given_relays,
            upkeep,
            cut: BTreeSet::new(),
            options,
        };
        node.load_accountability()?;
        if let Some(epsilon) = node.epsilon() {
            node.metrics.privacy_epsilon.set(epsilon);
        }
        Ok(node)
    }

    /// Runs one handler of the event loop's arm `arm`, timing it.
    fn timed<T>(&mut self, arm: &'static str, handler: impl FnOnce(&mut Self) -> T) -> T {
        let since = busy::Since::now();
        let result = handler(self);
        self.busy.handler(&self.metrics, arm, since);
        result
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Periodic work. Returns true when the node should stop.
    fn on_tick(&mut self) -> Result<bool, NodeError> {
        self.first_dials.dial_when_ready(&mut self.swarm);
        self.given_relays.retry_when_due(&mut self.swarm);
        if let Some(since) = self.draining_since {
            return Ok(!self.hooks.linger_until_shutdown && since.elapsed() >= Duration::from_secs(2));
        }
        self.apply_cut_off();
        let now = Instant::now();
        self.upkeep.redial(&mut self.swarm, self.run_peers.len(), now);
        self.sync_limits.prune(now);
        if self.engine.phase() == Phase::Gathering {
            // Ask the peers we know whom they know, until enough are here: a peer
            // that joined our bootnode after our first lookup is found by the next.
            if self.run_peers.len() < self.options.wait_peers
                && self.last_lookup.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.last_lookup = Some(Instant::now());
                let _ = self.swarm.behaviour_mut().kad.bootstrap();
            }
            if self.hooks.holds_start() {
                return Ok(false);
            }
            if !self.start_told {
                self.start_told = true;
                self.drive(Input::Start)?;
            }
        }
        self.drive(Input::Timer)?;
        Ok(false)
    }

    /// Hands the engine one input and carries out what it asks.
    fn drive(&mut self, input: Input) -> Result<(), NodeError> {
        let outputs = self.engine.handle(self.now_ms(), input);
        self.apply(outputs)
    }

    /// Carries out the engine's outputs, in order.
    fn apply(&mut self, outputs: Vec<Output>) -> Result<(), NodeError> {
        self.publish_equivocations()?;
        for output in outputs {
            match output {
                Output::Publish(delta) => {
                    let bytes = match self.own_bytes.take() {
                        Some((id, bytes)) if id == delta.id() => bytes,
                        _ => delta.to_bytes().into(),
                    };
                    self.publish_delta(&delta, bytes);
                }
                Output::Train { round, base } => {
                    if !self.may_contribute() {
                        continue;
                    }
                    self.start_training(round, base);
                }
                // Input::Merged follows when the merge worker hands the state back.
                Output::Merge { round, deltas, reason } => self.start_merge(round, deltas, reason),
                Output::Request { peer, id, request } => {
                    if let Some(failed) = self.send_sync(peer, Some(id), request) {
                        self.drive(failed)?;
                    }
                }
                Output::Notify { peer, request } => {
                    self.send_sync(peer, None, request);
                }
                // Input::StateDecoded follows when a verify worker has decoded it.
                Output::DecodeState(decode) => {
                    self.workers.submit(workers::Job::Decode(decode), &self.metrics);
                }
                Output::Install { state, from, expected_from, deltas } => {
                    self.install(state, from, expected_from, deltas)?;
                }
                Output::Deltas(deltas) => self.take_offered(deltas)?,
                // The 100 ms tick hands the engine its timers.
                Output::Timer(_) => {}
                Output::Finished => {
                    info!(round = self.state.round, "reached the requested number of rounds");
                    self.draining_since = Some(Instant::now());
                }
                Output::Note(note) => {
                    match note {
                        // From the first choice: a fetch that stalls and resumes counts whole.
                        Note::Fetching { .. } if self.fetch_clock.0.is_none() => {
                            self.fetch_clock = (Some(Instant::now()), None)
                        }
                        Note::Fetched { .. } => {
                            self.fetch_clock = (None, self.fetch_clock.0.map(|t| t.elapsed()))
                        }
                        _ => {}
                    }
                    self.log_note(note)
                }
            }
        }
        self.publish_equivocations()
    }

    /// Leaves the run politely, within [`LEAVE_TIME`]: flushes the store,
    /// gossips a signed leave notice (peers that know us only through relayed
    /// deltas stop expecting us from the round it names), unsubscribes from
    /// the run's topic (direct peers drop us from the round's expected set on
    /// receipt, rather than wait for a deadline), lets gossip send both for
    /// half of it, then closes every connection.
    async fn leave(&mut self) {
        if let Err(e) = self.store.flush() {
            warn!(error = %e, "flushing the datadir on shutdown failed");
        }
        self.publish_leave_notice();
        let _ = self.swarm.behaviour_mut().gossipsub.unsubscribe(&self.topic);
        self.drive_for(LEAVE_TIME / 2).await;
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.drive_for(LEAVE_TIME / 2).await;
        info!(round = self.state.round, "left the run");
    }

    /// Lets the swarm send what it has queued for `time`, handling nothing else.
    async fn drive_for(&mut self, time: Duration) {
        let until = tokio::time::sleep(time);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = self.swarm.select_next_some() => {}
                _ = &mut until => return,
            }
        }
    }

    fn outcome(&self) -> NodeOutcome {
        NodeOutcome {
            node: self.me,
            state: ModelState::clone(&self.state),
            traffic: self.metrics.transport_bytes(),
            rounds_merged: self.rounds_merged,
            refused_deltas: self.metrics.refused_total(),
            published_bytes: self.published_bytes,
            pulled_bytes: self.metrics.payload_bytes_pulled.get(),
            refused_by_reason: self.refused_by_reason.clone(),
            banned: self.engine.rounds().banned().iter().copied().collect(),
            peer_scores: self.peer_scores(),
            loop_stats: self.busy.stats(),
        }
    }
}
