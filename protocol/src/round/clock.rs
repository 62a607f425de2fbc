//! When a round closes: the clock a round's deadline counts from (our own
//! publish, or for a paused or observing node the round's first delta), the
//! quorum and settle time, the jump to a synced round, and the agreement check
//! on the bases of the deltas a closing round merges.

use std::collections::BTreeMap;

use super::{Action, CloseReason, RoundState};
use crate::delta::SignedDelta;
use crate::keys::PublicKey;

impl RoundState {
    /// When the state machine next wants a `Tick`: the end of the settle time
    /// after quorum, else the deadline; `None` before our own delta is in.
    pub fn wake_at(&self) -> Option<u64> {
        match (self.quorum_at, self.deadline_from()) {
            (Some(at), _) => Some(at.saturating_add(self.settle_ms())),
            (None, Some(at)) => Some(at.saturating_add(self.config.deadline_ms)),
            (None, None) => None,
        }
    }

    /// How long a round that reached its quorum keeps listening: the config's
    /// settle time, for a second delta of one key that gossip brings a hop
    /// behind the first; none for a node with no peer connected or expected,
    /// which no delta can reach.
    fn settle_ms(&self) -> u64 {
        let alone = self.connected.is_empty() && self.active().iter().all(|k| *k == self.me);
        if alone {
            0
        } else {
            self.config.settle_ms
        }
    }

    /// When the current round's deadline starts counting: our own publish, or
    /// the arrival of the round's first peer delta if that came first; while
    /// paused or observing, the arrival of the round's first delta.
    ///
    /// Counting from our own publish alone, nodes whose rounds all close at
    /// the deadline (a peer that is expected and never sends) keep whatever
    /// offset they start with, and it drifts with their training times. Once
    /// one node closes a deadline after another, it leaves out the later
    /// one's delta and their lineages part for good (netsim's
    /// `attack-sync-sybil` showed it). A node whose peers published before it
    /// closes a deadline after their first delta instead, so the slower ones
    /// catch up with the faster within a round, and all of them close
    /// together. A peer that sends its delta early can shorten a round by at
    /// most our training time: the deadline still counts from a delta of the
    /// round itself.
    pub(super) fn deadline_from(&self) -> Option<u64> {
        match self.published_at {
            Some(published) => Some(self.heard_at.map_or(published, |heard| heard.min(published))),
            None if self.paused || self.observing() => self.opened_at,
            None => None,
        }
    }

    /// Entering a round: the first peer delta of it may already be in.
    fn hear_round(&mut self) {
        self.heard_at = self.next_heard_at.take().filter(|(r, _)| *r == self.round).map(|(_, at)| at);
    }

    /// Lands in `round` after a sync, expecting there the keys our sources
    /// expect (`expected`), as they do.
    pub(super) fn jump_to(&mut self, round: u64, now_ms: u64, expected: &[PublicKey]) {
        // The rounds jumped over showed nothing of our peers. Without word of
        // whom our sources expect, a connected peer's grace (see `active`)
        // starts again in the round we land in, rather than run out on a
        // silence we could not have heard; but then a silent peer (a
        // colluder's live connection, a node still syncing) holds this round
        // and the next to their deadline, as the others do not wait for it.
        if expected.is_empty() {
            for from in self.connected.values_mut() {
                *from = (*from).max(round);
            }
            self.landing = None;
        } else {
            // Not a peer that told us itself it starts later (or is syncing):
            // its word is newer than what our sources knew when they answered.
            let keys = expected
                .iter()
                .filter(|k| **k != self.me && self.connected.get(k).is_none_or(|&from| from <= round))
                .copied()
                .collect();
            self.landing = Some((round, keys));
        }
        self.round = round;
        self.groups = self.groups.split_off(&round);
        self.published_at = None;
        self.abstained = false;
        self.quorum_at = None;
        self.rounds = self.rounds.split_off(&round);
        self.opened_at = None;
        self.hear_round();
        self.open_clock(now_ms);
        self.forget_past_rounds();
        self.note_held_active();
        self.recharge_future();
    }

    /// Starts the current round's clock for a node without a publish time of
    /// its own (paused or observing): at the round's first delta, held now or
    /// arriving later; or at once for an observer with no peer at all (a lone
    /// node restarted from a checkpoint older than its last delta), which no
    /// delta will ever come for, so that it sits out its signed rounds as
    /// empty rounds closed at their deadline instead of stalling.
    pub(super) fn open_clock(&mut self, now_ms: u64) {
        let alone = self.observing() && !self.paused && self.connected.is_empty();
        if self.opened_at.is_none() && (self.rounds.contains_key(&self.round) || alone) {
            self.opened_at = Some(now_ms);
        }
    }

    pub(super) fn maybe_close(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.open_clock(now_ms);
        let Some(published_at) = self.deadline_from() else {
            return;
        };
        let active = self.active();
        let from_active =
            self.rounds.get(&self.round).map_or(0, |m| m.keys().filter(|k| active.contains(k)).count());
        let deadline = published_at.saturating_add(self.config.deadline_ms);
        let reason = if from_active >= self.quorum_target() {
            let at = *self.quorum_at.get_or_insert(now_ms);
            if now_ms < at.saturating_add(self.settle_ms()) && now_ms < deadline {
                return;
            }
            CloseReason::Quorum
        } else if now_ms >= deadline {
            CloseReason::Deadline
        } else {
            return;
        };
        let round = self.round;
        // Our delta of an observed round (signed before we went back to an
        // older state) is of a lineage we left: it says nothing of ours.
        let observed = self.observing();
        let mut deltas: Vec<SignedDelta> =
            self.rounds.remove(&round).unwrap_or_default().into_values().collect();
        let group = self.groups.remove(&round);
        if let Some(group) = &group {
            deltas.retain(|d| group.contains(&d.header.sender));
        }
        self.round += 1;
        self.future.forget_through(self.round);
        self.published_at = None;
        self.abstained = false;
        self.quorum_at = None;
        self.opened_at = None;
        self.hear_round();
        self.open_clock(now_ms);
        self.forget_past_rounds();
        self.note_held_active();
        let diverged = if group.is_none() && !observed { self.majority_elsewhere(&deltas) } else { None };
        actions.push(Action::Merge { round, deltas, reason });
        if let Some(peer) = diverged {
            actions.push(Action::Diverged { peer, round });
        }
    }

    /// The first sender (in key order) of the base most of `deltas` share, when
    /// that base is not our own: more deltas, or as many and a smaller hash.
    pub(super) fn majority_elsewhere(&self, deltas: &[SignedDelta]) -> Option<PublicKey> {
        let own = deltas.iter().find(|d| d.header.sender == self.me)?.header.base;
        let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for d in deltas {
            *counts.entry(d.header.base).or_default() += 1;
        }
        // Most deltas first; among equals, the smaller hash.
        let (best, _) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
        if *best == own {
            return None;
        }
        deltas.iter().find(|d| d.header.base == *best).map(|d| d.header.sender)
    }

    /// Forgets what is kept about rounds that fell out of the windows the
    /// current round sets: activity, stale deltas, remembered payloads.
    fn forget_past_rounds(&mut self) {
        self.prune_activity();
        self.forget_spent();
        self.stale.prune(self.round, &self.config);
        self.forget_old_payloads();
    }
}
