//! The node's side of state sync: sending the engine's sync requests over
//! request-response and handing their answers back, answering peers' requests
//! as the engine says (offers and chunks from the snapshots this node serves),
//! installing a state the engine chose, and logging what the engine notes.

use libp2p::{request_response, PeerId};
use starling_protocol::{
    engine::{Answer, Input, Note, RequestId},
    wire::{SyncRequest, SyncResponse},
    Admission, ModelState, PublicKey, SignedDelta, StateOffer,
};
use tracing::{debug, info, warn};

use super::{Node, NodeError, NodeEvent};
use crate::{net, statesync::hex};

impl Node {
    /// Sends one of the engine's sync requests; `id` is the engine's when it
    /// waits for the answer (a joining notice's is not waited for).
    pub(super) fn send_sync(&mut self, peer: PublicKey, id: Option<RequestId>, request: SyncRequest) {
        let Some(peer) = net::peer_id(&peer) else { return };
        let sent = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        if let Some(id) = id {
            self.sync_requests.insert(sent, id);
        }
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

    /// Installs the state the engine chose, then the deltas of its round that verify.
    pub(super) fn install(
        &mut self,
        state: ModelState,
        from: u64,
        expected_from: u64,
        deltas: Vec<SignedDelta>,
    ) -> Result<(), NodeError> {
        info!(
            from,
            to = state.round,
            expected_from,
            params_hash = %hex(&state.params_hash()),
            "installed the state of the swarm"
        );
        self.state = state;
        let checkpoint_started = std::time::Instant::now();
        self.store.save_checkpoint(&self.state, &self.residual)?;
        self.busy.work(&self.metrics, "checkpoint", checkpoint_started.elapsed());
        self.store.clear_sync_chunks()?;
        self.kept_chunks_root = None;
        self.metrics.state_syncs.inc();
        if let Some(events) = &self.events {
            let _ = events.send(NodeEvent::StateInstalled {
                node: self.me,
                from,
                round: self.state.round,
                traffic: self.metrics.transport_bytes(),
            });
        }
        let rules = self.spec.delta_rules();
        for delta in deltas {
            if delta.validate(&rules).is_ok() && self.engine.admit(&delta.header) == Admission::Accept {
                self.drive(Input::PeerDelta(delta))?;
            }
        }
        Ok(())
    }

    /// Answers a peer's sync request as the engine says.
    pub(super) fn serve_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<SyncResponse, NodeError> {
        let Some(key) = net::peer_key(&peer) else { return Ok(SyncResponse::Unavailable) };
        let answer = self.engine.serve(self.now_ms(), key, &request);
        let outputs = self.engine.take_outputs();
        self.apply(outputs)?;
        Ok(match answer {
            Answer::Noted => {
                if let SyncRequest::Joining { from } = request {
                    debug!(%peer, from, "peer says when it starts contributing");
                }
                SyncResponse::Noted
            }
            Answer::Unavailable => SyncResponse::Unavailable,
            Answer::Offer { expected_from, deltas } => {
                let snapshot_started = std::time::Instant::now();
                let snapshot = self.snapshots.of(&self.state);
                self.busy.work(&self.metrics, "snapshot", snapshot_started.elapsed());
                SyncResponse::Offer(StateOffer { manifest: snapshot.manifest.clone(), expected_from, deltas })
            }
            Answer::Chunk { root, index } => match self.snapshots.chunk(&root, index) {
                Some(bytes) => SyncResponse::Chunk(bytes),
                None => SyncResponse::Unavailable,
            },
        })
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
            Note::Asking { reason, peers } => {
                debug!(?reason, peers, "asking run peers which state they serve")
            }
            Note::NoAgreement { offers, reached, required } => info!(
                offers,
                reached,
                required,
                "no state is announced by a majority of the peers reached yet; will ask again"
            ),
            Note::NotNewer { round } => debug!(round, "the agreed state is not newer than ours"),
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
