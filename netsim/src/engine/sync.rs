//! State sync in a virtual run: the engine's sync requests and their answers
//! travel the simulated links (latency both ways, the answer's bytes through
//! the slower of the two ends' links), each node answers as its engine says
//! from a snapshot of its own state, and a fetched state is installed only
//! once the requesting engine has verified every chunk against the root a
//! majority of the peers it reached announced.

use std::rc::Rc;

use starling_protocol::{
    engine::{Answer, Input, Output, RequestId},
    wire::{self, SyncRequest, SyncResponse},
    Admission, ModelState, PublicKey, SignedDelta, StateOffer, StateSnapshot,
};

use super::{Engine, Happening, MS};
use crate::{link, SimError};

/// What a request costs on the wire beyond its encoding (framing, stream setup).
const REQUEST_OVERHEAD: u64 = 64;

impl Engine<'_> {
    /// Sends one of `node`'s sync requests to `peer`; `id` is the engine's
    /// when it waits for the answer. A peer that is down or on the other side
    /// of a partition never answers: the request fails after the
    /// request-response timeout, as it would over libp2p.
    pub(super) fn send_sync_request(
        &mut self,
        node: usize,
        peer: PublicKey,
        id: Option<RequestId>,
        request: SyncRequest,
    ) {
        let Some(to) = self.index_of(&peer) else { return };
        let latency = link::sample_latency(&self.sc.link.latency, &mut self.rng);
        let epoch = self.nodes[node].epoch;
        if !self.up(to) || self.nodes[to].side != self.nodes[node].side {
            if let Some(id) = id {
                let timeout = 10_000 * MS;
                self.schedule(self.now + timeout, Happening::SyncAnswer { node, id, response: None, epoch });
            }
            return;
        }
        let bytes = wire::encode_sync_request(&request).len() as u64 + REQUEST_OVERHEAD;
        self.ledger.sent(self.nodes[node].state.round, bytes);
        self.schedule(self.now + latency, Happening::SyncRequest { to, from: node, id, request });
    }

    /// A sync request reached `to`: its engine says how to answer, the answer
    /// travels back.
    pub(super) fn on_sync_request(
        &mut self,
        to: usize,
        from: usize,
        id: Option<RequestId>,
        request: SyncRequest,
    ) -> Result<(), SimError> {
        if !self.up(to) {
            return Ok(());
        }
        let asker = self.nodes[from].public;
        let answer = self.nodes[to].engine.serve(self.now / MS, asker, &request);
        let outputs = self.nodes[to].engine.take_outputs();
        self.apply(to, outputs)?;
        let forged = if self.sync_sybil(to) { self.forged_answer(&request) } else { None };
        let response = if let Some(forged) = forged {
            forged
        } else {
            match answer {
                Answer::Noted => SyncResponse::Noted,
                Answer::Unavailable => SyncResponse::Unavailable,
                Answer::Offer { expected_from, deltas, expected } => {
                    let snapshot = self.snapshot_of(to);
                    SyncResponse::Offer(StateOffer {
                        manifest: snapshot.manifest.clone(),
                        expected_from,
                        deltas,
                        expected,
                    })
                }
                Answer::Chunk { root, index } => match &self.nodes[to].snapshot {
                    Some(s) if s.root == root => {
                        s.chunk(index).map_or(SyncResponse::Unavailable, |c| SyncResponse::Chunk(c.to_vec()))
                    }
                    _ => SyncResponse::Unavailable,
                },
            }
        };
        let Some(id) = id.filter(|_| self.up(from)) else { return Ok(()) };
        let bytes = wire::encode_sync_response(&response).len() as u64 + REQUEST_OVERHEAD;
        let round = self.nodes[from].state.round;
        self.ledger.sync_bytes(round, bytes);
        let tx =
            link::transfer_time(bytes, link::slower(self.sc.link.uplink_mbps, self.sc.link.downlink_mbps));
        let latency = link::sample_latency(&self.sc.link.latency, &mut self.rng);
        let epoch = self.nodes[from].epoch;
        self.schedule(
            self.now + latency + tx,
            Happening::SyncAnswer { node: from, id, response: Some(response), epoch },
        );
        Ok(())
    }

    /// The snapshot node `node` serves of its current state, built when first asked.
    fn snapshot_of(&mut self, node: usize) -> Rc<StateSnapshot> {
        let n = &mut self.nodes[node];
        match &n.snapshot {
            Some(s) if s.manifest.round == n.state.round && s.manifest.lineage == n.state.lineage => {
                s.clone()
            }
            _ => {
                let s = Rc::new(StateSnapshot::of_flat(&n.state));
                n.snapshot = Some(s.clone());
                s
            }
        }
    }

    /// Installs the state `node`'s engine fetched and verified, then the
    /// deltas of its round that validate; returns what the engine asks next.
    pub(super) fn install(
        &mut self,
        node: usize,
        state: ModelState,
        deltas: Vec<SignedDelta>,
    ) -> Vec<Output> {
        self.untrack(node);
        let round = state.round;
        if self.forged_lineages.contains(&state.lineage) && !self.nodes[node].attacker {
            self.ledger.forged_states_installed += 1;
        }
        let n = &mut self.nodes[node];
        // The engine knows a training job from the old state is stale (and
        // says so when it returns); the epoch only changes with a crash.
        n.state = state;
        self.track(node);
        self.ledger.sync(round, 0);
        self.enter_round(node);
        self.take_offered(node, deltas)
    }

    /// Hands `node`'s engine the deltas of its round that came with offers
    /// and validate; returns what the engine asks next.
    pub(super) fn take_offered(&mut self, node: usize, deltas: Vec<SignedDelta>) -> Vec<Output> {
        let now = self.now / MS;
        let rules = self.rules;
        let mut outputs = Vec::new();
        for delta in deltas {
            let n = &mut self.nodes[node];
            if delta.validate(&rules).is_ok() && n.engine.admit(&delta.header) == Admission::Accept {
                outputs.extend(n.engine.handle(now, Input::PeerDelta(delta)));
            }
        }
        outputs
    }
}
