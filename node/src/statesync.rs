//! Chunked, multi-peer state sync as a node drives it: ask every run peer
//! which state it serves, pick the root enough distinct peers announce, fetch
//! that state's chunks in parallel from every peer announcing it, check each
//! chunk on arrival, and hand the state over when it is whole. Verified chunks
//! of an interrupted fetch are kept, so fetching the same root again resumes.
//!
//! The driver does no I/O: it returns the requests to send, and the node tells
//! it the id each got and the answers that came back. It also keeps the
//! snapshots this node serves ([`SnapshotCache`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    hash::Hash,
    sync::Arc,
    time::{Duration, Instant},
};

use starling_protocol::{
    chunks::{choose_root, required_support},
    wire::{SyncRequest, SyncResponse},
    ChunkAssembly, ModelState, SignedDelta, StateManifest, StateSnapshot,
};
use starling_storage::KeptChunks;
use tracing::{debug, info, warn};

/// How long to wait for offers before choosing among those that came.
const OFFER_WAIT: Duration = Duration::from_secs(2);
/// Chunk requests in flight to one peer at a time.
const CHUNKS_PER_PEER: usize = 4;
/// How many snapshots a node keeps serving: a syncing node may still be
/// fetching the state of a round or two ago.
const SERVED_SNAPSHOTS: usize = 3;

/// Why the node syncs; the node decides from it whether an offered state is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReason {
    /// Before the first round: is the run further along than our checkpoint?
    Probe,
    /// A peer is rounds ahead of us.
    Behind,
    /// Most of a round's deltas came from a state other than ours.
    Diverged,
}

/// What the node must do after the driver has handled something.
#[derive(Debug)]
pub enum SyncStep<P> {
    /// Send these requests and report each one's id with [`StateSync::sent`].
    Send(Vec<(P, SyncRequest)>),
    /// A verified state, the round from which the peers expect our deltas, and
    /// their current round's deltas (still to validate).
    Done { state: ModelState, expected_from: u64, deltas: Vec<SignedDelta>, reason: SyncReason },
    /// The sync ended without a state to install (nothing newer, or no agreement).
    Ended { reason: SyncReason, agreed: bool },
}

enum Pending<P> {
    Offer(P),
    Chunk(P, u32),
}

enum Phase<P> {
    Idle,
    Asking { since: Instant, asked: BTreeSet<P>, offers: BTreeMap<P, starling_protocol::StateOffer> },
    Fetching { assembly: ChunkAssembly, sources: BTreeSet<P>, expected_from: u64, deltas: Vec<SignedDelta> },
}

/// The sync driver of one node, generic over peer and request ids so it is tested without a network.
pub struct StateSync<P, I> {
    phase: Phase<P>,
    reason: SyncReason,
    pending: HashMap<I, Pending<P>>,
    /// The chunks of an interrupted fetch.
    parked: Option<ChunkAssembly>,
    /// Chunks kept on disk by an earlier run of the node: a root and (index, bytes).
    stored: Option<KeptChunks>,
    /// Chunks verified since the node last took them (to keep them on disk).
    fresh: Vec<([u8; 32], u32, Vec<u8>)>,
    max_state_bytes: usize,
    param_count: usize,
    started: Option<Instant>,
    /// Chunk bytes received that verified, over the driver's life.
    pub chunk_bytes: u64,
}

impl<P: Ord + Copy + std::fmt::Display, I: Hash + Eq + Copy> StateSync<P, I> {
    pub fn new(param_count: usize, max_state_bytes: usize) -> Self {
        Self {
            phase: Phase::Idle,
            reason: SyncReason::Behind,
            pending: HashMap::new(),
            parked: None,
            stored: None,
            fresh: Vec::new(),
            max_state_bytes,
            param_count,
            started: None,
            chunk_bytes: 0,
        }
    }

    /// Chunks an earlier run kept on disk; used if the swarm still agrees on that root.
    pub fn with_stored_chunks(mut self, root: [u8; 32], chunks: Vec<(u32, Vec<u8>)>) -> Self {
        self.stored = Some((root, chunks));
        self
    }

