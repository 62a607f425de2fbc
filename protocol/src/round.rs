//! `RoundState`: the round state machine, sans-IO.
//!
//! A node feeds it timestamped [`Event`]s (its own delta is ready, a validated
//! peer delta arrived, a peer joined or left, time passed, state was synced)
//! and carries out the [`Action`]s it returns (publish, merge, request state).
//! It collects the current round's deltas until a quorum of recently active
//! nodes has contributed or the deadline passes, buffers deltas for future
//! rounds (within a byte budget), drops stale ones and ignores duplicates. Deltas it hands out for a
//! merge are sorted by sender key, the canonical merge order.
//!
//! Who is expected in a round is fixed by a rule every node applies alike, so
//! that nodes merge the same set. Peers that are there before a node's first
//! round are expected from the start. A peer that connects to a running node
//! during round r is expected from round r + 2: by then it has had a whole round
//! to fetch the state of r + 1 and train on it. A joining node learns that round
//! from the peer it syncs from and observes until then, rather than contribute
//! to a round whose earlier deltas it never saw: it does not train, but it
//! merges its peers' deltas as a paused node does (its deadline counting from
//! the round's first delta), so its state keeps up with theirs and what it
//! announces to syncing nodes is the swarm's; a delta of a later round that
//! overtakes it makes it sync again. Only expected nodes' deltas count toward the quorum, so an early
//! delta from a newcomer cannot close a round before the nodes it waits for.
//!
//! Agreement is checked, not assumed. Each delta carries the lineage of the
//! state it was trained from (a hash chain of the merges that made it). When a round closes, the node looks at the bases of the
//! deltas it merged: if more of them (ties: the smaller hash) share a base
//! other than its own, it has drifted (it missed a delta, or sat on the other
//! side of a partition) and asks a peer holding the majority's state for it.
//! After a partition heals, the smaller side thus adopts the larger side's
//! state within a round or two, and the swarm agrees again.
//!
//! Large swarms can aggregate in small groups instead of all-to-all (see
//! [`crate::group`]): the driver tells the state machine the group of a round
//! ([`Event::Group`]); only that group's deltas are expected and merged, and the
//! agreement check is off, since groups that rotate hold different states by
//! design and mix them over the rounds.
//!
//! Equivocation is caught here: a second, different, validly signed delta from
//! a sender that already has one in a round bans that sender's key. A banned
//! key's deltas are refused from then on ([`Admission::Banned`]), the ones it
//! has waiting in unmerged rounds are dropped, and it is no longer expected.
//! The proof goes to the driver through [`RoundState::take_equivocations`], to
//! be stored and gossiped; proofs from peers and bans reloaded after a restart
//! come back in as [`Event::Ban`].
//!
//! A node can pause ([`Event::Paused`]): it stops contributing deltas of its
//! own but keeps collecting and merging its peers', so it follows the run and
//! can resume at once. Without its own publish time to count the deadline
//! from, a paused node counts it from the arrival of the round's first delta.
//!
//! Everything the network feeds is bounded: each field of [`RoundState`]
//! states its bound, in terms of the [`RoundConfig`] that enforces it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::accountability::EquivocationProof;
use crate::delta::{DeltaHeader, SignedDelta};
use crate::keys::PublicKey;
use crate::spec::RoundSpec;

