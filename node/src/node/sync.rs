//! The node's side of state sync: sending the engine's sync requests over
//! request-response and handing their answers back, answering peers' requests
//! as the engine says (offers and chunks from the snapshots this node serves,
//! built on the writer worker), and logging what the engine notes.

use libp2p::{request_response, PeerId};
use starling_protocol::{
    engine::{Answer, Input, Note, RequestId},
    wire::{SyncRequest, SyncResponse},
    PublicKey, StateOffer,
};
use tracing::{debug, info, warn};

use super::{
    bounded::MAX_SYNC_REQUESTS,
    workers::{Job, Kind},
    Node, NodeError,
};
use crate::{metrics::ReasonLabel, net, statesync::hex};

/// Offer requests that may wait for a snapshot; more are answered "unavailable"
/// (the asker asks again, or asks others).
const PENDING_OFFERS: usize = 32;

impl Node {
    /// Sends one of the engine's sync requests; `id` is the engine's when it
    /// waits for the answer (a joining notice's is not waited for). Returns
    /// the engine's input when the request cannot go out (a key with no peer
    /// id, or [`MAX_SYNC_REQUESTS`] in flight): it failed at once.
    pub(super) fn send_sync(
        &mut self,
        peer: PublicKey,
        id: Option<RequestId>,
        request: SyncRequest,
    ) -> Option<Input> {
        let failed = id.map(|id| Input::SyncResponse { id, response: None });
        let Some(peer) = net::peer_id(&peer) else { return failed };
        if id.is_some() && self.sync_requests.len() >= MAX_SYNC_REQUESTS {
            warn!(%peer, in_flight = self.sync_requests.len(), "too many state sync requests in flight; failing this one");
            return failed;
        }
        let sent = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        if let Some(id) = id {
            self.sync_requests.insert(sent, id);
        }
        None
    }

    /// The answer (or `None`: the request failed) to one of our sync requests.
    pub(super) fn on_sync_response(
        &mut self,
        sent: request_response::OutboundRequestId,
        response: Option<SyncResponse>,
    ) -> Result<(), NodeError> {
        let Some(id) = self.sync_requests.remove(&sent) else { return Ok(()) };
        self.drive(Input::SyncResponse { id, response })?;
        for (root, index, bytes) in self.engine.take_fresh_chunks() {
            if self.kept_chunks_root != Some(root) {
                // Chunks of another state are of no use any more.
                if let Err(e) = self.store.clear_sync_chunks() {
                    warn!(error = %e, "cannot forget the chunks kept from an earlier state fetch");
                }
                self.kept_chunks_root = Some(root);
            }
            if let Err(e) = self.store.save_sync_chunk(&root, index, &bytes) {
                warn!(error = %e, "cannot keep a fetched chunk on disk; a restart would fetch it again");
            }
        }
        Ok(())
    }

