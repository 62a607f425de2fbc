//! Leaving gracefully: the round from which a node that shuts down tells its
//! peers to expect nothing of it, and what the engine makes of such a word
//! from a peer.
//!
//! The driver signs a [`crate::LeaveNotice`] for [`Engine::leaving_from`] and
//! gossips it after its last delta, before it closes its connections. A peer's
//! notice, once the driver verified its signature and run, is judged by
//! [`Engine::admit_leave`] (news, a duplicate, or stale: too old to matter or
//! older than what the key did since, as a replay is) and handed in as
//! [`super::Input::PeerLeaving`]; the round state then stops expecting the key from
//! the notice's round (see [`crate::round`]), and a round that waited only for
//! it closes at once.

use super::Engine;
use crate::keys::PublicKey;
use crate::round::{self, LeaveAdmission};

impl Engine {
    /// The first round this node, leaving now, contributes nothing to: the
    /// current one, or the next if its delta of the current one is out.
    pub fn leaving_from(&self) -> u64 {
        let round = self.rounds.round();
        if self.rounds.has_local() && !self.rounds.observing() {
            round + 1
        } else {
            round
        }
    }

    /// Whether `peer`'s verified notice that it contributes nothing from round
    /// `from` on is news. Pure.
    pub fn admit_leave(&self, peer: &PublicKey, from: u64) -> LeaveAdmission {
        self.rounds.admit_leave(peer, from)
    }

    pub(super) fn on_peer_leaving(&mut self, now: u64, peer: PublicKey, from: u64) {
        if self.admit_leave(&peer, from) == LeaveAdmission::Accept {
            self.round_event(now, round::Event::PeerLeaving { peer, from });
        }
    }
}

#[cfg(test)]
mod tests {

    use super::super::{Engine, EngineConfig, Input, Output};

    use crate::round::{CloseReason, LeaveAdmission, RoundConfig};
    use crate::spec::RoundSpec;
    use crate::test_keys::{delta, pk};

    /// Node 1, running, connected to 2 only; 3 reaches it through relays.
    fn engine() -> Engine {
        let round = RoundConfig {
            settle_ms: 0,
            ..RoundConfig::from_spec(&RoundSpec { deadline_ms: 1_000, quorum: 1.0 })
        };
        let config = EngineConfig { probe_on_start: false, ..EngineConfig::new(round, 2, 1024) };
        // Lineage 0: the base the test deltas are trained from.
        let mut e = Engine::new(pk(1), config, 0, [0; 32]);
        e.handle(0, Input::Start);
        e.handle(0, Input::PeerConnected(pk(2)));
        e
    }

    fn merge(out: &[Output]) -> Option<(u64, usize, CloseReason)> {
        out.iter().find_map(|o| match o {
            Output::Merge { round, deltas, reason } => Some((*round, deltas.len(), *reason)),
            _ => None,
        })
    }

    /// Runs round `round` with deltas of 1, 2 and, when `three`, 3.
    fn run_round(e: &mut Engine, t: u64, round: u64, three: bool) -> Vec<Output> {
        let mut out = Vec::new();
        if three {
            out.extend(e.handle(t, Input::PeerDelta(delta(3, round))));
        }
        out.extend(e.handle(t + 1, Input::Trained { round, base: e.lineage, delta: Some(delta(1, round)) }));
        out.extend(e.handle(t + 2, Input::PeerDelta(delta(2, round))));
        out
    }

    fn merged(e: &mut Engine, t: u64, out: &[Output]) {
        if let Some((round, _, _)) = merge(out) {
            e.handle(t, Input::Merged { round, lineage: e.lineage });
        }
    }

    #[test]
    fn a_relayed_peers_notice_ends_the_wait_for_it_at_once() {
        let mut e = engine();
        let out = run_round(&mut e, 10, 0, true);
        assert_eq!(merge(&out), Some((0, 3, CloseReason::Quorum)));
        merged(&mut e, 20, &out);
        // Round 1: 1 and 2 are in; 3 is expected (it contributed to round 0).
        let out = run_round(&mut e, 30, 1, false);
        assert_eq!(merge(&out), None);
        assert_eq!(e.admit_leave(&pk(3), 1), LeaveAdmission::Accept);
        let out = e.handle(40, Input::PeerLeaving { peer: pk(3), from: 1 });
        assert_eq!(merge(&out), Some((1, 2, CloseReason::Quorum)), "closed without waiting for the deadline");
        merged(&mut e, 50, &out);
        // A late delta of 3 from before its notice does not hold round 2.
        e.handle(55, Input::PeerDelta(delta(3, 1)));
        let out = run_round(&mut e, 60, 2, false);
        assert_eq!(merge(&out), Some((2, 2, CloseReason::Quorum)));
    }

    #[test]
    fn a_restarted_leaver_comes_back_with_a_later_delta() {
        let mut e = engine();
        let out = run_round(&mut e, 10, 0, true);
        merged(&mut e, 20, &out);
        e.handle(25, Input::PeerLeaving { peer: pk(3), from: 1 });
        let out = run_round(&mut e, 30, 1, false);
        merged(&mut e, 40, &out);
        assert_eq!(e.round(), 2);
        // Back: a delta of round 2 makes it expected, and round 2 waits for it.
        e.handle(45, Input::PeerDelta(delta(3, 2)));
        assert!(e.rounds().active().contains(&pk(3)));
        assert_eq!(e.admit_leave(&pk(3), 1), LeaveAdmission::Stale, "the old notice replayed");
        let out = e.handle(46, Input::PeerLeaving { peer: pk(3), from: 1 });
        assert_eq!(merge(&out), None);
        assert!(e.rounds().active().contains(&pk(3)));
    }

    #[test]
    fn a_leaver_says_the_round_after_its_last_delta() {
        let mut e = engine();
        assert_eq!(e.leaving_from(), 0);
        e.handle(10, Input::Trained { round: 0, base: e.lineage, delta: Some(delta(1, 0)) });
        assert_eq!(e.leaving_from(), 1);
    }
}