/// Tunables of the state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundConfig {
    /// Fraction of active nodes (self included) whose deltas close a round early.
    pub quorum: f64,
    /// How long to wait for peers after publishing our own delta.
    pub deadline_ms: u64,
    /// How many distinct future rounds are buffered at most.
    pub buffered_rounds: usize,
    /// Most peer deltas kept, and peer payloads remembered, for one round
    /// (bounds memory against floods of keys).
    pub max_deltas_per_round: usize,
    /// A node whose delta arrived within this many rounds counts as active.
    pub activity_rounds: u64,
    /// A peer this many rounds ahead means we are behind and should sync.
    pub sync_lag_rounds: u64,
    /// Least time between two state requests.
    pub sync_retry_ms: u64,
    /// After quorum, how long to keep listening before closing, so that a
    /// second delta one key signed for the round (equivocation), which gossip
    /// brings a hop or two behind the first, surfaces before anything is merged.
    pub settle_ms: u64,
    /// For how many rounds a payload is remembered: a delta whose payload
    /// equals one already seen in another round or from another key (an old
    /// delta re-signed as new) is refused as [`Admission::Replayed`].
    pub replay_window_rounds: u64,
    /// Most peers tracked as connected, and most tracked as recently active
    /// (bounds memory against floods of keys). An honest swarm stays well
    /// below it: a round takes at most `max_deltas_per_round` deltas anyway.
    pub max_peers: usize,
    /// Most banned keys remembered. Past it, a new ban still drops the key's
    /// unmerged deltas and stops expecting it, but its later deltas are judged
    /// like a fresh key's (keys cost an attacker nothing, so forgetting one
    /// gives it nothing a new key would not).
    pub max_banned: usize,
    /// Most bytes held for deltas of future rounds, each charged its payload
    /// plus a fixed overhead for its header and bookkeeping (`round/future.rs`
    /// says which deltas give way when it is full). It bounds memory against
    /// floods of far-round deltas, which the count bounds alone would let reach
    /// `buffered_rounds * max_deltas_per_round` full deltas. A single delta larger than it is held only when no other
    /// future delta is. The current round is neither charged nor refused for it.
    pub max_future_bytes: usize,
    /// Most of `max_future_bytes` held for deltas of rounds two or more ahead
    /// from keys that are not connected peers of the run: what a flood of far
    /// rounds from made-up keys can take (such a delta is still evidence that
    /// the node is behind, whether held or not). Checked as each is admitted.
    pub max_far_unknown_bytes: usize,
}

impl RoundConfig {
    /// The config a RunSpec's round section implies.
    pub fn from_spec(spec: &RoundSpec) -> Self {
        Self {
            quorum: spec.quorum,
            deadline_ms: spec.deadline_ms,
            buffered_rounds: 8,
            max_deltas_per_round: 4096,
            activity_rounds: 2,
            sync_lag_rounds: 2,
            sync_retry_ms: 5_000,
            // A few gossip hops: long enough for a twin delta to arrive, short
            // next to a round.
            settle_ms: (spec.deadline_ms / 20).min(250),
            replay_window_rounds: 256,
            max_peers: 4096,
            max_banned: 4096,
            // The round section does not know the model's size: a fixed 64 MiB
            // holds about 8 rounds of 90 peers' deltas of the built-in spec
            // (88 KB each), or one round of some 750. A driver whose deltas
            // are far larger should raise it to a few of them.
            max_future_bytes: 64 << 20,
            // About 90 of the built-in spec's deltas: a node lagging behind
            // its peers learns from the first, and the state it fetches then
            // comes with the deltas its peers hold for that round.
            max_far_unknown_bytes: 8 << 20,
        }
    }
}

/// Something that happened, as seen by the node.
#[derive(Clone, Debug)]
pub enum Event {
    /// Our own delta for the current round is trained, encoded and signed.
    LocalDelta(SignedDelta),
    /// A peer's delta that passed [`SignedDelta::validate`] and [`RoundState::admit`].
    PeerDelta(SignedDelta),
    /// A peer of this run connected: expected in this round if we have not yet
    /// published for it, from the next round otherwise.
    PeerConnected(PublicKey),
    /// A peer of this run went away.
    PeerDisconnected(PublicKey),
    /// Time passed; deadlines are checked.
    Tick,
    /// The node installed a peer's state for the start of `round`; the peer
    /// expects our deltas from `expected_from`. Until then we observe, syncing
    /// again as each new round begins. `expected`: the keys our sources expect
    /// in `round` (see [`crate::StateOffer`]); empty when they said none.
    Synced { round: u64, expected_from: u64, expected: Vec<PublicKey> },
    /// The peers reached hold our state and expect our deltas from round
    /// `from` (they saw us leave, and connect again: a restarted node); we
    /// observe until then, as after a sync, rather than contribute to rounds
    /// they close without us.
    PeersExpect { from: u64 },
    /// A connected peer that synced from someone says it contributes from
    /// round `from` on. Peers see a newcomer connect in slightly different
    /// rounds, so each would otherwise expect it from its own guess; the
    /// newcomer's word, taken from the peer it synced from, makes them agree.
    PeerStarts { peer: PublicKey, from: u64 },
    /// A peer said, in a verified [`crate::LeaveNotice`], that it contributes
    /// nothing from round `from` on (see [`leaving`]).
    PeerLeaving { peer: PublicKey, from: u64 },
    /// The node aggregates `round` in a group with these members (itself
    /// included): only their deltas are expected and merged.
    Group { round: u64, members: Vec<PublicKey> },
    /// This key is banned for the run (a verified equivocation proof, or a ban
    /// reloaded after a restart): refuse its deltas, drop those not yet merged,
    /// and stop expecting it.
    Ban(PublicKey),
    /// The node stops (`true`) or resumes (`false`) contributing deltas of its
    /// own. Paused, it is not expected in its own rounds and closes them on its
    /// peers' deltas; a delta it already published for the round still counts.
    Paused(bool),
    /// We sit the current round out (a node whose privacy budget is spent): the
    /// round closes on peers' deltas alone, at their quorum or our deadline,
    /// and we merge it like any other.
    Abstain,
    /// A delta with this header, its signature verified, was refused as a
    /// replay ([`Admission::Replayed`]): its sender has signed its delta of
    /// that round, and no other can come without an equivocation, so the
    /// round does not wait for it.
    Replayed(DeltaHeader),
}

