//! The engine: one node's whole protocol as a sans-IO state machine.
//!
//! A driver (the real node, or netsim's virtual mode) feeds it timestamped
//! [`Input`]s (a peer connected or left, a validated delta arrived, training
//! or a merge finished, a sync answer came back, a timer fired) and carries
//! out the [`Output`]s it returns (publish, train from a state, merge these
//! deltas, send a request, install a state, wake me at T). Inbound sync
//! requests are answered by [`Engine::serve`]. There is no clock, no I/O, no
//! async and no thread in here: what the simulator shows of this code is what
//! the real node does.
//!
//! The engine owns:
//! - the node's **phase**: gathering peers before the first round, probing
//!   the swarm for a newer state, running, done;
//! - the **round state** ([`RoundState`]): who is expected when, quorum and
//!   deadlines, equivocation, replay, divergence;
//! - **state sync** ([`fetch`]): offers asked of the peers reached, the root a
//!   strict majority of them announce, chunks fetched from every agreeing peer
//!   and verified on arrival, install, and retries;
//! - **lineage evidence** ([`lineage`]): the lineage each peer's latest delta,
//!   late ones included, was trained from, against our own in its round; a
//!   node most of whose peers are elsewhere syncs, even when it runs ahead;
//! - the **decisions around training and merging**: when to train, whether a
//!   finished training job is still wanted, when a merge may run.
//!
//! What it leaves to the driver is every effect and everything heavy: the
//! model and its parameters, encoding and signing, validating signatures,
//! aggregation and the outer step, snapshots and chunks, storage, and the
//! network.

pub mod fetch;
mod joining;
mod leaving;
mod lineage;
mod sync;

use std::collections::BTreeSet;

use crate::accountability::EquivocationProof;
use crate::chunks::ChunkError;
use crate::delta::{DeltaHeader, SignedDelta};
use crate::keys::PublicKey;
use crate::round::{self, Admission, CloseReason, RoundConfig, RoundState};
use crate::snapshot::ModelState;
use crate::wire::{SyncRequest, SyncResponse};

use fetch::StateFetch;
pub use fetch::{required_support, FetchConfig, StateDecode};
use joining::Joining;
pub use joining::SYNCING;
use lineage::Lineages;
pub use lineage::LINEAGE_ROUNDS;

/// The id of a sync request this engine sent; the driver maps its own ids to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Why a node syncs; it decides whether an offered state is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReason {
    /// Before the first round: is the run further along than our checkpoint?
    Probe,
    /// A peer is rounds ahead of us.
    Behind,
    /// Most of a round's deltas came from a state other than ours.
    Diverged,
}

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for enough peers to start (the clock starts at [`Input::Start`]).
    Gathering,
    /// Asking the peers, before the first round, whether the run is further along.
    Probing,
    /// Training and merging rounds.
    Running,
    /// Reached the round limit: no more training, still serving peers.
    Done,
}

/// Tunables of the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub round: RoundConfig,
    pub fetch: FetchConfig,
    /// Run peers to wait for before the first round.
    pub wait_peers: usize,
    /// How long to wait for them before starting with fewer.
    pub wait_timeout_ms: u64,
    /// Stop training once the state reaches this round.
    pub stop_at: Option<u64>,
    /// Parameters of the model (bounds what a fetched state may be).
    pub param_count: usize,
    /// The largest encoded state a peer may offer.
    pub max_state_bytes: usize,
    /// Ask the peers for a newer state before the first round. A node that
    /// knows it starts at genesis with its whole swarm (netsim's first nodes)
    /// may skip it; a real node never knows that.
    pub probe_on_start: bool,
    /// After a sync found no agreement, how long until it asks again.
    pub sync_retry_ms: u64,
    /// Probes without agreement after which the node starts on its own state.
    pub max_failed_probes: u32,
    /// Probes that found a majority of peers ahead but not agreeing (one merge
    /// apart as they answered) after which the node starts on its own state
    /// all the same, to catch up as a running node that is behind.
    pub max_probes_ahead: u32,
}

impl EngineConfig {
    /// The defaults for a model of `param_count` parameters under `round`.
    pub fn new(round: RoundConfig, param_count: usize, max_state_bytes: usize) -> Self {
        Self {
            round,
            fetch: FetchConfig::default(),
            wait_peers: 0,
            wait_timeout_ms: 0,
            stop_at: None,
            param_count,
            max_state_bytes,
            probe_on_start: true,
            sync_retry_ms: 500,
            max_failed_probes: 5,
            max_probes_ahead: 20,
        }
    }
}