    /// Chunks verified since the last call, to keep on disk.
    pub fn take_fresh_chunks(&mut self) -> Vec<([u8; 32], u32, Vec<u8>)> {
        std::mem::take(&mut self.fresh)
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }

    /// Starts a sync by asking every peer in `peers` for its offer; does nothing if one is under way.
    pub fn start(&mut self, peers: impl IntoIterator<Item = P>, reason: SyncReason) -> Vec<(P, SyncRequest)> {
        if !self.is_idle() {
            return Vec::new();
        }
        let asked: BTreeSet<P> = peers.into_iter().collect();
        if asked.is_empty() {
            return Vec::new();
        }
        self.reason = reason;
        self.started = Some(Instant::now());
        let out = asked.iter().map(|p| (*p, SyncRequest::Offer)).collect();
        self.phase = Phase::Asking { since: Instant::now(), asked, offers: BTreeMap::new() };
        out
    }

    /// Records the id a request got when it was sent.
    pub fn sent(&mut self, id: I, peer: P, request: &SyncRequest) {
        let pending = match request {
            SyncRequest::Offer => Pending::Offer(peer),
            SyncRequest::Chunk { index, .. } => Pending::Chunk(peer, *index),
            // A notice, not part of a fetch: its answer is not waited for.
            SyncRequest::Joining { .. } => return,
        };
        self.pending.insert(id, pending);
    }

    /// A response (or `None`: the request failed) to request `id`. `connected`
    /// counts the run peers connected now; `wanted` says whether a state
    /// with this manifest is worth fetching.
    pub fn on_response(
        &mut self,
        id: I,
        response: Option<SyncResponse>,
        connected: usize,
        wanted: impl Fn(&StateManifest, SyncReason) -> bool,
    ) -> Option<SyncStep<P>> {
        match self.pending.remove(&id)? {
            Pending::Offer(peer) => {
                let Phase::Asking { asked, offers, .. } = &mut self.phase else { return None };
                asked.remove(&peer);
                match response {
                    Some(SyncResponse::Offer(offer)) => match offer.manifest.check(self.max_state_bytes) {
                        Ok(()) => {
                            offers.insert(peer, offer);
                        }
                        Err(e) => warn!(%peer, error = %e, "refused a state offer"),
                    },
                    Some(SyncResponse::Chunk(_) | SyncResponse::Noted) => {
                        warn!(%peer, "peer answered an offer request with something else")
                    }
                    Some(SyncResponse::Unavailable) | None => {}
                }
                if asked.is_empty() {
                    return Some(self.choose(connected, wanted));
                }
                None
            }
            Pending::Chunk(peer, index) => {
                let Phase::Fetching { assembly, sources, .. } = &mut self.phase else { return None };
                match response {
                    Some(SyncResponse::Chunk(bytes)) => {
                        let len = bytes.len() as u64;
                        let copy = bytes.clone();
                        match assembly.insert(index, bytes) {
                            Ok(()) => {
                                self.chunk_bytes += len;
                                self.fresh.push((assembly.root(), index, copy));
                            }
                            Err(e) => {
                                warn!(%peer, error = %e, "peer sent a chunk that does not match the agreed state; dropping it as a source");
                                sources.remove(&peer);
                            }
                        }
                    }
                    _ => {
                        debug!(%peer, index, "peer did not serve a chunk; dropping it as a source");
                        sources.remove(&peer);
                    }
                }
                Some(self.pump())
            }
        }
    }

    /// Periodic check: chooses among the offers that came once the wait is over.
    pub fn on_tick(
        &mut self,
        connected: usize,
        wanted: impl Fn(&StateManifest, SyncReason) -> bool,
    ) -> Option<SyncStep<P>> {
        match &self.phase {
            Phase::Asking { since, .. } if since.elapsed() >= OFFER_WAIT => {
                Some(self.choose(connected, wanted))
            }
            _ => None,
        }
    }