/// Why a round closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Quorum,
    Deadline,
}

/// Something the node must do.
// Actions live for one call and most of them are Publish or Merge: boxing the
// delta would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Action {
    /// Gossip our delta.
    Publish(SignedDelta),
    /// Merge these deltas (sorted by sender) into the state of `round`, giving the
    /// state of `round + 1`. The state machine has already moved on.
    Merge { round: u64, deltas: Vec<SignedDelta>, reason: CloseReason },
    /// We are behind: fetch the current state from `peer`, which reached `round`.
    RequestState { peer: PublicKey, round: u64 },
    /// We merged `round` from a state the majority of its deltas did not come
    /// from: fetch the state of `peer`, which holds the majority's.
    Diverged { peer: PublicKey, round: u64 },
}

/// What to do with a peer's delta that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Keep it and forward it.
    Accept,
    /// Already have this exact delta; ignore it.
    Duplicate,
    /// For a round that is already merged; ignore it.
    Stale,
    /// The sender signed a different delta for the same round.
    Equivocation,
    /// No room for it (too many deltas or rounds buffered); ignore it.
    Full,
    /// The sender's key is banned for this run.
    Banned,
    /// Its payload is one already seen in another round or from another key:
    /// an old delta re-signed as new. Honest nodes never send one.
    Replayed,
}

