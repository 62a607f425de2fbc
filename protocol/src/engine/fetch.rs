//! State fetch, sans-IO: ask run peers which state they serve, choose the root
//! a majority of the peers reached announce, fetch that state's chunks in
//! parallel from every peer announcing it, check each chunk on arrival, and
//! once it is whole, have the driver decode it off its event loop
//! ([`StateDecode`]: a copy and a decode of the whole state) before handing
//! it over. Verified chunks of an interrupted
//! fetch are kept, so fetching the same root again resumes.
//!
//! Time is a millisecond timestamp passed in; requests go out as
//! [`FetchStep::Send`] with ids the fetch allocates itself, and answers come
//! back by id. [`crate::engine::Engine`] drives it; nothing here logs or waits.

use std::collections::{BTreeMap, BTreeSet};

use crate::chunks::{
    choose_root, choose_root_by_support, ChunkAssembly, ChunkError, StateOffer, MAX_SYNC_EXPECTED,
};
use crate::delta::SignedDelta;
use crate::keys::PublicKey;
use crate::snapshot::ModelState;
use crate::wire::{SyncRequest, SyncResponse};

use super::{Note, RequestId, SyncReason};

/// Chunks of one root kept from an earlier fetch: the root and (index, bytes).
pub type KeptChunks = ([u8; 32], Vec<(u32, Vec<u8>)>);

/// Tunables of a fetch.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchConfig {
    /// How long to wait for offers before choosing among those that came.
    pub offer_wait_ms: u64,
    /// Chunk requests in flight to one peer at a time.
    pub chunks_per_peer: usize,
    /// Most peers asked for an offer in one sync (bounds the fan-out in big swarms).
    pub max_asked: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self { offer_wait_ms: 2_000, chunks_per_peer: 4, max_asked: 64 }
    }
}

/// How many of `reached` peers must announce one root before a node fetches
/// it: a strict majority. Colluders who are fewer than half the peers a node
/// reached cannot make it install their state, however high a round they claim.
pub fn required_support(reached: usize) -> usize {
    reached / 2 + 1
}

/// The keys that more than half of `offers` expect in their round: what
/// one or a few agreeing offers (colluders serving the honest state among
/// them) list alone does not count. At most [`MAX_SYNC_EXPECTED`] keys.
fn expected_by_most(offers: &[&StateOffer]) -> Vec<PublicKey> {
    let mut counts: BTreeMap<PublicKey, usize> = BTreeMap::new();
    for offer in offers {
        let keys: BTreeSet<&PublicKey> = offer.expected.iter().take(MAX_SYNC_EXPECTED).collect();
        for key in keys {
            *counts.entry(*key).or_default() += 1;
        }
    }
    counts.into_iter().filter(|(_, n)| 2 * n > offers.len()).map(|(k, _)| k).take(MAX_SYNC_EXPECTED).collect()
}

/// The deltas the agreeing offers carry, each once (peers in one round
/// mostly hold the same ones): the driver verifies every one it gets.
fn offered_deltas(agreeing: &[&StateOffer]) -> Vec<SignedDelta> {
    let mut seen = BTreeSet::new();
    agreeing.iter().flat_map(|o| o.deltas.iter()).filter(|d| seen.insert(d.id())).cloned().collect()
}

/// What the engine must do after the fetch handled something.
#[derive(Debug)]
pub(super) enum FetchStep {
    /// Send these requests.
    Send(Vec<(PublicKey, RequestId, SyncRequest)>),
    /// A verified state, and what the peers that announced it said.
    Done { state: ModelState, agreed: Agreed },
    /// Every chunk is held and verified: the driver decodes the state off its
    /// event loop and hands the result back.
    Decode(StateDecode),
    /// A probe found a strict majority of the peers reached at a state that
    /// is not newer than ours (`round`, `lineage`), expecting our deltas from
    /// `expected_from`: the engine observes until then if it is ours (a node
    /// restarted in the swarm's round after its peers saw it leave). Otherwise
    /// as `Ended { agreed: true, ahead: false }`. `deltas`: the agreeing
    /// peers' deltas of their current round (still to validate), which a node
    /// restarted in that round cannot get by gossip any more.
    Current { round: u64, lineage: [u8; 32], expected_from: u64, deltas: Vec<SignedDelta> },
    /// The sync ended without a state to install (nothing newer, or no
    /// agreement); `ahead`: a strict majority of the peers reached announced
    /// states the node would take, only not one and the same.
    Ended { agreed: bool, ahead: bool },
}