    /// A peer went away: it is no source any more (its requests fail on their own).
    pub fn peer_left(&mut self, peer: &P) {
        if let Phase::Fetching { sources, .. } = &mut self.phase {
            sources.remove(peer);
        }
    }

    fn choose(
        &mut self,
        connected: usize,
        wanted: impl Fn(&StateManifest, SyncReason) -> bool,
    ) -> SyncStep<P> {
        let Phase::Asking { offers, .. } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("choose is called while asking")
        };
        self.pending.retain(|_, p| !matches!(p, Pending::Offer(_)));
        let announced: BTreeMap<P, (u64, [u8; 32])> =
            offers.iter().map(|(p, o)| (*p, (o.manifest.round, o.manifest.root()))).collect();
        let required = required_support(connected.max(offers.len()));
        let Some((round, root)) = choose_root(&announced, required) else {
            info!(
                offers = offers.len(),
                required, "no state is announced by enough peers yet; will ask again"
            );
            return SyncStep::Ended { reason: self.reason, agreed: false };
        };
        let sources: BTreeSet<P> = announced.iter().filter(|(_, a)| a.1 == root).map(|(p, _)| *p).collect();
        let agreeing: Vec<&starling_protocol::StateOffer> =
            offers.iter().filter(|(p, _)| sources.contains(p)).map(|(_, o)| o).collect();
        let manifest = agreeing[0].manifest.clone();
        if !wanted(&manifest, self.reason) {
            debug!(round, "the agreed state is not newer than ours");
            return SyncStep::Ended { reason: self.reason, agreed: true };
        }
        let expected_from = agreeing.iter().map(|o| o.expected_from).max().unwrap_or(round);
        let deltas = agreeing.iter().flat_map(|o| o.deltas.iter().cloned()).collect();
        let assembly = match self.parked.take() {
            Some(parked) if parked.root() == root => {
                info!(held = parked.progress().0, "resuming an interrupted state fetch");
                parked
            }
            _ => {
                let mut assembly = ChunkAssembly::new(manifest);
                if let Some((stored_root, chunks)) = self.stored.take() {
                    if stored_root == root {
                        let kept = chunks
                            .into_iter()
                            .filter(|(i, c)| assembly.insert(*i, c.clone()).is_ok())
                            .count();
                        info!(kept, "resuming a state fetch with the chunks kept before the restart");
                    }
                }
                assembly
            }
        };
        info!(
            round,
            root = %hex(&root),
            peers = sources.len(),
            chunks = assembly.progress().1,
            "fetching the state several peers announce"
        );
        self.phase = Phase::Fetching { assembly, sources, expected_from, deltas };
        self.pump()
    }

    /// Requests missing chunks from the sources, spread over them; installs when whole.
    fn pump(&mut self) -> SyncStep<P> {
        let Phase::Fetching { assembly, sources, .. } = &mut self.phase else {
            return SyncStep::Send(Vec::new());
        };
        if assembly.is_complete() {
            let Phase::Fetching { assembly, expected_from, deltas, .. } =
                std::mem::replace(&mut self.phase, Phase::Idle)
            else {
                unreachable!()
            };
            self.pending.clear();
            return match assembly.finish(self.param_count) {
                Ok(state) => {
                    info!(
                        round = state.round,
                        chunks = assembly.progress().1,
                        seconds = self.started.map(|t| t.elapsed().as_secs_f64()),
                        "state fetched and verified"
                    );
                    SyncStep::Done { state, expected_from, deltas, reason: self.reason }
                }
                Err(e) => {
                    warn!(error = %e, "the agreed state does not decode; will ask again");
                    SyncStep::Ended { reason: self.reason, agreed: false }
                }
            };
        }
        if sources.is_empty() {
            let Phase::Fetching { assembly, .. } = std::mem::replace(&mut self.phase, Phase::Idle) else {
                unreachable!()
            };
            let (held, of) = assembly.progress();
            warn!(
                held,
                of, "no peer serves the state being fetched any more; keeping its chunks and asking again"
            );
            self.pending.clear();
            self.parked = Some(assembly);
            return SyncStep::Ended { reason: self.reason, agreed: false };
        }
        let mut load: BTreeMap<P, usize> = sources.iter().map(|p| (*p, 0)).collect();
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
        let mut out = Vec::new();
        for index in assembly.missing().filter(|i| !requested.contains(i)) {
            let Some((&peer, n)) = load.iter_mut().min_by_key(|(_, n)| **n) else { break };
            if *n >= CHUNKS_PER_PEER {
                break;
            }
            *n += 1;
            out.push((peer, SyncRequest::Chunk { root, index }));
        }
        SyncStep::Send(out)
    }
}