/// The round state machine of one node.
#[derive(Debug)]
pub struct RoundState {
    me: PublicKey,
    config: RoundConfig,
    round: u64,
    published_at: Option<u64>,
    /// Whether we sit the current round out (`published_at` then marks when).
    abstained: bool,
    /// When the current round reached its quorum (it closes `settle_ms` later).
    quorum_at: Option<u64>,
    /// Deltas of the current and future rounds, keyed by round, then sender.
    /// Bound: the current round and at most `buffered_rounds` future ones, each
    /// with at most `max_deltas_per_round` peer deltas and our own; the future
    /// ones, besides, within `max_future_bytes` (see `future`).
    rounds: BTreeMap<u64, BTreeMap<PublicKey, SignedDelta>>,
    /// Connected peers of the run, and the round from which each is expected.
    /// Bound: `max_peers` keys; past it, newly connected keys are not tracked
    /// (until one of those tracked leaves).
    connected: BTreeMap<PublicKey, u64>,
    /// The last round each peer contributed to. Bound: `max_peers` keys, and
    /// only rounds from `activity_rounds` before the current one (older ones
    /// are pruned when the round changes). Past the bound, a new sender takes
    /// the place of the entry with the highest round if its round is lower
    /// (the nearest rounds decide who is expected), and is not tracked otherwise.
    last_active: HashMap<PublicKey, u64>,
    /// Peers whose connection closed, and our round then: a delta of theirs
    /// of that round or before, arriving after (verified late, or relayed),
    /// was sent before they left and does not make them expected again.
    /// Bound: `max_peers` keys, and only rounds from `activity_rounds` before
    /// the current one.
    departed: BTreeMap<PublicKey, u64>,
    /// The round and time of our last state request.
    last_sync_request: Option<(u64, u64)>,
    /// Rounds before this one are observed, not contributed to (after a sync).
    contribute_from: u64,
    /// Whether this node has published a delta since it started.
    ever_published: bool,
    /// Group members of the current and coming rounds, when grouped. Bound:
    /// `buffered_rounds + 1` rounds (the farthest are dropped past it), each
    /// with the members the driver computed (not fed by the network).
    groups: BTreeMap<u64, BTreeSet<PublicKey>>,
    /// The round a sync landed in and the keys our sources expect in it (see
    /// [`Event::Synced`]): who is expected in that round. Bound: one round,
    /// [`crate::MAX_SYNC_EXPECTED`] keys.
    landing: Option<(u64, BTreeSet<PublicKey>)>,
    /// Keys whose delta of the current or the next round was refused as a
    /// replay (see [`Event::Replayed`]): not expected in that round. Bound:
    /// two rounds, `max_peers` keys each.
    spent: BTreeMap<u64, BTreeSet<PublicKey>>,
    /// Keys that said they start contributing and let the grace that gave
    /// them (`activity_rounds` rounds of being waited for) pass without a
    /// delta: when they start again, they are not waited for until a delta of
    /// theirs arrives (see `expected.rs`). Bound: `max_peers` keys.
    unproven: BTreeSet<PublicKey>,
    /// Keys that said they start, and sent no delta since.
    /// Bound: `max_peers` keys.
    unmet_starts: BTreeSet<PublicKey>,
    /// Keys banned for the run. Bound: `max_banned` keys.
    banned: BTreeSet<PublicKey>,
    /// Equivocations caught since the driver last took them. Bound: one per key
    /// newly remembered in `banned`, so at most `max_banned`.
    equivocations: Vec<EquivocationProof>,
    /// Payload hashes of the deltas taken in from `replay_window_rounds` rounds
    /// before the current one on, with the round and key they came with.
    /// Bound: `(replay_window_rounds + 1 + buffered_rounds) *
    /// (max_deltas_per_round + 1)` entries: the rounds of the window, the
    /// current one and the buffered future ones, each with at most
    /// `max_deltas_per_round` peer payloads (see [`RoundState::admit`]) and our
    /// own. Older rounds are forgotten as the round changes, whether it closes
    /// or we jump; an evicted future round's payloads go with it.
    payloads: HashMap<[u8; 32], (u64, PublicKey)>,
    /// The hashes of `payloads` by the round they are remembered with (exactly
    /// those of `payloads`, so bounded alike), so that forgetting old rounds
    /// costs what it removes, not the size of the map.
    payload_rounds: BTreeMap<u64, Vec<[u8; 32]>>,
    /// Not contributing deltas of our own (see [`Event::Paused`]).
    paused: bool,
    /// When the current round's first delta arrived: a paused node's deadline counts from here.
    opened_at: Option<u64>,
    /// When the first peer delta of the current round arrived, even before we
    /// entered it: a running node's deadline counts from here when that comes
    /// before its own publish (see [`RoundState::deadline_from`]).
    heard_at: Option<u64>,
    /// The round after the current one and when its first peer delta arrived.
    next_heard_at: Option<(u64, u64)>,
    /// The headers of the deltas we signed, by round, so that we never sign a
    /// second one for a round (not even after installing an older state) and
    /// know our own delta when a peer hands it back. Bound: the last
    /// `buffered_rounds + 1` rounds we signed.
    signed: BTreeMap<u64, DeltaHeader>,
    /// The byte charges of the deltas of future rounds in `rounds`, by how
    /// useful each is. Bound: one entry per such delta, so bounded alike.
    future: future::FutureBytes,
    /// Peers that said they leave (see [`leaving`]). Bound: `max_peers` keys.
    leavers: leaving::Leavers,
    /// Stale deltas of the last `sync_lag_rounds` rounds, for a node that goes
    /// back to them (see [`stale`]). Bound: those rounds, `max_deltas_per_round`
    /// each, within `max_future_bytes`.
    stale: stale::RecentStale,
}