    /// Answers a peer's sync request as the engine says, within the peer's
    /// rate limits (over them: `Unavailable`, before any work). An offer needs
    /// the snapshot of our state: without one at hand, the request waits for
    /// the writer to build it.
    pub(super) fn serve_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: request_response::ResponseChannel<SyncResponse>,
    ) -> Result<(), NodeError> {
        let Some(key) = net::peer_key(&peer) else {
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, SyncResponse::Unavailable);
            return Ok(());
        };
        if let Err((kind, limited)) = self.sync_limits.check(&peer, &request, std::time::Instant::now()) {
            self.metrics.sync_requests_limited.get_or_create(&ReasonLabel { reason: kind.into() }).inc();
            debug!(%peer, kind, retry_in = ?limited.retry_in, "a peer asked for state over its rate limit; answering unavailable");
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, SyncResponse::Unavailable);
            return Ok(());
        }
        let answer = self.engine.serve(self.now_ms(), key, &request);
        let outputs = self.engine.take_outputs();
        self.apply(outputs)?;
        let response = match answer {
            Answer::Noted => {
                if let SyncRequest::Joining { from } = request {
                    debug!(%peer, from, "peer says when it starts contributing");
                }
                SyncResponse::Noted
            }
            Answer::Unavailable => SyncResponse::Unavailable,
            Answer::Offer { expected_from, deltas, expected } => {
                match self.snapshots.newest_of(self.state.round, &self.state.lineage) {
                    Some(snapshot) => SyncResponse::Offer(StateOffer {
                        manifest: snapshot.manifest.clone(),
                        expected_from,
                        deltas,
                        expected,
                    }),
                    None if self.offers.len() < PENDING_OFFERS && !self.stopping => {
                        self.offers.push_back((key, channel));
                        self.want_snapshot();
                        return Ok(());
                    }
                    None => SyncResponse::Unavailable,
                }
            }
            Answer::Chunk { root, index } => match self.snapshots.chunk(&root, index) {
                Some(bytes) => SyncResponse::Chunk(bytes),
                None => SyncResponse::Unavailable,
            },
        };
        let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
        Ok(())
    }

    /// Has the writer find or write the state file of our state if offers
    /// wait for it and none is on its way (nor can be, while a merge has the
    /// state; a merge or an install in the queue brings its checkpoint's file).
    pub(super) fn want_snapshot(&mut self) {
        if self.offers.is_empty()
            || self.lent
            || self.stopping
            || self.workers.pending(Kind::Snapshot) > 0
            || self.workers.pending(Kind::Merge) > 0
            || self.snapshots.newest_of(self.state.round, &self.state.lineage).is_some()
        {
            return;
        }
        let job = Job::Snapshot { state: self.state.clone(), store: self.store.clone() };
        let _ = self.workers.submit(job, &self.metrics);
    }

    /// Answers the waiting offer requests "unavailable" (no state file to serve).
    pub(super) fn refuse_offers(&mut self) {
        while let Some((_, channel)) = self.offers.pop_front() {
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, SyncResponse::Unavailable);
        }
    }

    /// Answers the waiting offer requests, if the snapshot of our state is at hand.
    pub(super) fn answer_offers(&mut self) -> Result<(), NodeError> {
        let Some(snapshot) = self.snapshots.newest_of(self.state.round, &self.state.lineage) else {
            return Ok(());
        };
        while let Some((key, channel)) = self.offers.pop_front() {
            // Asked afresh: the round's deltas may have changed while the request waited.
            let response = match self.engine.serve(self.now_ms(), key, &SyncRequest::Offer) {
                Answer::Offer { expected_from, deltas, expected } => SyncResponse::Offer(StateOffer {
                    manifest: snapshot.manifest.clone(),
                    expected_from,
                    deltas,
                    expected,
                }),
                _ => SyncResponse::Unavailable,
            };
            let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
        }
        let outputs = self.engine.take_outputs();
        self.apply(outputs)
    }

    /// Logs what the engine noted.
    pub(super) fn log_note(&self, note: Note) {
        match note {
            Note::StartingShort { peers, wanted } => {
                warn!(peers, wanted, "starting with fewer peers than --wait-peers")
            }
            Note::Behind { by } => info!(behind_by = by, "a peer is ahead; syncing state"),
            Note::Diverged { round } => warn!(
                round,
                "most deltas of this round came from a state other than ours; fetching the majority's state"
            ),
            Note::Outnumbered { round, elsewhere, peers } => warn!(
                round,
                elsewhere,
                peers,
                "most peers train from a lineage other than ours (late deltas included); fetching the majority's state"
            ),
            Note::OtherLineage { round, left_out } => info!(
                round,
                left_out,
                "left out of the merge the deltas trained from a state other than ours"
            ),
            Note::Asking { reason, peers } => {
                debug!(?reason, peers, "asking run peers which state they serve")
            }
            Note::NoAgreement { offers, reached, required } => info!(
                offers,
                reached,
                required,
                "no state is announced by a majority of the peers reached yet; will ask again"
            ),
            Note::NotNewer { round } => info!(round, "the agreed state is not newer than ours; keeping ours"),
            Note::OfferRefused { peer, reason } => warn!(%peer, %reason, "refused a state offer"),
            Note::Fetching { round, root, peers, reached, chunks, kept } => {
                if kept > 0 {
                    info!(kept, "resuming a state fetch with the chunks already held");
                }
                info!(
                    round,
                    root = %hex(&root),
                    peers,
                    reached,
                    chunks,
                    "fetching the state several peers announce"
                )
            }
            Note::BadChunk { peer, reason } => warn!(
                %peer,
                %reason,
                "peer sent a chunk that does not match the agreed state; dropping it as a source"
            ),
            Note::SourceDropped { peer, index } => {
                debug!(%peer, index, "peer did not serve a chunk; dropping it as a source")
            }
            Note::Stalled { held, of } => warn!(
                held,
                of, "no peer serves the state being fetched any more; keeping its chunks and asking again"
            ),
            Note::Fetched { round, chunks } => info!(round, chunks, "state fetched and verified"),
            Note::Undecodable { reason } => {
                warn!(%reason, "the agreed state does not decode; will ask again")
            }
            Note::Outdated { round } => debug!(round, "a fetched state is no longer ahead of ours"),
        }
    }

    /// Whether the engine is fetching a state (for `/status`).
    pub(super) fn syncing(&self) -> bool {
        self.engine.syncing() || self.engine.rounds().observing()
    }
}