/// Something that happened, as the node saw it.
#[derive(Clone, Debug)]
pub enum Input {
    /// The node may start: gathering counts its wait from now.
    Start,
    /// A peer of this run connected (subscribed to the run).
    PeerConnected(PublicKey),
    /// A peer of this run went away.
    PeerLeft(PublicKey),
    /// A peer's delta that passed [`SignedDelta::validate`] and that
    /// [`Engine::admit`] accepted, found [`Admission::Stale`] (its lineage still
    /// counts as evidence), or took for an [`Admission::Equivocation`].
    PeerDelta(SignedDelta),
    /// A peer's delta (or announcement) whose signature checked out and that
    /// [`Engine::admit`] found [`Admission::Replayed`]: its sender is not
    /// waited for in that round (see [`round::Event::Replayed`]).
    PeerReplayed(DeltaHeader),
    /// The training job of [`Output::Train`] finished: `delta` is our signed
    /// delta, `None` when it failed or was not wanted any more
    /// (see [`Engine::wants_trained`]).
    Trained { round: u64, base: [u8; 32], delta: Option<SignedDelta> },
    /// The driver applied [`Output::Merge`] of `round`: its state is now at
    /// `round + 1` with this lineage.
    Merged { round: u64, lineage: [u8; 32] },
    /// The answer to request `id`, or `None` when it failed.
    SyncResponse { id: RequestId, response: Option<SyncResponse> },
    /// The driver decoded the state of [`Output::DecodeState`] whose root is `root`.
    StateDecoded { root: [u8; 32], result: Result<ModelState, ChunkError> },
    /// A timer of [`Output::Timer`] (or any later instant) came.
    Timer,
    /// The node stops (`true`) or resumes (`false`) contributing deltas of its own.
    Paused(bool),
    /// The node sits the current round out (its privacy budget is spent).
    Abstain,
    /// This key is banned for the run (a verified proof, or a ban reloaded).
    Ban(PublicKey),
    /// The node aggregates `round` in a group with these members.
    Group { round: u64, members: Vec<PublicKey> },
    /// A peer's verified [`crate::LeaveNotice`]: it contributes nothing from
    /// round `from` on (see [`leaving`]).
    PeerLeaving { peer: PublicKey, from: u64 },
}

/// Something the driver must do.
#[allow(clippy::large_enum_variant)] // Outputs live for one call.
#[derive(Clone, Debug)]
pub enum Output {
    /// Gossip our delta.
    Publish(SignedDelta),
    /// Train the current round from the state the driver holds (`round`, `base`).
    Train { round: u64, base: [u8; 32] },
    /// Merge these deltas (sorted by sender) into the state of `round`; then
    /// report [`Input::Merged`]. No training starts until then.
    Merge { round: u64, deltas: Vec<SignedDelta>, reason: CloseReason },
    /// Send a sync request; its answer comes back as [`Input::SyncResponse`].
    Request { peer: PublicKey, id: RequestId, request: SyncRequest },
    /// Send a sync request whose answer nobody waits for (a joining notice).
    Notify { peer: PublicKey, request: SyncRequest },
    /// Decode this fetched state off the event loop (it copies and decodes the
    /// whole state), then hand the result in as [`Input::StateDecoded`].
    DecodeState(StateDecode),
    /// Replace the state with this verified one, which a majority of the peers
    /// reached announced (its round may be older than ours: a diverged node
    /// then observes until past the last round it signed). `deltas` are the
    /// agreeing peers' deltas of its round: the driver validates each and
    /// hands it in as [`Input::PeerDelta`].
    Install { state: ModelState, from: u64, expected_from: u64, deltas: Vec<SignedDelta> },
    /// Peers' deltas of the round the node is in, which it may never see
    /// gossiped (a node restarted in its swarm's round comes back after they
    /// were published): the offers of a probe that found the swarm at our own
    /// state carry them. The driver validates each and hands in those the
    /// engine admits as [`Input::PeerDelta`], as for [`Output::Install`].
    Deltas(Vec<SignedDelta>),
    /// Hand in [`Input::Timer`] at this time (ms) or soon after.
    Timer(u64),
    /// The state reached the round limit.
    Finished,
    /// Something worth telling the operator.
    Note(Note),
}

