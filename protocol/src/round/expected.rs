//! Who is expected in a round: the rule every node applies alike to its
//! connected peers (each from the round it starts at) and its recent
//! contributors, so that nodes wait for, and merge, the same set.

use std::collections::BTreeSet;

use super::RoundState;
use crate::{delta::DeltaHeader, keys::PublicKey};

impl RoundState {
    /// The round from which we expect `peer`'s deltas (what a syncing peer is told).
    pub fn expected_from(&self, peer: &PublicKey) -> u64 {
        match self.connected.get(peer) {
            // A peer that said it is syncing is told the rule's round; so is
            // one we no longer wait for (silent past its grace, as the other
            // side of a partition is when it heals): were it told its old
            // round, it would contribute to a round we close without it, and
            // merge a set we do not.
            Some(&from)
                if from != crate::wire::SYNCING && (from > self.round || self.active().contains(peer)) =>
            {
                from
            }
            _ => self.round + 2,
        }
    }

    /// Nodes expected to contribute to the current round: ourselves, connected
    /// peers of the run, and peers that contributed recently.
    pub fn active(&self) -> BTreeSet<PublicKey> {
        if let Some(group) = self.groups.get(&self.round) {
            let mut set = group.clone();
            set.retain(|k| !self.leavers.gone(k, self.round));
            set.insert(self.me);
            return self.unspent(set);
        }
        let contributing = !(self.paused || self.observing()) || self.published_at.is_some();
        if let Some((_, keys)) = self.landing.as_ref().filter(|(round, _)| *round == self.round) {
            // The round a sync landed in: the keys our sources expect, and
            // the senders of its deltas we hold; not a silent peer that
            // merely stayed connected, as the sources no longer wait for it.
            let mut set = keys.clone();
            if let Some(held) = self.rounds.get(&self.round) {
                set.extend(held.keys().filter(|k| **k != self.me));
            }
            if contributing {
                set.insert(self.me);
            }
            set.retain(|k| !self.leavers.gone(k, self.round));
            return self.unspent(set);
        }
        let horizon = self.round.saturating_sub(self.config.activity_rounds);
        // A connected peer is expected once its start round comes, and stays
        // expected while it keeps contributing: one silent for `activity_rounds`
        // rounds (hung, partitioned away behind a live connection) no longer holds
        // rounds until their deadline. It is expected again once a delta of it arrives.
        let mut set: BTreeSet<PublicKey> = self
            .connected
            .iter()
            .filter(|(k, &from)| {
                from <= self.round
                    && ((from + self.config.activity_rounds > self.round && !self.unproven.contains(*k))
                        || self.last_active.get(*k).is_some_and(|&r| r >= horizon))
            })
            .map(|(k, _)| *k)
            .collect();
        if contributing {
            set.insert(self.me);
        }
        // Recent contributors count too; but a delta of a later round from a
        // connected peer that starts after this one (a joiner's first round,
        // arriving while we still close the round before) says nothing of this one.
        let started = |k: &PublicKey| self.connected.get(k).is_none_or(|&from| from <= self.round);
        set.extend(
            self.last_active
                .iter()
                .filter(|(k, &r)| r >= horizon && (r <= self.round || started(k)))
                .map(|(k, _)| *k),
        );
        set.retain(|k| !self.leavers.gone(k, self.round));
        self.unspent(set)
    }

    /// `peer` says it starts (again): if the grace of its last start passed
    /// without a delta of it, it gets none this time. Otherwise a key could
    /// hold every node's rounds to their deadline for `activity_rounds`
    /// rounds each time it says so, and say so again and again while it
    /// never sends a delta that passes validation (netsim's `attack-forge`:
    /// its attackers fell behind, synced and started again every five
    /// rounds, and 8 of 20 rounds closed at the deadline).
    pub(super) fn note_unproven(&mut self, peer: &PublicKey) {
        let Some(&from) = self.connected.get(peer) else { return };
        if from == crate::wire::SYNCING || from.saturating_add(self.config.activity_rounds) > self.round {
            return;
        }
        if self.unmet_starts.contains(peer) && self.unproven.len() < self.config.max_peers {
            self.unproven.insert(*peer);
        }
    }

    /// `peer` said when it starts: it has sent no delta since. (Not a mere
    /// connection: a joiner is waited for from it while it still fetches.)
    pub(super) fn note_start(&mut self, peer: PublicKey) {
        if self.unmet_starts.len() < self.config.max_peers {
            self.unmet_starts.insert(peer);
        }
    }

    /// Forgets what `peer`'s starts showed: a delta of it arrived, it left
    /// (a restarted node connects afresh), or it is banned.
    pub(super) fn forget_starts(&mut self, peer: &PublicKey) {
        self.unmet_starts.remove(peer);
        self.unproven.remove(peer);
    }

