//! Deltas too large for gossip (over `--pull-above`): the node gossips a
//! signed header (an announcement) and keeps the payload to serve; a peer
//! that wants the delta checks the header, asks the peer that forwarded the
//! announcement for the payload (see `starling_net::payload`), and handles
//! the whole delta as if it had come on gossip. gossipsub forwards an
//! announcement only once its delta is verified, so whoever forwards one
//! holds the payload; each node fetches each payload once.
//!
//! Bounds: [`MAX_HELD`] payloads, of the current and the next round (a
//! merged round's are let go at its merge), so no more than the round state
//! holds anyway; each served at most once to each peer; [`MAX_PULLS`] fetches
//! in flight, each trying at most [`MAX_ASKS`] peers.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use libp2p::{
    gossipsub,
    request_response::{self, OutboundRequestId},
    PeerId,
};
use starling_protocol::{delta::SignedHeader, engine::Input, round::Admission, wire, Refusal, SignedDelta};
use tracing::{debug, warn};

use super::workers::{Origin, Unverified, INLINE_VERIFY_BYTES};
use super::{Node, NodeError};
use crate::net::payload::{PayloadRequest, PayloadResponse};

/// Payloads held to serve, at most.
pub(super) const MAX_HELD: usize = 256;
/// Fetches in flight, at most; an announcement past it is ignored.
pub(super) const MAX_PULLS: usize = 64;
/// Peers asked for one payload, at most: the forwarder, then other run peers.
pub(super) const MAX_ASKS: usize = 3;

/// One payload held to serve.
struct Held {
    round: u64,
    payload: Bytes,
    /// Peers it was served to: each gets it once.
    served: BTreeSet<PeerId>,
}

/// A fetch in flight: the announcement it answers and who was asked.
pub(super) struct Pull {
    signed: SignedHeader,
    /// The announcement's gossip message, which gets the verdict.
    id: gossipsub::MessageId,
    source: PeerId,
    asked: Vec<PeerId>,
}

/// Payloads held and fetched.
#[derive(Default)]
pub(super) struct Pulls {
    held: HashMap<[u8; 32], Held>,
    pending: HashMap<OutboundRequestId, Pull>,
}

impl Pulls {
    /// Keeps `payload` (of a delta of `round`) to serve when `round` is the
    /// current or the next one, and lets go of those of rounds before
    /// `current`; past [`MAX_HELD`], the earliest round goes.
    pub(super) fn hold(&mut self, round: u64, hash: [u8; 32], payload: Bytes, current: u64) {
        self.forget_before(current);
        if round < current || round > current + 1 {
            return;
        }
        if self.held.len() >= MAX_HELD && !self.held.contains_key(&hash) {
            let earliest = self.held.iter().min_by_key(|(_, held)| held.round).map(|(hash, _)| *hash);
            match earliest {
                Some(earliest) if self.held[&earliest].round <= round => {
                    self.held.remove(&earliest);
                }
                _ => return,
            }
        }
        self.held.entry(hash).or_insert(Held { round, payload, served: BTreeSet::new() });
    }

    /// Lets go of the payloads of rounds before `current` (merged ones).
    pub(super) fn forget_before(&mut self, current: u64) {
        self.held.retain(|_, held| held.round >= current);
    }

    /// The payload with this hash, if held.
    fn get(&self, hash: &[u8; 32]) -> Option<Bytes> {
        self.held.get(hash).map(|held| held.payload.clone())
    }

    /// The payload for `peer`: `None` when not held, or already served to it.
    pub(super) fn serve(&mut self, peer: PeerId, hash: &[u8; 32]) -> PayloadResponse {
        let held = self.held.get_mut(hash)?;
        held.served.insert(peer).then(|| held.payload.clone())
    }

    fn pulling(&self, hash: &[u8; 32]) -> bool {
        self.pending.values().any(|pull| &pull.signed.header.payload_hash == hash)
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held.values().map(|held| held.payload.len()).sum()
    }
}