/// The snapshots this node serves, newest last, built when first asked for.
#[derive(Default)]
pub struct SnapshotCache {
    snapshots: VecDeque<Arc<StateSnapshot>>,
}

impl SnapshotCache {
    /// The snapshot of `state`, built now unless it is the newest held.
    pub fn of(&mut self, state: &ModelState) -> Arc<StateSnapshot> {
        if let Some(last) = self.snapshots.back() {
            if last.manifest.round == state.round && last.manifest.lineage == state.lineage {
                return last.clone();
            }
        }
        let snapshot = Arc::new(StateSnapshot::of(state));
        self.snapshots.push_back(snapshot.clone());
        while self.snapshots.len() > SERVED_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        snapshot
    }

    /// Chunk `index` of the snapshot with this root, if it is still held.
    pub fn chunk(&self, root: &[u8; 32], index: u32) -> Option<Vec<u8>> {
        self.snapshots.iter().find(|s| &s.root == root)?.chunk(index).map(<[u8]>::to_vec)
    }
}

/// Lowercase hex of the first 8 bytes, for logs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::StateOffer;

    type Sync = StateSync<u8, u32>;

    fn state(round: u64, value: f32) -> ModelState {
        let mut s = ModelState::initial(vec![value; 600_000]);
        s.round = round;
        s
    }

    fn offer(snapshot: &StateSnapshot) -> SyncResponse {
        SyncResponse::Offer(StateOffer {
            manifest: snapshot.manifest.clone(),
            expected_from: 9,
            deltas: vec![],
        })
    }

    fn newer(m: &StateManifest, _: SyncReason) -> bool {
        m.round > 0
    }

    /// Sends the requests: records ids, returns (id, peer, request).
    fn send(sync: &mut Sync, next: &mut u32, out: Vec<(u8, SyncRequest)>) -> Vec<(u32, u8, SyncRequest)> {
        out.into_iter()
            .map(|(peer, req)| {
                *next += 1;
                sync.sent(*next, peer, &req);
                (*next, peer, req)
            })
            .collect()
    }

    fn serve(snapshot: &StateSnapshot, req: &SyncRequest) -> SyncResponse {
        match req {
            SyncRequest::Chunk { index, .. } => SyncResponse::Chunk(snapshot.chunk(*index).unwrap().to_vec()),
            SyncRequest::Offer => offer(snapshot),
            SyncRequest::Joining { .. } => SyncResponse::Noted,
        }
    }

    #[test]
    fn fetches_the_root_two_peers_agree_on_from_both_and_skips_a_lone_liar() {
        let good = StateSnapshot::of(&state(5, 1.0));
        let lie = StateSnapshot::of(&state(50, 2.0));
        let mut sync = Sync::new(600_000, 600_000 * 8 + 1024);
        let mut next = 0;
        let asks = sync.start([1, 2, 3], SyncReason::Probe);
        let asks = send(&mut sync, &mut next, asks);
        let mut step = None;
        for (id, peer, _) in asks {
            let answer = if peer == 3 { offer(&lie) } else { offer(&good) };
            step = sync.on_response(id, Some(answer), 3, newer).or(step);
        }
        let mut served_by = BTreeSet::new();
        let state = loop {
            match step.take().expect("a step") {
                SyncStep::Send(out) => {
                    for (id, peer, req) in send(&mut sync, &mut next, out) {
                        served_by.insert(peer);
                        step = sync.on_response(id, Some(serve(&good, &req)), 3, newer).or(step);
                    }
                }
                SyncStep::Done { state, expected_from, .. } => {
                    assert_eq!(expected_from, 9);
                    break state;
                }
                SyncStep::Ended { .. } => panic!("the sync ended without a state"),
            }
        };
        assert_eq!(state.round, 5);
        assert_eq!(
            served_by,
            BTreeSet::from([1, 2]),
            "chunks come from both agreeing peers, none from the liar"
        );
    }

    #[test]
    fn a_fetch_whose_peers_all_leave_resumes_with_the_chunks_it_had() {
        let good = StateSnapshot::of(&state(5, 1.0));
        let mut sync = Sync::new(600_000, 600_000 * 8 + 1024);
        let mut next = 0;
        let asks = sync.start([1], SyncReason::Behind);
        let (id, _, _) = send(&mut sync, &mut next, asks).remove(0);
        let Some(SyncStep::Send(out)) = sync.on_response(id, Some(offer(&good)), 1, newer) else { panic!() };
        let sent = send(&mut sync, &mut next, out);
        // The first chunk arrives; then the peer serves nothing more.
        let (id, _, req) = &sent[0];
        sync.on_response(*id, Some(serve(&good, req)), 1, newer);
        let mut ended = false;
        for (id, _, _) in &sent[1..] {
            if let Some(SyncStep::Ended { agreed: false, .. }) = sync.on_response(*id, None, 1, newer) {
                ended = true;
            }
        }
        assert!(ended && sync.is_idle());
        let before = sync.chunk_bytes;
        // Another peer offers the same root: only the missing chunks are asked for.
        let asks = sync.start([2], SyncReason::Behind);
        let (id, _, _) = send(&mut sync, &mut next, asks).remove(0);
        let Some(SyncStep::Send(out)) = sync.on_response(id, Some(offer(&good)), 1, newer) else { panic!() };
        assert!(out.iter().all(|(_, r)| !matches!(r, SyncRequest::Chunk { index: 0, .. })), "{out:?}");
        assert!(before > 0);
    }

    #[test]
    fn chunks_kept_before_a_restart_are_not_fetched_again() {
        let good = StateSnapshot::of(&state(5, 1.0));
        let kept = vec![(0, good.chunk(0).unwrap().to_vec()), (1, vec![0; 3])];
        let mut sync = Sync::new(600_000, 600_000 * 8 + 1024).with_stored_chunks(good.root, kept);
        let mut next = 0;
        let asks = sync.start([1], SyncReason::Behind);
        let (id, _, _) = send(&mut sync, &mut next, asks).remove(0);
        let Some(SyncStep::Send(out)) = sync.on_response(id, Some(offer(&good)), 1, newer) else { panic!() };
        let asked: Vec<u32> = out
            .iter()
            .filter_map(|(_, r)| match r {
                SyncRequest::Chunk { index, .. } => Some(*index),
                SyncRequest::Offer | SyncRequest::Joining { .. } => None,
            })
            .collect();
        // Chunk 0 was kept and verifies; the kept chunk 1 is garbage and is fetched again.
        assert_eq!(asked, vec![1, 2, 3, 4]);
    }

    #[test]
    fn two_peers_that_disagree_give_no_state() {
        let (a, b) = (StateSnapshot::of(&state(5, 1.0)), StateSnapshot::of(&state(5, 2.0)));
        let mut sync = Sync::new(600_000, 600_000 * 8 + 1024);
        let mut next = 0;
        let asks = sync.start([1, 2], SyncReason::Behind);
        let mut last = None;
        for (id, peer, _) in send(&mut sync, &mut next, asks) {
            last = sync.on_response(id, Some(offer(if peer == 1 { &a } else { &b })), 2, newer).or(last);
        }
        assert!(matches!(last, Some(SyncStep::Ended { agreed: false, .. })));
    }
}