    /// `set` without the keys whose delta of the current round was refused as a replay.
    fn unspent(&self, mut set: BTreeSet<PublicKey>) -> BTreeSet<PublicKey> {
        if let Some(spent) = self.spent.get(&self.round) {
            set.retain(|k| !spent.contains(k));
        }
        set
    }

    /// A replay refused with `header`, validly signed: its sender spent its
    /// delta of that round. Only the current and the next round count (a
    /// farther one says nothing yet, as for activity), and at most
    /// `max_peers` keys a round.
    pub(super) fn note_spent(&mut self, header: &DeltaHeader) {
        if header.sender == self.me || header.round < self.round || header.round > self.round + 1 {
            return;
        }
        let keys = self.spent.entry(header.round).or_default();
        if keys.len() < self.config.max_peers {
            keys.insert(header.sender);
        }
    }

    /// Forgets the spent keys of rounds before the current one.
    pub(super) fn forget_spent(&mut self) {
        self.spent = self.spent.split_off(&self.round);
    }

    /// How many deltas close the current round before its deadline.
    pub fn quorum_target(&self) -> usize {
        let active = (self.active().len() - usize::from(self.abstained)) as f64;
        ((self.config.quorum * active).ceil() as usize).max(1)
    }

    /// Records that `sender` contributed to `round`, within `max_peers` keys;
    /// not when it is a delta of a peer that left, of the round it left in or
    /// before (sent before it left, it says nothing of the rounds to come).
    ///
    /// Nor, yet, a delta of a round past the next one: it says nothing of
    /// whether its sender will send one for ours. Counted then, one signed
    /// delta of a round eight ahead (as far as the buffer takes) would keep
    /// its sender expected, and every round waiting for it until its
    /// deadline, for ten rounds; one such delta a round would do it for ever.
    /// It counts when its round comes ([`RoundState::note_held_active`]).
    pub(super) fn note_active(&mut self, sender: PublicKey, round: u64) {
        if self.departed.get(&sender).is_some_and(|&left| round <= left) || round > self.round + 1 {
            return;
        }
        if let Some(seen) = self.last_active.get_mut(&sender) {
            *seen = (*seen).max(round);
            return;
        }
        if self.last_active.len() >= self.config.max_peers {
            // Full: the farthest round gives way to a nearer one. A scan, but
            // only of a full map, and only for a sender it does not hold.
            let farthest = self.last_active.iter().max_by_key(|(_, &r)| r).map(|(k, &r)| (*k, r));
            match farthest {
                Some((key, r)) if r > round => {
                    self.last_active.remove(&key);
                }
                _ => return,
            }
        }
        self.last_active.insert(sender, round);
    }

    /// `sender`'s delta of `round` was trained from a lineage other than ours
    /// in that round: unless a later delta of it showed it back on ours, it
    /// is not expected until it is (a node across a healed partition, or
    /// one that went its own way, waits for a state sync first; relayed
    /// peers do not hear when it starts contributing again, but see its
    /// delta of our lineage then).
    pub(crate) fn discount(&mut self, sender: &PublicKey, round: u64) {
        if self.last_active.get(sender).is_some_and(|&r| r <= round) {
            self.last_active.remove(sender);
        }
    }

    /// Entering a round: the senders of its peer deltas held already
    /// (arrived while it was rounds ahead) count as its contributors now.
    pub(super) fn note_held_active(&mut self) {
        // Not our own delta: whether we are expected is `active`'s own rule
        // (an observer that signed this round before it synced is not).
        let senders: Vec<PublicKey> = self
            .rounds
            .get(&self.round)
            .map(|m| m.keys().filter(|k| **k != self.me).copied().collect())
            .unwrap_or_default();
        for sender in senders {
            self.note_active(sender, self.round);
        }
    }

    /// Remembers that `peer`'s connection closed in the current round. Full
    /// (`max_peers` keys), the oldest departure gives way.
    pub(super) fn note_departed(&mut self, peer: PublicKey) {
        if self.departed.len() >= self.config.max_peers && !self.departed.contains_key(&peer) {
            let oldest = self.departed.iter().min_by_key(|(_, &r)| r).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.departed.remove(&oldest);
            }
        }
        self.departed.insert(peer, self.round);
    }

    pub(super) fn prune_activity(&mut self) {
        let horizon = self.round.saturating_sub(self.config.activity_rounds);
        self.last_active.retain(|_, r| *r >= horizon);
        // A delta of a round before the horizon would not make its sender
        // expected anyway.
        self.departed.retain(|_, r| *r >= horizon);
        self.leavers.prune(self.round, self.config.activity_rounds);
    }
}
