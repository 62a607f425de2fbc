//! Peer accountability in the node: bans from equivocation proofs (caught here
//! or gossiped by peers), a private run's allowed keys, and counts of refused
//! deltas per peer and reason, kept in the store across restarts.
//!
//! Who is punished depends on who is to blame. A delta that fails validation
//! (forged, malformed, another run, a key the run does not allow) is never
//! forwarded by an honest node, so the peer that sent it is rejected, which
//! lowers its gossipsub score. A delta of a banned or equivocating key may
//! have been forwarded in good faith by an honest peer that had not yet seen
//! the second delta or the proof, so it is rejected only when it comes from
//! the guilty key itself and ignored otherwise; the proof punishes the key.

use libp2p::{gossipsub, PeerId};
use starling_protocol::{engine::Input, EquivocationProof, PublicKey, SignedDelta};
use starling_storage::RefusalCount;
use tracing::{error, info, warn};

use super::{Node, NodeError, NodeEvent};
use crate::net;

/// Why a ban is on record.
const EQUIVOCATION: &str = "equivocation";

impl Node {
    /// Reloads the bans of the datadir (re-checking each proof) into the round
    /// state and blocks those peers, and reloads the refusal counts.
    pub(super) fn load_accountability(&mut self) -> Result<(), NodeError> {
        let scan = self.store.bans()?;
        for bad in &scan.skipped {
            warn!(record = %bad.key, reason = %bad.reason, "skipping an unreadable ban record");
        }
        for ban in scan.bans {
            match EquivocationProof::from_untrusted(&ban.proof, self.spec.run_id()) {
                Ok((_, key)) if key == ban.key => {
                    let _ = self.engine.handle(0, Input::Ban(key));
                    self.block(&key);
                }
                Ok(_) | Err(_) => warn!(key = %ban.key, "skipping a ban whose proof does not verify"),
            }
        }
        if !self.engine.rounds().banned().is_empty() {
            info!(banned = self.engine.rounds().banned().len(), "reloaded bans");
        }
        self.refusals.load(self.store.refusals()?.into_iter().map(|c| ((c.key, c.reason), c.count)));
        Ok(())
    }

    /// Counts a refused message from `source`, by reason, in the metrics, the
    /// outcome and the per-peer counts the store keeps.
    pub(super) fn refuse(&mut self, source: &PeerId, reason: &'static str) {
        self.count_refused(reason);
        if let Some(key) = net::peer_key(source) {
            self.refusals.add((key, reason.to_string()), 1);
            self.refusals_dirty = true;
        }
    }

    /// Counts a refused replay, against `source` only when it signed it: a
    /// peer that forwarded it (as honest peers do: see `events.rs`) is not blamed.
    pub(super) fn refuse_replay(&mut self, source: &PeerId, sender: &PublicKey) {
        if blame(source, sender) == gossipsub::MessageAcceptance::Reject {
            self.refuse(source, "replayed");
        } else {
            self.count_refused("replayed");
        }
    }

    /// Counts a refusal by reason in the metrics and the outcome.
    fn count_refused(&mut self, reason: &'static str) {
        self.metrics.refused(reason);
        *self.refused_by_reason.entry(reason.to_string()).or_default() += 1;
    }

    /// Saves the per-peer refusal counts if they changed (those evicted from
    /// the bounded counts leave the store too).
    pub(super) fn save_refusals(&mut self) -> Result<(), NodeError> {
        if let Some(counts) = self.take_refusals() {
            self.store.save_refusals(&counts)?;
        }
        Ok(())
    }

    /// The per-peer refusal counts to save (with the next checkpoint), if they changed.
    pub(super) fn take_refusals(&mut self) -> Option<Vec<RefusalCount>> {
        if !self.refusals_dirty {
            return None;
        }
        self.refusals_dirty = false;
        Some(
            self.refusals
                .iter()
                .map(|((key, reason), count)| RefusalCount {
                    key: *key,
                    reason: reason.clone(),
                    count: *count,
                })
                .collect(),
        )
    }

    /// Refuses a valid delta whose key may not take part: not in a private run's
    /// allowed keys, or banned. Returns the refusal reason and the verdict for
    /// gossipsub, or `None` when the key may take part.
    pub(super) fn refuse_key(
        &self,
        source: &PeerId,
        delta: &SignedDelta,
    ) -> Option<(&'static str, gossipsub::MessageAcceptance)> {
        let sender = delta.header.sender;
        if self.allowed.as_ref().is_some_and(|allowed| !allowed.contains(&sender)) {
            warn!(peer = %source, key = %sender, "refused a delta signed by a key this private run does not allow (spec allowed_keys)");
            return Some(("not_allowed", gossipsub::MessageAcceptance::Reject));
        }
        if self.engine.rounds().is_banned(&sender) {
            return Some(("banned", blame(source, &sender)));
        }
        None
    }