impl RoundState {
    /// A node `me` starting (or resuming) at `round`.
    pub fn new(me: PublicKey, config: RoundConfig, round: u64) -> Self {
        Self {
            me,
            config,
            round,
            published_at: None,
            abstained: false,
            quorum_at: None,
            rounds: BTreeMap::new(),
            connected: BTreeMap::new(),
            last_active: HashMap::new(),
            departed: BTreeMap::new(),
            last_sync_request: None,
            contribute_from: 0,
            ever_published: false,
            groups: BTreeMap::new(),
            landing: None,
            spent: BTreeMap::new(),
            unproven: BTreeSet::new(),
            unmet_starts: BTreeSet::new(),
            banned: BTreeSet::new(),
            equivocations: Vec::new(),
            payloads: HashMap::new(),
            payload_rounds: BTreeMap::new(),
            paused: false,
            opened_at: None,
            heard_at: None,
            next_heard_at: None,
            signed: BTreeMap::new(),
            future: future::FutureBytes::default(),
            leavers: leaving::Leavers::default(),
            stale: stale::RecentStale::default(),
        }
    }

    /// Whether `key` is banned for the run.
    pub fn is_banned(&self, key: &PublicKey) -> bool {
        self.banned.contains(key)
    }

    /// The keys banned for the run.
    pub fn banned(&self) -> &BTreeSet<PublicKey> {
        &self.banned
    }

    /// The equivocations caught since the last call, each of whose keys is now
    /// banned: the driver stores and gossips them.
    pub fn take_equivocations(&mut self) -> Vec<EquivocationProof> {
        std::mem::take(&mut self.equivocations)
    }

    /// The round being collected.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether our own delta for the current round has been submitted.
    pub fn has_local(&self) -> bool {
        self.published_at.is_some()
    }

    /// Whether the node should train for the current round now: not yet
    /// published, and not observing it.
    pub fn wants_local(&self) -> bool {
        self.published_at.is_none() && !self.observing() && !self.paused
    }

    /// Whether the node is paused (see [`Event::Paused`]).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether we are sitting out the current round after a mid-round sync.
    pub fn observing(&self) -> bool {
        self.round < self.contribute_from
    }

    /// The first round we contribute to (what a node that synced tells its peers).
    pub fn contributes_from(&self) -> u64 {
        self.contribute_from
    }