/// What the engine observed, for logs and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// Starting with fewer peers than asked to wait for.
    StartingShort { peers: usize, wanted: usize },
    /// A peer is rounds ahead: syncing.
    Behind { by: u64 },
    /// Most of a round's deltas came from another state: syncing.
    Diverged { round: u64 },
    /// `elsewhere` of our `peers` connected peers last sent deltas trained
    /// from lineages other than ours (late ones included), more than half of
    /// them and us: syncing.
    Outnumbered { round: u64, elsewhere: usize, peers: usize },
    /// A closing round left out `left_out` deltas trained from a lineage
    /// other than ours in that round: evidence of divergence, not input.
    OtherLineage { round: u64, left_out: usize },
    /// Offers asked of this many peers.
    Asking { reason: SyncReason, peers: usize },
    /// No root had the support of a strict majority of the peers reached.
    NoAgreement { offers: usize, reached: usize, required: usize },
    /// The agreed state is not newer than ours.
    NotNewer { round: u64 },
    /// A peer's offer was refused.
    OfferRefused { peer: PublicKey, reason: String },
    /// Fetching the state a majority announce, from `peers` of them.
    Fetching { round: u64, root: [u8; 32], peers: usize, reached: usize, chunks: usize, kept: usize },
    /// A chunk did not match the agreed state: its sender is no source any more.
    BadChunk { peer: PublicKey, reason: String },
    /// A peer did not serve a chunk: it is no source any more.
    SourceDropped { peer: PublicKey, index: u32 },
    /// No source is left; the chunks held are kept for the next try.
    Stalled { held: usize, of: usize },
    /// The state is whole and verified.
    Fetched { round: u64, chunks: usize },
    /// The assembled state does not decode.
    Undecodable { reason: String },
    /// A fetched state is no longer ahead of ours (rounds moved on meanwhile).
    Outdated { round: u64 },
}

/// How an inbound sync request is to be answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Offer the state the driver holds, with these (see [`StateOffer`](crate::StateOffer)).
    Offer { expected_from: u64, deltas: Vec<SignedDelta>, expected: Vec<PublicKey> },
    /// Serve chunk `index` of the state with this root, if the driver still holds it.
    Chunk { root: [u8; 32], index: u32 },
    /// A joining notice taken note of.
    Noted,
    /// Not serving (still gathering).
    Unavailable,
}

/// A fetched state waiting for a merge in flight to finish.
struct Ready {
    state: ModelState,
    agreed: fetch::Agreed,
}

/// One node's protocol.
pub struct Engine {
    me: PublicKey,
    config: EngineConfig,
    phase: Phase,
    /// When gathering began (`None` until [`Input::Start`]).
    gathering_since: Option<u64>,
    rounds: RoundState,
    /// The round and lineage of the state the driver holds.
    round: u64,
    lineage: [u8; 32],
    /// Connected peers of the run.
    peers: BTreeSet<PublicKey>,
    fetch: StateFetch,
    /// When to ask for offers again after a sync found no agreement, and why.
    retry: Option<(u64, SyncReason)>,
    failed_probes: u32,
    probes_ahead: u32,
    /// What we told peers of our start, and what peers told us before they connected.
    joining: Joining,
    /// The training job in flight: the round and base it trains from.
    training: Option<(u64, [u8; 32])>,
    /// The round being merged by the driver.
    merging: Option<u64>,
    /// A fetched state waiting for the merge in flight.
    ready: Option<Ready>,
    /// Our own delta of the current round saved before a restart, to publish again as is.
    outbox: Option<SignedDelta>,
    /// The last timer handed out, so each is handed out once.
    timer: Option<u64>,
    /// Our lineage by round and the lineage of each peer's latest delta.
    lineages: Lineages,
    /// Rounds aggregated in groups: states differ by design, no lineage evidence.
    grouped: bool,
    /// When lineage evidence last started a sync (they are spaced by `sync_retry_ms`).
    outnumbered_at: Option<u64>,
    out: Vec<Output>,
}

impl Engine {
    /// A node `me` whose state is at `round` with `lineage`.
    pub fn new(me: PublicKey, config: EngineConfig, round: u64, lineage: [u8; 32]) -> Self {
        Self {
            rounds: RoundState::new(me, config.round.clone(), round),
            fetch: StateFetch::new(config.fetch.clone(), config.param_count, config.max_state_bytes),
            me,
            config,
            phase: Phase::Gathering,
            gathering_since: None,
            round,
            lineage,
            peers: BTreeSet::new(),
            retry: None,
            failed_probes: 0,
            probes_ahead: 0,
            joining: Joining::default(),
            training: None,
            merging: None,
            ready: None,
            outbox: None,
            timer: None,
            lineages: Lineages::new(round, lineage),
            grouped: false,
            outnumbered_at: None,
            out: Vec::new(),
        }
    }

