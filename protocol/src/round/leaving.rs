//! Peers that said they leave: who is not expected from which round, and which
//! leave notices are news.
//!
//! A verified [`crate::LeaveNotice`] from `peer` saying it contributes nothing
//! from round `from` on takes it out of [`RoundState::active`] from that round:
//! a round before it still waits for its delta (the leaver publishes the
//! notice after its last delta, and gossip may bring the notice first), a
//! round from it on closes on the others. It is remembered, so that a late
//! delta of a round before `from` does not make the leaver expected again,
//! until the key shows it is back: a delta of round `from` or later, a
//! joining announcement, or a new connection (a restart of the same key).
//! A notice is ignored as [`LeaveAdmission::Stale`] when it can no longer
//! matter (`from` is `activity_rounds` or more behind) or when the key has
//! shown since that it is back (a delta of round `from` or later, a
//! connection that expects it only after `from`): a replay of an old notice
//! cannot take a node that came back out of the rounds.

use std::collections::BTreeMap;

use super::RoundState;
use crate::keys::PublicKey;
use crate::wire::SYNCING;

/// What to do with a verified leave notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveAdmission {
    /// News: stop expecting the key from its round, and forward the notice.
    Accept,
    /// Already known.
    Duplicate,
    /// Too old to matter, or older than what the key did since (a replay).
    Stale,
    /// Our own key, or a banned one: nothing to do.
    Ignored,
}

/// The keys that said they leave, with the first round each is not expected
/// in. Bound: `max_peers` keys (past it, a notice is ignored as stale, and
/// the key drops out of the rounds `activity_rounds` after its last delta as
/// any silent key does); entries are forgotten `activity_rounds` after their
/// round, when the key's last delta no longer makes it expected anyway.
#[derive(Debug, Default)]
pub(super) struct Leavers {
    from: BTreeMap<PublicKey, u64>,
}

impl Leavers {
    /// Whether `key` said it contributes nothing to `round`.
    pub(super) fn gone(&self, key: &PublicKey, round: u64) -> bool {
        self.from.get(key).is_some_and(|&from| from <= round)
    }

    /// `key` is back (a later delta, an announcement, a new connection).
    pub(super) fn back(&mut self, key: &PublicKey) {
        self.from.remove(key);
    }

    /// Forgets the leavers whose last delta no longer counts at `round`.
    pub(super) fn prune(&mut self, round: u64, activity_rounds: u64) {
        self.from.retain(|_, from| from.saturating_add(activity_rounds) > round);
    }
}

impl RoundState {
    /// Whether a verified notice that `peer` contributes nothing from round
    /// `from` on is news. Pure: changes nothing.
    pub fn admit_leave(&self, peer: &PublicKey, from: u64) -> LeaveAdmission {
        if *peer == self.me || self.banned.contains(peer) {
            return LeaveAdmission::Ignored;
        }
        if self.leavers.from.get(peer) == Some(&from) {
            return LeaveAdmission::Duplicate;
        }
        let too_old = from.saturating_add(self.config.activity_rounds) <= self.round;
        let delta_since = self.last_active.get(peer).is_some_and(|&r| r >= from)
            || self.rounds.range(from..).any(|(_, deltas)| deltas.contains_key(peer));
        let connected_since = self.connected.get(peer).is_some_and(|&c| c != SYNCING && c > from);
        let full = !self.leavers.from.contains_key(peer) && self.leavers.from.len() >= self.config.max_peers;
        if too_old || delta_since || connected_since || full {
            return LeaveAdmission::Stale;
        }
        LeaveAdmission::Accept
    }

    /// Takes a notice [`RoundState::admit_leave`] accepted.
    pub(super) fn peer_leaves(&mut self, peer: PublicKey, from: u64) {
        if self.admit_leave(&peer, from) == LeaveAdmission::Accept {
            self.leavers.from.insert(peer, from);
        }
    }