/// A whole, verified set of chunks to decode into a state: heavy work (a
/// copy and a decode of the whole state) that the driver runs off its event
/// loop, then hands back as [`super::Input::StateDecoded`].
#[derive(Clone, Debug)]
pub struct StateDecode {
    assembly: ChunkAssembly,
    param_count: usize,
}

impl StateDecode {
    /// The root of the state.
    pub fn root(&self) -> [u8; 32] {
        self.assembly.root()
    }

    /// The state the chunks make, checked against the announced round and lineage.
    pub fn decode(self) -> Result<ModelState, ChunkError> {
        self.assembly.finish(self.param_count)
    }
}

/// What the peers that announced the state being fetched said with it.
#[derive(Clone, Debug)]
pub(super) struct Agreed {
    /// The round from which the peers expect our deltas.
    pub(super) expected_from: u64,
    /// Their current round's deltas (still to validate).
    pub(super) deltas: Vec<SignedDelta>,
    /// The keys a strict majority of them expect in the state's round (see
    /// [`StateOffer::expected`]).
    pub(super) expected: Vec<PublicKey>,
    /// Whether a strict majority of the peers reached announced the state.
    pub(super) majority: bool,
}

enum Pending {
    Offer(PublicKey),
    Chunk(PublicKey, u32),
}

enum Stage {
    Idle,
    Asking {
        since: u64,
        /// Asked and not yet answered.
        waiting: BTreeSet<PublicKey>,
        /// Every peer asked that has not left unanswered: the peers reached.
        reached: BTreeSet<PublicKey>,
        offers: BTreeMap<PublicKey, StateOffer>,
    },
    Fetching {
        assembly: ChunkAssembly,
        sources: BTreeSet<PublicKey>,
        agreed: Agreed,
    },
    /// The chunks are whole; the driver decodes the state.
    Decoding {
        root: [u8; 32],
        agreed: Agreed,
    },
}

/// One node's state fetch.
pub(super) struct StateFetch {
    stage: Stage,
    pub(super) reason: SyncReason,
    pending: BTreeMap<RequestId, Pending>,
    next_id: u64,
    /// The chunks of an interrupted fetch.
    parked: Option<ChunkAssembly>,
    /// Chunks kept on disk by an earlier run of the node: a root and (index, bytes).
    stored: Option<KeptChunks>,
    /// Chunks verified since the driver last took them (to keep them on disk).
    fresh: Vec<([u8; 32], u32, Vec<u8>)>,
    max_state_bytes: usize,
    param_count: usize,
    config: FetchConfig,
}

impl StateFetch {
    pub(super) fn new(config: FetchConfig, param_count: usize, max_state_bytes: usize) -> Self {
        Self {
            stage: Stage::Idle,
            reason: SyncReason::Behind,
            pending: BTreeMap::new(),
            next_id: 0,
            parked: None,
            stored: None,
            fresh: Vec::new(),
            max_state_bytes,
            param_count,
            config,
        }
    }

    pub(super) fn with_stored_chunks(&mut self, root: [u8; 32], chunks: Vec<(u32, Vec<u8>)>) {
        self.stored = Some((root, chunks));
    }

    pub(super) fn take_fresh_chunks(&mut self) -> Vec<([u8; 32], u32, Vec<u8>)> {
        std::mem::take(&mut self.fresh)
    }

