//! What a joining node tells its peers about when to expect its deltas, and
//! what it was told before it knew the teller.
//!
//! A peer that connects to a running node is expected from two rounds on (see
//! [`crate::round`]). A joiner that needs longer to agree on and fetch a state
//! would hold those rounds until their deadline, and peers that saw it connect
//! in different rounds would wait for it in different rounds: one side stays a
//! round behind, and the joiner, asking peers one merge apart, finds no state
//! a majority announces. So once a probe shows the peers ahead, the joiner
//! tells them it is syncing ([`SYNCING`]: expect nothing yet), and once it
//! runs, the round it contributes from. A peer's announcement can arrive
//! before the node counts that peer as connected (its subscription is still on
//! the way): it is kept, within a bound, until the peer connects.
//! Announcements travel as separate requests and can overtake one another: a
//! `SYNCING` heard after a round from the same peer, on the same connection,
//! is the older one (a node probes once per start), and is ignored.

use std::collections::{BTreeMap, BTreeSet};

use super::{Engine, Output, Phase};
use crate::keys::PublicKey;
use crate::wire::SyncRequest;
pub use crate::wire::SYNCING;

/// Most announcements kept from peers not (yet) connected.
const MAX_EARLY: usize = 256;

/// A node's own announcement and the ones it holds for peers not yet connected.
#[derive(Debug, Default)]
pub(super) struct Joining {
    /// Whether we told our peers we are syncing (and owe them a round).
    syncing_told: bool,
    /// Announcements from peers not yet connected; bound: [`MAX_EARLY`].
    early: BTreeMap<PublicKey, u64>,
    /// Connected peers that announced a round; bound: the connected peers.
    declared: BTreeSet<PublicKey>,
}

impl Joining {
    /// Whether to tell the peers we are syncing now (once per probe).
    pub(super) fn tell_syncing(&mut self) -> bool {
        !std::mem::replace(&mut self.syncing_told, true)
    }

    /// Whether a peer that connects now must hear we are syncing too.
    pub(super) fn told_syncing(&self) -> bool {
        self.syncing_told
    }

    /// Whether we still owe the peers the round we contribute from; clears it.
    pub(super) fn take_owed(&mut self) -> bool {
        std::mem::take(&mut self.syncing_told)
    }

    /// Whether connected `peer`'s announcement `from` is to be applied.
    pub(super) fn heard(&mut self, peer: PublicKey, from: u64) -> bool {
        if from == SYNCING {
            return !self.declared.contains(&peer);
        }
        self.declared.insert(peer);
        true
    }

    /// Keeps `peer`'s announcement until it connects.
    pub(super) fn early(&mut self, peer: PublicKey, from: u64) {
        let overtaken = from == SYNCING && self.early.get(&peer).is_some_and(|&f| f != SYNCING);
        if !overtaken && (self.early.len() < MAX_EARLY || self.early.contains_key(&peer)) {
            self.early.insert(peer, from);
        }
    }

    /// The announcement `peer` made before it connected, if any.
    pub(super) fn connected(&mut self, peer: &PublicKey) -> Option<u64> {
        let from = self.early.remove(peer)?;
        self.heard(*peer, from).then_some(from)
    }

    pub(super) fn left(&mut self, peer: &PublicKey) {
        self.early.remove(peer);
        self.declared.remove(peer);
    }
}

impl Engine {
    /// Tells every connected peer from which round to expect our deltas.
    pub(super) fn notify_peers(&mut self, from: u64) {
        for peer in self.peers.clone() {
            self.out.push(Output::Notify { peer, request: SyncRequest::Joining { from } });
        }
    }

    /// Once a probe shows the peers ahead, tells them we are syncing (see [`joining`]).
    pub(super) fn syncing_for_a_while(&mut self, ahead: bool) {
        if self.phase == Phase::Probing && ahead && self.joining.tell_syncing() {
            self.notify_peers(SYNCING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_announcements_are_bounded_and_taken_once() {
        let mut j = Joining::default();
        for i in 0..(MAX_EARLY + 10) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            j.early(PublicKey(key), 3);
        }
        assert_eq!(j.early.len(), MAX_EARLY);
        let first = PublicKey([0; 32]);
        assert_eq!(j.connected(&first), Some(3));
        assert_eq!(j.connected(&first), None);
        assert!(j.tell_syncing() && !j.tell_syncing() && j.take_owed() && !j.take_owed());
    }

    #[test]
    fn a_syncing_announcement_overtaken_by_a_round_is_ignored() {
        let (mut j, peer, other) = (Joining::default(), PublicKey([1; 32]), PublicKey([2; 32]));
        assert!(j.heard(peer, SYNCING), "a first SYNCING applies");
        assert!(j.heard(peer, 6));
        assert!(!j.heard(peer, SYNCING), "the older SYNCING arrived last");
        j.early(other, 6);
        j.early(other, SYNCING);
        assert_eq!(j.connected(&other), Some(6));
        assert!(!j.heard(other, SYNCING));
        j.left(&peer);
        assert!(j.heard(peer, SYNCING), "a new connection starts afresh");
    }
}