    /// Stores, gossips and enforces the bans the round state caught since last asked.
    pub(super) fn publish_equivocations(&mut self) -> Result<(), NodeError> {
        for proof in self.engine.take_equivocations() {
            let key = proof.sender();
            warn!(key = %key, round = proof.round(), "caught an equivocation: one key signed two deltas for a round; banning it for the run");
            let bytes = proof.to_bytes();
            // The round state yields a proof only for a ban it remembers, so
            // the store stays within the same bound.
            self.store.ban(&key, &bytes, EQUIVOCATION)?;
            self.block(&key);
            self.report_ban(key, true);
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.proof_topic.clone(), bytes) {
                warn!(error = %e, "equivocation proof not published");
            }
        }
        Ok(())
    }

    /// A gossiped equivocation proof: verified, then the key is banned, and the
    /// proof forwarded if it was news.
    pub(super) fn on_proof(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: &[u8],
    ) -> Result<(), NodeError> {
        let acceptance = match EquivocationProof::from_untrusted(data, self.spec.run_id()) {
            Err(e) => {
                warn!(peer = %source, reason = %e, "refused an equivocation proof");
                self.refuse(&source, "bad_proof");
                gossipsub::MessageAcceptance::Reject
            }
            Ok((proof, key)) if key == self.me => {
                error!(round = proof.round(), "peers hold a valid proof that this node's key signed two deltas for one round; it is banned from the run");
                gossipsub::MessageAcceptance::Ignore
            }
            Ok((_, key)) if self.engine.rounds().is_banned(&key) => gossipsub::MessageAcceptance::Ignore,
            Ok((proof, key)) => {
                warn!(key = %key, round = proof.round(), peer = %source, "a peer proved an equivocation; banning the key for the run");
                self.drive(Input::Ban(key))?;
                // Past `max_banned` the round state no longer remembers a ban:
                // it is enforced now but not kept, on disk as in memory.
                if self.engine.rounds().is_banned(&key) {
                    self.store.ban(&key, data, EQUIVOCATION)?;
                    self.block(&key);
                }
                self.report_ban(key, false);
                gossipsub::MessageAcceptance::Accept
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
        Ok(())
    }

    /// Closes and refuses connections of a peer whose key is banned or, in a
    /// private run, not allowed. Returns whether it did.
    pub(super) fn refuse_connection(&mut self, peer: PeerId) -> bool {
        let key = net::peer_key(&peer);
        let allowed = match (&self.allowed, &key) {
            (None, _) => true,
            (Some(allowed), Some(key)) => allowed.contains(key),
            (Some(_), None) => false,
        };
        let banned = key.is_some_and(|k| self.engine.rounds().is_banned(&k));
        if allowed && !banned {
            return false;
        }
        self.upkeep.forget(&peer);
        if !allowed {
            let key = key.map_or_else(|| "none (not an ed25519 peer)".to_string(), |k| k.to_string());
            warn!(%peer, %key, "closing the connection of a peer whose key this private run does not allow (spec allowed_keys)");
            if let Some(oldest) = self.refused_blocks.insert(peer) {
                self.swarm.behaviour_mut().blocked.unblock_peer(oldest);
            }
        }
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        true
    }

    fn report_ban(&self, key: PublicKey, caught: bool) {
        if let Some(events) = &self.events {
            let _ = events.send(NodeEvent::Banned {
                node: self.me,
                key,
                round: self.engine.rounds().round(),
                caught,
            });
        }
    }

    /// Blocks a banned key's peer. Bound: the bans (see [`starling_storage::MAX_BANS`]).
    fn block(&mut self, key: &PublicKey) {
        if let Some(peer) = net::peer_id(key) {
            self.upkeep.forget(&peer);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    /// The gossipsub scores of the peers this node has seen, by key.
    pub(super) fn peer_scores(&self) -> Vec<(PublicKey, f64)> {
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let mut peers: Vec<PeerId> = gossipsub.all_peers().map(|(p, _)| *p).collect();
        peers.extend(self.refusals.keys().filter_map(|(k, _)| net::peer_id(k)));
        peers.extend(self.met_peers.iter().copied());
        peers.extend(self.engine.rounds().banned().iter().filter_map(net::peer_id));
        peers.sort();
        peers.dedup();
        peers.into_iter().filter_map(|p| Some((net::peer_key(&p)?, gossipsub.peer_score(&p)?))).collect()
    }
}

/// Reject a delta when the peer that sent it signed it; ignore it when an
/// honest peer may have forwarded it before it knew better.
pub(super) fn blame(source: &PeerId, sender: &PublicKey) -> gossipsub::MessageAcceptance {
    if net::peer_key(source).as_ref() == Some(sender) {
        gossipsub::MessageAcceptance::Reject
    } else {
        gossipsub::MessageAcceptance::Ignore
    }
}