    pub(super) fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Idle)
    }

    /// Whether a root was chosen and its chunks are being fetched.
    pub(super) fn is_fetching(&self) -> bool {
        matches!(self.stage, Stage::Fetching { .. } | Stage::Decoding { .. })
    }

    /// When the offers asked for are chosen among, whether or not all came.
    pub(super) fn offers_due(&self) -> Option<u64> {
        match &self.stage {
            Stage::Asking { since, .. } => Some(since.saturating_add(self.config.offer_wait_ms)),
            _ => None,
        }
    }

    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    /// Starts a sync by asking `peers` (at most `max_asked` of them) for their
    /// offers; nothing if one is under way or there is nobody to ask.
    pub(super) fn start(&mut self, now: u64, peers: Vec<PublicKey>, reason: SyncReason) -> FetchStep {
        if !self.is_idle() || peers.is_empty() {
            return FetchStep::Send(Vec::new());
        }
        self.reason = reason;
        let asked: BTreeSet<PublicKey> = peers.into_iter().take(self.config.max_asked).collect();
        let mut out = Vec::with_capacity(asked.len());
        for &peer in &asked {
            let id = self.id();
            self.pending.insert(id, Pending::Offer(peer));
            out.push((peer, id, SyncRequest::Offer));
        }
        self.stage =
            Stage::Asking { since: now, waiting: asked.clone(), reached: asked, offers: BTreeMap::new() };
        FetchStep::Send(out)
    }

    /// A run peer connected while offers are being asked for: it is asked too.
    pub(super) fn peer_joined(&mut self, peer: PublicKey) -> FetchStep {
        let Stage::Asking { waiting, reached, .. } = &mut self.stage else {
            return FetchStep::Send(Vec::new());
        };
        if reached.len() >= self.config.max_asked || !reached.insert(peer) {
            return FetchStep::Send(Vec::new());
        }
        waiting.insert(peer);
        let id = self.id();
        self.pending.insert(id, Pending::Offer(peer));
        FetchStep::Send(vec![(peer, id, SyncRequest::Offer)])
    }

    /// A peer went away: it is no source any more, and if it had not answered
    /// an offer request it no longer counts among the peers reached.
    pub(super) fn peer_left(
        &mut self,
        peer: &PublicKey,
        notes: &mut Vec<Note>,
        wanted: impl Fn(u64, [u8; 32], bool) -> bool,
    ) -> Option<FetchStep> {
        match &mut self.stage {
            Stage::Asking { waiting, reached, .. } => {
                if waiting.remove(peer) {
                    reached.remove(peer);
                    self.pending.retain(|_, p| !matches!(p, Pending::Offer(q) if q == peer));
                    if waiting.is_empty() {
                        return Some(self.choose(notes, wanted));
                    }
                }
                None
            }
            Stage::Fetching { sources, .. } => {
                if sources.remove(peer) {
                    self.pending.retain(|_, p| !matches!(p, Pending::Chunk(q, _) if q == peer));
                    return Some(self.pump(notes));
                }
                None
            }
            Stage::Idle | Stage::Decoding { .. } => None,
        }
    }

    /// The driver decoded the state of [`FetchStep::Decode`] (of `root`).
    pub(super) fn on_decoded(
        &mut self,
        root: [u8; 32],
        result: Result<ModelState, ChunkError>,
        notes: &mut Vec<Note>,
    ) -> Option<FetchStep> {
        let agreed = match std::mem::replace(&mut self.stage, Stage::Idle) {
            Stage::Decoding { root: r, agreed } if r == root => agreed,
            other => {
                self.stage = other;
                return None;
            }
        };
        Some(match result {
            Ok(state) => FetchStep::Done { state, agreed },
            Err(e) => {
                notes.push(Note::Undecodable { reason: e.to_string() });
                FetchStep::Ended { agreed: false, ahead: true }
            }
        })
    }

    /// A response (or `None`: the request failed) to request `id`; `wanted`
    /// says whether a state of this round and lineage is worth fetching (the
    /// flag: a strict majority of the peers reached announced it).
    pub(super) fn on_response(
        &mut self,
        id: RequestId,
        response: Option<SyncResponse>,
        notes: &mut Vec<Note>,
        wanted: impl Fn(u64, [u8; 32], bool) -> bool,
    ) -> Option<FetchStep> {
        match self.pending.remove(&id)? {
            Pending::Offer(peer) => {
                let Stage::Asking { waiting, offers, .. } = &mut self.stage else { return None };
                waiting.remove(&peer);
                match response {
                    Some(SyncResponse::Offer(offer)) => match offer.manifest.check(self.max_state_bytes) {
                        Ok(()) => {
                            offers.insert(peer, offer);
                        }
                        Err(e) => notes.push(Note::OfferRefused { peer, reason: e.to_string() }),
                    },
                    Some(SyncResponse::Chunk(_) | SyncResponse::Noted) => notes.push(Note::OfferRefused {
                        peer,
                        reason: "answered an offer request with something else".into(),
                    }),
                    Some(SyncResponse::Unavailable) | None => {}
                }
                if waiting.is_empty() {
                    return Some(self.choose(notes, wanted));
                }
                None
            }
            Pending::Chunk(peer, index) => {
                let Stage::Fetching { assembly, sources, .. } = &mut self.stage else { return None };
                match response {
                    Some(SyncResponse::Chunk(bytes)) => {
                        let copy = bytes.clone();
                        match assembly.insert(index, bytes) {
                            Ok(()) => {
                                self.fresh.push((assembly.root(), index, copy));
                            }
                            Err(e) => {
                                notes.push(Note::BadChunk { peer, reason: e.to_string() });
                                sources.remove(&peer);
                            }
                        }
                    }
                    _ => {
                        notes.push(Note::SourceDropped { peer, index });
                        sources.remove(&peer);
                    }
                }
                Some(self.pump(notes))
            }
        }
    }

    /// Chooses among the offers that came once the wait is over.
    pub(super) fn on_timer(
        &mut self,
        now: u64,
        notes: &mut Vec<Note>,
        wanted: impl Fn(u64, [u8; 32], bool) -> bool,
    ) -> Option<FetchStep> {
        match self.offers_due() {
            Some(due) if now >= due => Some(self.choose(notes, wanted)),
            _ => None,
        }
    }

    fn choose(&mut self, notes: &mut Vec<Note>, wanted: impl Fn(u64, [u8; 32], bool) -> bool) -> FetchStep {
        let Stage::Asking { reached, offers, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else {
            unreachable!("choose is called while asking")
        };
        self.pending.retain(|_, p| !matches!(p, Pending::Offer(_)));
        let announced: BTreeMap<PublicKey, (u64, [u8; 32])> =
            offers.iter().map(|(p, o)| (*p, (o.manifest.round, o.manifest.root()))).collect();
        // Peers that offered and left since still count: they were reached.
        let reached = reached.len().max(offers.len());
        let (required, chosen) = match self.reason {
            SyncReason::Probe | SyncReason::Behind => {
                let required = required_support(reached);
                (required, choose_root(&announced, required))
            }
            // A node that merged a round mostly of another lineage repairs
            // itself towards the root most peers announce (two at least). A
            // strict majority would deadlock a swarm that a partition split
            // into several lineages, none of them a majority (netsim's
            // partition-heal shows it). Roots this node would refuse (see
            // `Engine::wanted`: an older one, or one far ahead, without a
            // strict majority) are no candidates, so a few colluders cannot
            // win a tie with a far round.
            SyncReason::Diverged => {
                let required = reached.min(2);
                let majority = required_support(reached);
                let mut support: BTreeMap<[u8; 32], usize> = BTreeMap::new();
                for (_, root) in announced.values() {
                    *support.entry(*root).or_default() += 1;
                }
                let candidates: BTreeMap<PublicKey, (u64, [u8; 32])> = announced
                    .iter()
                    .filter(|(peer, (round, root))| {
                        wanted(*round, offers[*peer].manifest.lineage, support[root] >= majority)
                    })
                    .map(|(peer, announced)| (*peer, *announced))
                    .collect();
                (required, choose_root_by_support(&candidates, required))
            }
        };
        let Some((round, root)) = chosen else {
            notes.push(Note::NoAgreement { offers: offers.len(), reached, required });
            let newer =
                offers.values().filter(|o| wanted(o.manifest.round, o.manifest.lineage, false)).count();
            return FetchStep::Ended { agreed: false, ahead: newer >= required_support(reached) };
        };
        let sources: BTreeSet<PublicKey> =
            announced.iter().filter(|(_, a)| a.1 == root).map(|(p, _)| *p).collect();
        let agreeing: Vec<&StateOffer> =
            offers.iter().filter(|(p, _)| sources.contains(p)).map(|(_, o)| o).collect();
        let manifest = agreeing[0].manifest.clone();
        let majority = sources.len() >= required_support(reached);
        // When the peers expect our deltas: no later than two rounds on, the
        // most a newly connected peer waits, so no offer can make a node sit
        // out longer.
        let expected_from =
            agreeing.iter().map(|o| o.expected_from).max().unwrap_or(round).min(round.saturating_add(2));
        if !wanted(manifest.round, manifest.lineage, majority) {
            notes.push(Note::NotNewer { round });
            if self.reason == SyncReason::Probe && majority {
                let deltas = offered_deltas(&agreeing);
                return FetchStep::Current { round, lineage: manifest.lineage, expected_from, deltas };
            }
            return FetchStep::Ended { agreed: true, ahead: false };
        }
        let deltas = offered_deltas(&agreeing);
        let expected = expected_by_most(&agreeing);
        let agreed = Agreed { expected_from, deltas, expected, majority };
        let mut kept = 0;
        let assembly = match self.parked.take() {
            Some(parked) if parked.root() == root => {
                kept = parked.progress().0;
                parked
            }
            _ => {
                let mut assembly = ChunkAssembly::new(manifest);
                if let Some((stored_root, chunks)) = self.stored.take() {
                    if stored_root == root {
                        kept = chunks
                            .into_iter()
                            .filter(|(i, c)| assembly.insert(*i, c.clone()).is_ok())
                            .count();
                    }
                }
                assembly
            }
        };
        notes.push(Note::Fetching {
            round,
            root,
            peers: sources.len(),
            reached,
            chunks: assembly.progress().1,
            kept,
        });
        self.stage = Stage::Fetching { assembly, sources, agreed };
        self.pump(notes)
    }

    /// Requests missing chunks from the sources, spread over them; hands the
    /// state over when whole.
    fn pump(&mut self, notes: &mut Vec<Note>) -> FetchStep {
        let Stage::Fetching { assembly, sources, .. } = &mut self.stage else {
            return FetchStep::Send(Vec::new());
        };
        if assembly.is_complete() {
            let Stage::Fetching { assembly, agreed, .. } = std::mem::replace(&mut self.stage, Stage::Idle)
            else {
                unreachable!()
            };
            self.pending.clear();
            let root = assembly.root();
            notes.push(Note::Fetched { round: assembly.manifest().round, chunks: assembly.progress().1 });
            self.stage = Stage::Decoding { root, agreed };
            return FetchStep::Decode(StateDecode { assembly, param_count: self.param_count });
        }
        if sources.is_empty() {
            let Stage::Fetching { assembly, .. } = std::mem::replace(&mut self.stage, Stage::Idle) else {
                unreachable!()
            };
            let (held, of) = assembly.progress();
            notes.push(Note::Stalled { held, of });
            self.pending.clear();
            self.parked = Some(assembly);
            return FetchStep::Ended { agreed: false, ahead: true };
        }
        let mut load: BTreeMap<PublicKey, usize> = sources.iter().map(|p| (*p, 0)).collect();
        let mut requested = BTreeSet::new();
        for pending in self.pending.values() {
            if let Pending::Chunk(peer, index) = pending {
                requested.insert(*index);
                if let Some(n) = load.get_mut(peer) {
                    *n += 1;
                }
            }
        }
        let root = assembly.root();
        let missing: Vec<u32> = assembly.missing().filter(|i| !requested.contains(i)).collect();
        let mut out = Vec::new();
        for index in missing {
            let Some((&peer, n)) = load.iter_mut().min_by_key(|(_, n)| **n) else { break };
            if *n >= self.config.chunks_per_peer {
                break;
            }
            *n += 1;
            self.next_id += 1;
            let id = RequestId(self.next_id);
            self.pending.insert(id, Pending::Chunk(peer, index));
            out.push((peer, id, SyncRequest::Chunk { root, index }));
        }
        FetchStep::Send(out)
    }
}