impl Node {
    /// Publishes our delta: whole on gossip, or (over `--pull-above`) as an
    /// announcement, its payload held for peers to fetch.
    pub(super) fn publish_delta(&mut self, delta: &SignedDelta, bytes: Bytes) {
        // The signed delta, whichever way it goes: what each peer receives of it once.
        self.published_bytes += bytes.len() as u64;
        let (topic, message) = if bytes.len() > self.options.net.pull_above {
            self.hold_payload(delta);
            (self.announce_topic.clone(), wire::encode_announcement(&SignedHeader::of(delta)))
        } else {
            (self.topic.clone(), Vec::from(bytes))
        };
        self.metrics.deltas_published.inc();
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, message) {
            // Alone in the run: nobody to send to, and the round closes on our delta alone.
            debug!(error = %e, "delta not published");
        }
    }

    /// Keeps an accepted delta's payload to serve, whatever its size: its
    /// announcement is forwarded, and peers whose `--pull-above` is lower than
    /// ours (or a delta just over the limit once framed) fetch it from us. The
    /// bytes are the ones the round state holds, shared, not copied.
    pub(super) fn hold_accepted(&mut self, delta: &SignedDelta) {
        self.hold_payload(delta);
    }

    fn hold_payload(&mut self, delta: &SignedDelta) {
        let current = self.state.round;
        self.pulls.hold(delta.header.round, delta.header.payload_hash, delta.payload.clone(), current);
    }

    /// An announcement from gossip: checked, then its payload fetched when the
    /// delta would be of use (or is evidence), or a verdict given at once.
    pub(super) fn on_announcement(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let checked = wire::decode_announcement(data)
            .map_err(|e| Refusal::Malformed(e.to_string()))
            .and_then(|signed| signed.validate(&self.rules).map(|()| signed));
        let signed = match checked {
            Ok(signed) => signed,
            Err(refusal) => {
                warn!(peer = %source, reason = %refusal, "refused a delta announcement");
                self.refuse(&source, refusal.label());
                return self.verdict(&id, &source, gossipsub::MessageAcceptance::Reject);
            }
        };
        match self.engine.admit(&signed.header) {
            // Worth its payload: to merge, to catch an equivocation, or as
            // evidence of another lineage (a stale delta's base).
            Admission::Accept | Admission::Equivocation | Admission::Stale => {}
            Admission::Replayed => {
                warn!(peer = %source, sender = %signed.header.sender, round = signed.header.round, "refused an announcement of a payload already seen in another round or from another key (a replay)");
                self.refuse_replay(&source, &signed.header.sender);
                self.drive(Input::PeerReplayed(signed.header))?;
                // Forwarded, not pulled: see the same case in `events.rs`.
                return self.verdict(&id, &source, gossipsub::MessageAcceptance::Accept);
            }
            other => {
                self.metrics.ignored(&format!("{other:?}").to_lowercase());
                return self.verdict(&id, &source, gossipsub::MessageAcceptance::Ignore);
            }
        }
        if let Some(payload) = self.pulls.get(&signed.header.payload_hash) {
            let delta = SignedDelta::from_parts(signed, payload);
            return self.check_pulled(source, id, delta);
        }
        if self.pulls.pending.len() >= MAX_PULLS || self.pulls.pulling(&signed.header.payload_hash) {
            self.metrics.ignored("pull_busy");
            return self.verdict(&id, &source, gossipsub::MessageAcceptance::Ignore);
        }
        self.ask(Pull { signed, id, source, asked: Vec::new() }, source);
        Ok(())
    }

    /// Asks `peer` for the pull's payload.
    fn ask(&mut self, mut pull: Pull, peer: PeerId) {
        pull.asked.push(peer);
        let request = PayloadRequest(pull.signed.header.payload_hash);
        let request_id = self.swarm.behaviour_mut().payload.send_request(&peer, request);
        self.pulls.pending.insert(request_id, pull);
    }

    /// A peer asks for a payload we may hold.
    pub(super) fn on_payload_request(
        &mut self,
        peer: PeerId,
        request: PayloadRequest,
        channel: request_response::ResponseChannel<PayloadResponse>,
    ) {
        let response = self.pulls.serve(peer, &request.0);
        if response.is_none() {
            debug!(%peer, "asked for a payload not held, or already sent to it");
        }
        let _ = self.swarm.behaviour_mut().payload.send_response(channel, response);
    }

    /// A payload came back (`Some`), or the peer did not hold it or failed
    /// (`None`): the next peer is asked, up to [`MAX_ASKS`].
    pub(super) fn on_payload_response(
        &mut self,
        request_id: OutboundRequestId,
        response: Option<PayloadResponse>,
    ) -> Result<(), NodeError> {
        let Some(pull) = self.pulls.pending.remove(&request_id) else { return Ok(()) };
        match response.flatten() {
            Some(payload) => {
                self.metrics.payload_bytes_pulled.inc_by(payload.len() as u64);
                let Pull { signed, id, source, .. } = pull;
                self.check_pulled(source, id, SignedDelta::from_parts(signed, payload))
            }
            None => {
                let next = self
                    .run_peers
                    .iter()
                    .find(|peer| !pull.asked.contains(peer) && self.swarm.is_connected(peer))
                    .copied();
                match next {
                    Some(peer) if pull.asked.len() < MAX_ASKS => {
                        debug!(%peer, "asking another peer for a payload");
                        self.ask(pull, peer);
                        Ok(())
                    }
                    _ => {
                        debug!(peer = %pull.source, "no peer sent an announced payload; ignoring it");
                        self.metrics.ignored("payload_unavailable");
                        self.verdict(&pull.id, &pull.source, gossipsub::MessageAcceptance::Ignore)
                    }
                }
            }
        }
    }

    /// A pulled delta goes the way of a gossiped one: verified (by a worker
    /// when large), then admitted, and the verdict given to its announcement.
    fn check_pulled(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        delta: SignedDelta,
    ) -> Result<(), NodeError> {
        if delta.payload.len() > INLINE_VERIFY_BYTES {
            self.verify_later(Origin::Gossip { source, id }, Unverified::Decoded(delta));
            return Ok(());
        }
        let verified = delta.validate(&self.rules).map(|()| delta);
        self.on_verified(source, id, verified)
    }

    fn verdict(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        acceptance: gossipsub::MessageAcceptance,
    ) -> Result<(), NodeError> {
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(id, source, acceptance);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        crate::net::keypair(&ed25519_dalek::SigningKey::from_bytes(&[i; 32])).public().to_peer_id()
    }

    #[test]
    fn a_held_payload_is_served_once_to_each_peer() {
        let mut pulls = Pulls::default();
        pulls.hold(3, [1; 32], Bytes::from_static(b"abc"), 3);
        assert_eq!(pulls.serve(peer(1), &[1; 32]).as_deref(), Some(&b"abc"[..]));
        assert_eq!(pulls.serve(peer(1), &[1; 32]), None, "a second request of one peer gets nothing");
        assert_eq!(pulls.serve(peer(2), &[1; 32]).as_deref(), Some(&b"abc"[..]));
        assert_eq!(pulls.serve(peer(2), &[2; 32]), None, "not held");
    }

    #[test]
    fn merged_rounds_are_let_go_and_the_held_set_is_bounded() {
        let mut pulls = Pulls::default();
        pulls.hold(3, [1; 32], Bytes::from_static(b"r3"), 3);
        pulls.hold(4, [2; 32], Bytes::from_static(b"r4"), 3);
        pulls.hold(2, [3; 32], Bytes::from_static(b"r2"), 3);
        assert!(pulls.get(&[3; 32]).is_none(), "a merged round's payload is not kept");
        pulls.forget_before(4);
        assert!(pulls.get(&[1; 32]).is_none() && pulls.get(&[2; 32]).is_some());
        pulls.hold(6, [4; 32], Bytes::from_static(b"r6"), 4);
        assert!(pulls.get(&[4; 32]).is_none(), "only the current and the next round are kept");
        for i in 0..(MAX_HELD as u32 + 10) {
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            hash[31] = 9;
            pulls.hold(5, hash, Bytes::from_static(b"x"), 4);
        }
        assert_eq!(pulls.held.len(), MAX_HELD);
        assert!(pulls.get(&[2; 32]).is_none(), "the earliest round gave way");
        assert_eq!(pulls.held_bytes(), MAX_HELD);
    }
}