    /// The deltas collected for the current round, in sender order (served to
    /// a node that syncs mid-round, since gossip does not replay them).
    pub fn current_deltas(&self) -> Vec<SignedDelta> {
        self.rounds.get(&self.round).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Deltas collected so far for the current round, our own included.
    pub fn collected(&self) -> usize {
        self.rounds.get(&self.round).map_or(0, |m| m.len())
    }

    /// Whether a validated peer delta is wanted. Pure: changes nothing.
    pub fn admit(&self, header: &DeltaHeader) -> Admission {
        if self.banned.contains(&header.sender) {
            return Admission::Banned;
        }
        if header.round < self.round {
            return Admission::Stale;
        }
        if let Some(existing) = self.rounds.get(&header.round).and_then(|m| m.get(&header.sender)) {
            return if existing.header == *header { Admission::Duplicate } else { Admission::Equivocation };
        }
        if header.sender == self.me && !self.signed_by_us(header) {
            // Someone replays a delta with our key that we did not make.
            return Admission::Equivocation;
        }
        if let Some(&(round, sender)) = self.payloads.get(&header.payload_hash) {
            if (round, sender) != (header.round, header.sender) {
                return Admission::Replayed;
            }
        }
        // Payloads count too: a banned key's delta leaves its round, but its
        // payload stays remembered, and must not make room for more.
        let held = self.rounds.get(&header.round).map(|m| m.len().max(self.payloads_of(header.round)));
        let admission = match held {
            Some(n) if n >= self.config.max_deltas_per_round => Admission::Full,
            Some(_) => Admission::Accept,
            // The current round is not a future one: it never waits for room.
            None if header.round == self.round || self.future_rounds() < self.config.buffered_rounds => {
                Admission::Accept
            }
            // Full of future rounds: keep the nearest, which are merged
            // soonest. A lagging node learns it is behind from a far delta's
            // arrival, not from keeping it; and a key that gossips deltas of
            // ever farther rounds must not push out the next round's deltas
            // (a node that loses them merges a set its peers do not).
            None => match self.highest_future_round() {
                Some(highest) if header.round < highest => Admission::Accept,
                _ => Admission::Full,
            },
        };
        // Within the byte budget too, once the less useful deltas make room.
        if admission == Admission::Accept && header.round > self.round && !self.future_room(header) {
            return Admission::Full;
        }
        admission
    }

    /// Advances the state machine by one event at time `now_ms`.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::LocalDelta(delta) => {
                if delta.header.round != self.round || self.published_at.is_some() {
                    // Trained for a round we have since left (e.g. after a sync).
                    return actions;
                }
                if !self.may_sign(&delta.header) {
                    // A round we already signed, before we went back to an
                    // older state: a second delta would be an equivocation.
                    return actions;
                }
                self.remember_signed(delta.header.clone());
                self.remember_payload(&delta.header);
                self.rounds.entry(self.round).or_default().insert(self.me, delta.clone());
                self.published_at = Some(now_ms);
                self.ever_published = true;
                actions.push(Action::Publish(delta));
            }
            Event::PeerDelta(delta) => match self.admit(&delta.header) {
                Admission::Accept => self.take_in(now_ms, delta, &mut actions),
                Admission::Equivocation => {
                    self.catch_equivocation(&delta);
                    self.maybe_close(now_ms, &mut actions);
                    return actions;
                }
                Admission::Stale => {
                    self.stale.keep(delta, self.round, &self.config);
                    return actions;
                }
                _ => return actions,
            },
            Event::PeerConnected(peer) => {
                if peer != self.me && !self.connected.contains_key(&peer) && self.room_to_connect() {
                    let from = if self.ever_published { self.round + 2 } else { self.round };
                    self.connected.insert(peer, from);
                    self.departed.remove(&peer);
                    self.reclass_future(peer);
                    // A new connection of a key that said it leaves: a restart.
                    self.leavers.back(&peer);
                }
            }
            Event::PeerStarts { peer, from } => {
                if peer != self.me && !self.banned.contains(&peer) {
                    self.leavers.back(&peer);
                    self.note_unproven(&peer);
                    if self.connected.contains_key(&peer) || self.room_to_connect() {
                        self.connected.insert(peer, from);
                        self.departed.remove(&peer);
                        self.reclass_future(peer);
                        if from != crate::wire::SYNCING {
                            self.note_start(peer);
                        }
                    }
                    if from > self.round {
                        // It said it sits out until then; do not wait for it.
                        self.last_active.remove(&peer);
                        self.unexpect_landing(&peer);
                    }
                }
            }
            Event::PeerDisconnected(peer) => {
                if self.connected.remove(&peer).is_some() {
                    self.note_departed(peer);
                }
                self.last_active.remove(&peer);
                // A restarted node connects afresh: its grace is given again.
                self.forget_starts(&peer);
                self.unexpect_landing(&peer);
                self.reclass_future(peer);
            }
            Event::Tick => {}
            Event::PeerLeaving { peer, from } => self.peer_leaves(peer, from),
            Event::Replayed(header) => {
                self.note_spent(&header);
                self.maybe_close(now_ms, &mut actions);
                return actions;
            }
            Event::Abstain => {
                if self.published_at.is_none() && !self.observing() {
                    self.published_at = Some(now_ms);
                    self.abstained = true;
                }
            }
            Event::Ban(key) => {
                self.ban(key);
            }
            Event::Paused(paused) => {
                self.paused = paused;
                if self.rounds.contains_key(&self.round) {
                    self.opened_at.get_or_insert(now_ms);
                }
            }
            Event::Group { round, members } => {
                if round >= self.round {
                    self.groups.insert(round, members.into_iter().collect());
                    // Bounded like the future-round buffer.
                    while self.groups.len() > self.config.buffered_rounds + 1 {
                        let last = *self.groups.keys().next_back().expect("not empty");
                        self.groups.remove(&last);
                    }
                }
            }
            Event::PeersExpect { from } => {
                if from > self.round && !self.has_local() {
                    self.contribute_from = self.contribute_from.max(from);
                }
            }
            Event::Synced { round, expected_from, expected } => {
                // An older state too (a diverged node takes the majority's,
                // rounds behind its own): deltas it holds of later rounds, its
                // own among them, stay, as its peers merge them too.
                // So does a node that installs its peers' state of the round
                // it is in (it went its own way) when they expect it only
                // later: its delta of this round, trained from the new
                // state, would reach them after they closed the round.
                if round != self.round || self.observing() || expected_from > round {
                    let back = round < self.round;
                    self.jump_to(round, now_ms, &expected);
                    if back {
                        // The round's deltas that came while we were past it.
                        for delta in self.stale.take(round) {
                            if self.admit(&delta.header) == Admission::Accept {
                                self.take_in(now_ms, delta, &mut actions);
                            }
                        }
                    }
                    // Never contribute again to a round we signed for.
                    let past_signed = self.last_signed().map_or(0, |r| r + 1);
                    self.contribute_from = expected_from.max(past_signed);
                }
                // Deltas of the new round may all be here already (gossip
                // outran the fetch): the round closes on them, after the
                // settle time that lets the source's own deltas in, rather
                // than wait for one more that never comes.
            }
        }
        self.maybe_close(now_ms, &mut actions);
        actions
    }

    /// Takes in a peer's delta that [`RoundState::admit`] accepted.
    fn take_in(&mut self, now_ms: u64, delta: SignedDelta, actions: &mut Vec<Action>) {
        let (round, sender) = (delta.header.round, delta.header.sender);
        if round > self.round {
            self.make_future_room(&delta.header);
            self.charge_future(&delta.header);
        }
        self.remember_payload(&delta.header);
        self.rounds.entry(round).or_default().insert(sender, delta);
        if round == self.round {
            self.opened_at.get_or_insert(now_ms);
            self.heard_at.get_or_insert(now_ms);
        } else if round == self.round + 1 && self.next_heard_at.is_none() {
            self.next_heard_at = Some((round, now_ms));
        }
        self.note_active(sender, round);
        self.forget_starts(&sender);
        // A delta of a round it said it would not contribute to: it is back.
        if self.leavers.gone(&sender, round) {
            self.leavers.back(&sender);
        }
        let lag = if self.observing() { 1 } else { self.config.sync_lag_rounds };
        if round >= self.round + lag && self.sync_allowed(round, now_ms) {
            self.last_sync_request = Some((round, now_ms));
            actions.push(Action::RequestState { peer: sender, round });
        }
    }

    /// Bans the sender of `delta` when it and the delta already held for its
    /// round prove equivocation. Our own key is never banned: a delta with it
    /// that we did not make is only refused.
    fn catch_equivocation(&mut self, delta: &SignedDelta) {
        let held = self.rounds.get(&delta.header.round).and_then(|m| m.get(&delta.header.sender));
        let Some(proof) = held.and_then(|held| EquivocationProof::new(held, delta)) else {
            return;
        };
        if proof.sender() == self.me {
            return;
        }
        if self.ban(proof.sender()) {
            self.equivocations.push(proof);
        }
    }

    /// Bans `key`: drops its unmerged deltas, stops expecting it, and
    /// remembers the ban while there is room. Returns whether it is newly
    /// remembered.
    fn ban(&mut self, key: PublicKey) -> bool {
        if key == self.me || self.banned.contains(&key) {
            return false;
        }
        let remembered = self.banned.len() < self.config.max_banned;
        if remembered {
            self.banned.insert(key);
        }
        self.uncharge_key(key);
        self.stale.forget_key(&key);
        for deltas in self.rounds.values_mut() {
            deltas.remove(&key);
        }
        for members in self.groups.values_mut() {
            members.remove(&key);
        }
        self.connected.remove(&key);
        self.last_active.remove(&key);
        self.forget_starts(&key);
        self.unexpect_landing(&key);
        remembered
    }

    /// `key` is not expected in the round a sync landed in after all (it
    /// left, was banned, or said it starts later).
    fn unexpect_landing(&mut self, key: &PublicKey) {
        if let Some((_, keys)) = self.landing.as_mut() {
            keys.remove(key);
        }
    }

    fn room_to_connect(&self) -> bool {
        self.connected.len() < self.config.max_peers
    }

    /// A request for a newer round than the last one goes out at once; a repeat
    /// waits for the retry interval.
    fn sync_allowed(&self, round: u64, now_ms: u64) -> bool {
        self.last_sync_request.is_none_or(|(last_round, t)| {
            round > last_round || now_ms.saturating_sub(t) >= self.config.sync_retry_ms
        })
    }
}

mod clock;
mod expected;
mod future;
mod leaving;
mod replay;
mod signed;
mod stale;

pub use leaving::LeaveAdmission;

#[cfg(test)]
mod expected_tests;
#[cfg(test)]
mod future_tests;
#[cfg(test)]
mod pause_tests;

#[cfg(test)]
mod tests;
