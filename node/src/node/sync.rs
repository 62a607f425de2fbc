//! The node's side of state sync: asking run peers for offers, fetching and
//! installing the state they agree on, and serving its own state and round to
//! peers that ask (see [`crate::statesync`] for the fetch itself).

use std::time::{Duration, Instant};

use libp2p::{request_response, PeerId};
use starling_protocol::{
    wire::{SyncRequest, SyncResponse},
    Admission, Event, ModelState, SignedDelta, StateOffer,
};
use tracing::{debug, info, warn};

use super::{Node, NodeError, NodeEvent, Phase};
use crate::{
    net,
    statesync::{hex, SyncReason, SyncStep},
};

impl Node {
    /// Asks every run peer which state it serves (see [`crate::statesync`]).
    pub(super) fn start_sync(&mut self, reason: SyncReason) {
        let peers: Vec<PeerId> = self.run_peers.iter().copied().collect();
        let out = self.sync.start(peers, reason);
        self.send_sync(out);
        if self.sync.is_idle() && reason == SyncReason::Probe && self.phase == Phase::Probing {
            // Every peer left before we could ask: nobody to catch up with.
            self.sync_retry = None;
            self.start_running();
        }
    }

    pub(super) fn send_sync(&mut self, out: Vec<(PeerId, SyncRequest)>) {
        for (peer, request) in out {
            let id = self.swarm.behaviour_mut().sync.send_request(&peer, request.clone());
            self.sync.sent(id, peer, &request);
        }
    }

    pub(super) fn sync_tick(&mut self) -> Result<(), NodeError> {
        if let Some((at, reason)) = self.sync_retry {
            if Instant::now() >= at && self.sync.is_idle() {
                self.sync_retry = None;
                self.start_sync(reason);
            }
        }
        let connected = self.run_peers.len();
        let wanted = self.wanted_snapshot();
        let step = self.sync.on_tick(connected, |m, r| wanted(m.round, m.lineage, r));
        if let Some(step) = step {
            self.on_sync_step(step)?;
        }
        Ok(())
    }

    /// Whether a state several peers agree on is worth installing: a copy of
    /// what that depends on, so the sync driver can be borrowed mutably beside it.
    pub(super) fn wanted_snapshot(&self) -> impl Fn(u64, [u8; 32], SyncReason) -> bool {
        let (own_round, own_lineage, observing) =
            (self.state.round, self.state.lineage, self.rounds.observing());
        move |round, lineage, reason| match reason {
            SyncReason::Probe => round > own_round,
            SyncReason::Behind => round > own_round || (observing && lineage != own_lineage),
            SyncReason::Diverged => round > own_round || (round == own_round && lineage != own_lineage),
        }
    }

    pub(super) fn on_sync_response(
        &mut self,
        id: request_response::OutboundRequestId,
        response: Option<SyncResponse>,
    ) -> Result<(), NodeError> {
        let wanted = self.wanted_snapshot();
        let step =
            self.sync.on_response(id, response, self.run_peers.len(), |m, r| wanted(m.round, m.lineage, r));
        for (root, index, bytes) in self.sync.take_fresh_chunks() {
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
        match step {
            Some(step) => self.on_sync_step(step),
            None => Ok(()),
        }
    }

    pub(super) fn on_sync_step(&mut self, step: SyncStep<PeerId>) -> Result<(), NodeError> {
        match step {
            SyncStep::Send(out) => {
                self.send_sync(out);
                Ok(())
            }
            SyncStep::Done { state, expected_from, deltas, reason } => {
                // Rounds may have moved on while the chunks came in.
                if self.wanted_snapshot()(state.round, state.lineage, reason) {
                    self.install(state, expected_from, deltas)?;
                } else {
                    debug!(round = state.round, "a fetched state is no longer ahead of ours");
                }
                self.after_sync(reason);
                Ok(())
            }
            SyncStep::Ended { reason, agreed } => {
                if !agreed {
                    if reason == SyncReason::Probe {
                        self.failed_probes += 1;
                    }
                    // Peers one merge apart announce different roots for a moment; ask again soon.
                    if reason != SyncReason::Probe || self.failed_probes < 5 {
                        self.sync_retry = Some((Instant::now() + Duration::from_millis(500), reason));
                        if reason == SyncReason::Probe {
                            return Ok(());
                        }
                    }
                }
                self.after_sync(reason);
                Ok(())
            }
        }
    }

    pub(super) fn after_sync(&mut self, reason: SyncReason) {
        if reason == SyncReason::Probe && self.phase == Phase::Probing {
            self.sync_retry = None;
            self.start_running();
        } else {
            self.maybe_train();
        }
    }

    /// Installs a state the peers agree on, then the deltas of their current round.
    pub(super) fn install(
        &mut self,
        state: ModelState,
        expected_from: u64,
        deltas: Vec<SignedDelta>,
    ) -> Result<(), NodeError> {
        info!(
            from = self.state.round,
            to = state.round,
            expected_from,
            params_hash = %hex(&state.params_hash()),
            "installed the state of the swarm"
        );
        let from = self.state.round;
        self.state = state;
        self.store.save_checkpoint(&self.state, &self.residual)?;
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
        let now = self.now_ms();
        let synced = Event::Synced { round: self.state.round, expected_from };
        let mut actions = self.rounds.handle(now, synced);
        if self.rounds.observing() {
            // Peers saw us connect in rounds of their own; tell them all the one
            // our source gave, so none waits for us before then.
            for peer in self.run_peers.clone() {
                self.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, SyncRequest::Joining { from: expected_from });
            }
        }
        let (run, codec, params) = (self.spec.run_id(), self.spec.codec, self.spec.param_count());
        for delta in deltas {
            if delta.validate(run, codec, params).is_ok()
                && self.rounds.admit(&delta.header) == Admission::Accept
            {
                actions.extend(self.rounds.handle(now, Event::PeerDelta(delta)));
            }
        }
        self.apply(actions)
    }

    /// Answers a peer's sync request: our offer, or a chunk of a state we serve.
    pub(super) fn serve_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<SyncResponse, NodeError> {
        if let SyncRequest::Joining { from } = request {
            if let Some(key) = net::peer_key(&peer).filter(|_| self.run_peers.contains(&peer)) {
                debug!(%peer, from, "peer says when it starts contributing");
                let actions = self.rounds.handle(self.now_ms(), Event::PeerStarts { peer: key, from });
                self.apply(actions)?;
            }
            return Ok(SyncResponse::Noted);
        }
        if self.phase == Phase::Gathering {
            return Ok(SyncResponse::Unavailable);
        }
        Ok(match request {
            SyncRequest::Joining { .. } => SyncResponse::Noted,
            SyncRequest::Offer => {
                let snapshot = self.snapshots.of(&self.state);
                let expected_from =
                    net::peer_key(&peer).map_or(self.state.round + 2, |k| self.rounds.expected_from(&k));
                SyncResponse::Offer(StateOffer {
                    manifest: snapshot.manifest.clone(),
                    expected_from,
                    deltas: self.rounds.current_deltas(),
                })
            }
            SyncRequest::Chunk { root, index } => match self.snapshots.chunk(&root, index) {
                Some(bytes) => SyncResponse::Chunk(bytes),
                None => SyncResponse::Unavailable,
            },
        })
    }
}