    /// The last delta we signed before a restart. One of the current round
    /// trained from our state is published again as is; any other (our
    /// checkpoint is older than it, or of another lineage) makes the node
    /// observe until past its round, so that it never signs a second delta
    /// for a round.
    pub fn with_outbox(mut self, delta: SignedDelta) -> Self {
        if delta.header.round == self.round && delta.header.base == self.lineage {
            self.outbox = Some(delta);
            self
        } else {
            self.with_signed(delta.header)
        }
    }

    /// A delta this node signed before it restarted, known by its header alone
    /// (its saved bytes are lost): it signs nothing more for that round or any before.
    pub fn with_signed(mut self, header: DeltaHeader) -> Self {
        if header.round >= self.round {
            self.rounds.signed_before(header);
        }
        self
    }

    /// Chunks an earlier run kept on disk; used if the swarm still agrees on that root.
    pub fn with_stored_chunks(mut self, root: [u8; 32], chunks: Vec<(u32, Vec<u8>)>) -> Self {
        self.fetch.with_stored_chunks(root, chunks);
        self
    }

    /// Expects `peer` from the first round as if it were connected (a roster
    /// known in advance), without counting it as a connected run peer.
    pub fn expect(&mut self, peer: PublicKey) {
        let _ = self.rounds.handle(0, round::Event::PeerConnected(peer));
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The round state machine, for queries.
    pub fn rounds(&self) -> &RoundState {
        &self.rounds
    }

    /// The round of the state the driver holds.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether a state sync is under way.
    pub fn syncing(&self) -> bool {
        !self.fetch.is_idle()
    }

    /// Chunks verified since the last call, to keep on disk: (root, index, bytes).
    pub fn take_fresh_chunks(&mut self) -> Vec<([u8; 32], u32, Vec<u8>)> {
        self.fetch.take_fresh_chunks()
    }

    /// Equivocations caught since the last call (their keys are banned).
    pub fn take_equivocations(&mut self) -> Vec<EquivocationProof> {
        self.rounds.take_equivocations()
    }

    /// Whether a validated peer delta is wanted. Pure.
    pub fn admit(&self, header: &DeltaHeader) -> Admission {
        self.rounds.admit(header)
    }

    /// Whether an accepted peer delta is one to pass on to the mesh. One of
    /// a round more than one past ours is kept for its round (within the
    /// future-round budget) but not forwarded: the nodes at its round forward
    /// it to one another, a lagging node learns it is behind from its
    /// arrival, and a flood of valid deltas for far rounds (from keys anyone
    /// can make) goes no further than the nodes it is sent to, nor sits in
    /// their gossip caches.
    pub fn relays(&self, header: &DeltaHeader) -> bool {
        header.round <= self.round.saturating_add(1)
    }

    /// Whether the result of training `round` from `base` is still wanted:
    /// the driver asks before it encodes (which moves the codec's error
    /// feedback) and signs.
    pub fn wants_trained(&self, round: u64, base: [u8; 32]) -> bool {
        round == self.round && base == self.lineage && self.merging.is_none() && !self.rounds.paused()
    }

    fn done(&self) -> bool {
        self.config.stop_at.is_some_and(|r| self.round >= r)
    }

    /// Advances the engine by one input at time `now` (ms).
    pub fn handle(&mut self, now: u64, input: Input) -> Vec<Output> {
        match input {
            Input::Start => {
                if self.phase == Phase::Gathering && self.gathering_since.is_none() {
                    self.gathering_since = Some(now);
                }
            }
            Input::PeerConnected(peer) => {
                if peer != self.me && self.peers.insert(peer) {
                    self.round_event(now, round::Event::PeerConnected(peer));
                    if let Some(from) = self.joining.connected(&peer) {
                        self.round_event(now, round::Event::PeerStarts { peer, from });
                    }
                    if self.phase == Phase::Probing && self.joining.told_syncing() {
                        self.out
                            .push(Output::Notify { peer, request: SyncRequest::Joining { from: SYNCING } });
                    }
                    let step = self.fetch.peer_joined(peer);
                    self.on_fetch(now, step);
                }
            }
            Input::PeerLeft(peer) => {
                self.joining.left(&peer);
                if self.peers.remove(&peer) {
                    self.lineages.left(&peer);
                    self.round_event(now, round::Event::PeerDisconnected(peer));
                }
                let mut notes = Vec::new();
                let wanted = self.wanted();
                let step = self.fetch.peer_left(&peer, &mut notes, wanted);
                self.notes(notes);
                if let Some(step) = step {
                    self.on_fetch(now, step);
                }
            }
            Input::PeerDelta(delta) => {
                let (sender, round, base) = (delta.header.sender, delta.header.round, delta.header.base);
                self.round_event(now, round::Event::PeerDelta(delta));
                if !self.grouped && self.lineages.at(round).is_some_and(|own| own != base) {
                    self.rounds.discount(&sender, round);
                }
                self.weigh_lineage(now, sender, round, base);
            }
            Input::PeerReplayed(header) => self.round_event(now, round::Event::Replayed(header)),
            Input::Trained { round, base, delta } => {
                self.training = None;
                match delta {
                    Some(delta) if self.wants_trained(round, base) && delta.header.round == round => {
                        self.round_event(now, round::Event::LocalDelta(delta));
                    }
                    _ => self.maybe_train(now),
                }
            }
            Input::Merged { round, lineage } => {
                if self.merging == Some(round) {
                    self.merging = None;
                    self.round = round + 1;
                    self.lineage = lineage;
                    self.lineages.merged(self.round, lineage);
                    if let Some(ready) = self.ready.take() {
                        self.finish_fetch(now, ready);
                    }
                    if self.done() && self.phase != Phase::Done {
                        self.phase = Phase::Done;
                        self.out.push(Output::Finished);
                    }
                    self.maybe_train(now);
                }
            }
            Input::SyncResponse { id, response } => {
                let mut notes = Vec::new();
                let wanted = self.wanted();
                let step = self.fetch.on_response(id, response, &mut notes, wanted);
                self.notes(notes);
                if let Some(step) = step {
                    self.on_fetch(now, step);
                }
            }
            Input::StateDecoded { root, result } => {
                let mut notes = Vec::new();
                let step = self.fetch.on_decoded(root, result, &mut notes);
                self.notes(notes);
                if let Some(step) = step {
                    self.on_fetch(now, step);
                }
            }
            Input::Timer => self.on_timer(now),
            Input::Paused(paused) => {
                self.round_event(now, round::Event::Paused(paused));
                if !paused {
                    self.maybe_train(now);
                }
            }
            Input::Abstain => {
                self.training = None;
                self.round_event(now, round::Event::Abstain);
            }
            Input::Ban(key) => {
                self.lineages.left(&key);
                self.round_event(now, round::Event::Ban(key))
            }
            Input::Group { round, members } => {
                self.grouped = true;
                self.round_event(now, round::Event::Group { round, members })
            }
            Input::PeerLeaving { peer, from } => self.on_peer_leaving(now, peer, from),
        }
        self.check_gathering(now);
        self.schedule();
        std::mem::take(&mut self.out)
    }

    /// How to answer `peer`'s sync request; outputs it causes come with the next [`Engine::handle`].
    pub fn serve(&mut self, now: u64, peer: PublicKey, request: &SyncRequest) -> Answer {
        match *request {
            SyncRequest::Joining { from } => {
                if self.peers.contains(&peer) {
                    if self.joining.heard(peer, from) {
                        self.round_event(now, round::Event::PeerStarts { peer, from });
                    }
                } else {
                    self.joining.early(peer, from);
                }
                Answer::Noted
            }
            _ if self.phase == Phase::Gathering => Answer::Unavailable,
            SyncRequest::Offer => Answer::Offer {
                expected_from: self.rounds.expected_from(&peer),
                deltas: self.rounds.current_deltas(),
                expected: self.rounds.active().into_iter().filter(|k| *k != peer).collect(),
            },
            SyncRequest::Chunk { root, index } => Answer::Chunk { root, index },
        }
    }

    /// Outputs produced outside [`Engine::handle`] (by [`Engine::serve`]).
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.schedule();
        std::mem::take(&mut self.out)
    }