    /// Whether `peer` said it leaves before the current round.
    pub fn left(&self, peer: &PublicKey) -> bool {
        self.leavers.gone(peer, self.round)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::LeaveAdmission;
    use crate::spec::RoundSpec;
    use crate::test_keys::{delta, pk};

    /// Node 1, connected to 2; 3 is known only through its relayed deltas.
    /// Each of them contributed to round 0, which is merged.
    fn state() -> RoundState {
        let config = RoundConfig {
            settle_ms: 0,
            ..RoundConfig::from_spec(&RoundSpec { deadline_ms: 1_000, quorum: 1.0 })
        };
        let mut s = RoundState::new(pk(1), config, 0);
        s.handle(0, Event::PeerConnected(pk(2)));
        s.handle(0, Event::PeerDelta(delta(3, 0)));
        s.handle(1, Event::LocalDelta(delta(1, 0)));
        let actions = s.handle(2, Event::PeerDelta(delta(2, 0)));
        assert!(merged(&actions).is_some(), "round 0 closes by quorum");
        assert!(s.active().contains(&pk(3)), "a relayed contributor is expected");
        s
    }

    fn merged(actions: &[Action]) -> Option<(u64, usize, CloseReason)> {
        actions.iter().find_map(|a| match a {
            Action::Merge { round, deltas, reason } => Some((*round, deltas.len(), *reason)),
            _ => None,
        })
    }

    #[test]
    fn a_relayed_leaver_is_not_waited_for_from_its_round() {
        let mut s = state();
        assert_eq!(s.admit_leave(&pk(3), 1), LeaveAdmission::Accept);
        s.handle(10, Event::PeerLeaving { peer: pk(3), from: 1 });
        assert_eq!(s.admit_leave(&pk(3), 1), LeaveAdmission::Duplicate);
        assert!(!s.active().contains(&pk(3)));
        s.handle(20, Event::LocalDelta(delta(1, 1)));
        let actions = s.handle(30, Event::PeerDelta(delta(2, 1)));
        assert_eq!(merged(&actions), Some((1, 2, CloseReason::Quorum)), "round 1 closes without 3");
    }

    #[test]
    fn the_round_before_its_notice_still_waits_for_its_last_delta() {
        let mut s = state();
        // 3 published for round 1 and leaves after it; the notice overtook the delta.
        s.handle(10, Event::PeerLeaving { peer: pk(3), from: 2 });
        assert!(s.active().contains(&pk(3)));
        s.handle(20, Event::LocalDelta(delta(1, 1)));
        assert_eq!(merged(&s.handle(30, Event::PeerDelta(delta(2, 1)))), None, "3's last delta is coming");
        let actions = s.handle(40, Event::PeerDelta(delta(3, 1)));
        assert_eq!(merged(&actions), Some((1, 3, CloseReason::Quorum)));
        assert!(!s.active().contains(&pk(3)), "gone from round 2");
    }

    #[test]
    fn a_notice_completes_a_round_that_waited_only_for_the_leaver() {
        let mut s = state();
        s.handle(20, Event::LocalDelta(delta(1, 1)));
        assert_eq!(merged(&s.handle(30, Event::PeerDelta(delta(2, 1)))), None);
        let actions = s.handle(40, Event::PeerLeaving { peer: pk(3), from: 1 });
        assert_eq!(merged(&actions), Some((1, 2, CloseReason::Quorum)));
    }

    #[test]
    fn a_late_delta_does_not_bring_a_leaver_back_but_a_later_one_does() {
        let mut s = state();
        s.handle(10, Event::PeerLeaving { peer: pk(3), from: 2 });
        s.handle(20, Event::LocalDelta(delta(1, 1)));
        s.handle(30, Event::PeerDelta(delta(2, 1)));
        s.handle(40, Event::PeerDelta(delta(3, 1)));
        assert_eq!(s.round(), 2);
        assert!(!s.active().contains(&pk(3)));
        // A restart of the same key: its delta of round 2 re-admits it.
        s.handle(50, Event::PeerDelta(delta(3, 2)));
        assert!(s.active().contains(&pk(3)));
        assert_eq!(s.admit_leave(&pk(3), 2), LeaveAdmission::Stale, "a replay of the old notice");
    }

    #[test]
    fn an_announcement_or_a_new_connection_brings_a_leaver_back() {
        let mut s = state();
        s.handle(10, Event::PeerLeaving { peer: pk(3), from: 1 });
        s.handle(11, Event::PeerStarts { peer: pk(3), from: 1 });
        assert!(s.active().contains(&pk(3)));
        s.handle(12, Event::PeerLeaving { peer: pk(2), from: 1 });
        s.handle(13, Event::PeerDisconnected(pk(2)));
        assert!(!s.active().contains(&pk(2)));
        s.handle(14, Event::PeerConnected(pk(2)));
        assert!(!s.left(&pk(2)), "a new connection is a new life");
        assert_eq!(s.admit_leave(&pk(2), 1), LeaveAdmission::Stale, "it is expected only after that notice");
    }

    #[test]
    fn old_own_and_banned_notices_are_ignored() {
        let mut s = state();
        assert_eq!(s.admit_leave(&pk(1), 1), LeaveAdmission::Ignored);
        s.handle(0, Event::Ban(pk(2)));
        assert_eq!(s.admit_leave(&pk(2), 1), LeaveAdmission::Ignored);
        // Old: `activity_rounds` (2) behind the current round.
        let mut s = state();
        for r in 1..3 {
            s.handle(r * 10, Event::LocalDelta(delta(1, r)));
            s.handle(r * 10 + 1, Event::PeerDelta(delta(2, r)));
            s.handle(r * 10 + 2, Event::PeerDelta(delta(3, r)));
        }
        assert_eq!(s.round(), 3);
        assert_eq!(s.admit_leave(&pk(3), 1), LeaveAdmission::Stale);
        assert_eq!(s.admit_leave(&pk(3), 3), LeaveAdmission::Accept);
        s.handle(40, Event::PeerLeaving { peer: pk(3), from: 3 });
        // Forgotten once it no longer matters.
        for r in 3..6 {
            s.handle(r * 10, Event::LocalDelta(delta(1, r)));
            s.handle(r * 10 + 1, Event::PeerDelta(delta(2, r)));
        }
        assert_eq!(s.round(), 6);
        assert!(s.leavers.from.is_empty());
    }
}