    fn notes(&mut self, notes: Vec<Note>) {
        self.out.extend(notes.into_iter().map(Output::Note));
    }

    /// The earliest instant the engine wants a [`Input::Timer`].
    pub fn next_timer(&self) -> Option<u64> {
        let gathering = match (self.phase, self.gathering_since) {
            (Phase::Gathering, Some(since)) => Some(since.saturating_add(self.config.wait_timeout_ms)),
            _ => None,
        };
        let rounds =
            matches!(self.phase, Phase::Probing | Phase::Running).then(|| self.rounds.wake_at()).flatten();
        [gathering, rounds, self.fetch.offers_due(), self.retry.map(|(at, _)| at)].into_iter().flatten().min()
    }

    fn schedule(&mut self) {
        let next = self.next_timer();
        if let Some(at) = next.filter(|_| next != self.timer) {
            self.timer = next;
            self.out.push(Output::Timer(at));
        }
    }

    fn on_timer(&mut self, now: u64) {
        if let Some((at, reason)) = self.retry {
            if now >= at && self.fetch.is_idle() {
                self.retry = None;
                self.start_sync(now, reason);
            }
        }
        let mut notes = Vec::new();
        let wanted = self.wanted();
        let step = self.fetch.on_timer(now, &mut notes, wanted);
        self.notes(notes);
        if let Some(step) = step {
            self.on_fetch(now, step);
        }
        if matches!(self.phase, Phase::Probing | Phase::Running) {
            self.round_event(now, round::Event::Tick);
        }
        // A timer that came is spent: the next one is handed out again.
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
        }
    }

    fn check_gathering(&mut self, now: u64) {
        let (Phase::Gathering, Some(since)) = (self.phase, self.gathering_since) else { return };
        let enough = self.peers.len() >= self.config.wait_peers;
        if !enough && now.saturating_sub(since) < self.config.wait_timeout_ms {
            return;
        }
        if !enough {
            self.out.push(Output::Note(Note::StartingShort {
                peers: self.peers.len(),
                wanted: self.config.wait_peers,
            }));
        }
        if self.done() {
            self.phase = Phase::Done;
            self.out.push(Output::Finished);
        } else if self.peers.is_empty() || !self.config.probe_on_start {
            self.start_running(now);
        } else {
            self.phase = Phase::Probing;
            self.start_sync(now, SyncReason::Probe);
        }
    }

    fn start_running(&mut self, now: u64) {
        self.phase = Phase::Running;
        self.retry = None;
        // Starts the clock of a round a lone observer sits out (see `RoundState`).
        self.round_event(now, round::Event::Tick);
        if self.joining.take_owed() {
            // We said we were syncing: now say from when to expect us.
            let from = if self.rounds.observing() { self.rounds.contributes_from() } else { self.round };
            self.notify_peers(from);
        }
        self.maybe_train(now);
    }

    /// Starts training the current round if the node wants to and nothing is in flight.
    fn maybe_train(&mut self, now: u64) {
        if self.phase != Phase::Running
            || self.done()
            || self.training.is_some()
            || self.merging.is_some()
            || !self.rounds.wants_local()
        {
            return;
        }
        if let Some(delta) = self.outbox.take() {
            if delta.header.round == self.round && delta.header.base == self.lineage {
                self.round_event(now, round::Event::LocalDelta(delta));
                return;
            }
        }
        self.training = Some((self.round, self.lineage));
        self.out.push(Output::Train { round: self.round, base: self.lineage });
    }

    /// Feeds the round state machine and carries out what it asks.
    fn round_event(&mut self, now: u64, event: round::Event) {
        let actions = self.rounds.handle(now, event);
        for action in actions {
            match action {
                round::Action::Publish(delta) => self.out.push(Output::Publish(delta)),
                round::Action::Merge { round, mut deltas, reason } => {
                    self.keep_own_lineage(round, &mut deltas);
                    self.merging = Some(round);
                    self.out.push(Output::Merge { round, deltas, reason });
                }
                // Before the first round the probe answers whether we are behind;
                // a delta from the future must not start a sync on the word of
                // whoever happens to be connected while we gather.
                round::Action::RequestState { round, .. } if self.phase == Phase::Running => {
                    self.out.push(Output::Note(Note::Behind { by: round.saturating_sub(self.round) }));
                    self.start_sync(now, SyncReason::Behind);
                }
                round::Action::Diverged { round, .. } if self.phase == Phase::Running => {
                    self.out.push(Output::Note(Note::Diverged { round }));
                    self.start_sync(now, SyncReason::Diverged);
                }
                round::Action::RequestState { .. } | round::Action::Diverged { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
