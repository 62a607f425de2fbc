//! Tests of who is expected in a round: deltas of far rounds, the round a
//! sync lands in (whom the sources expect), and a node that installs the
//! state of the round it is in.

use super::tests::{based, delta, merged, resigned, state};
use super::*;
use crate::test_keys::pk;

/// Our delta of `round` at `at`, then `senders`' a moment later; the round
/// closes at quorum, or at the deadline (1 s) for want of it.
fn close(s: &mut RoundState, at: u64, round: u64, senders: &[u8]) -> (u64, Vec<PublicKey>, CloseReason) {
    let mut last = None;
    s.handle(at, Event::LocalDelta(delta(1, round, round as f32)));
    for &i in senders {
        last = merged(&s.handle(at + 1, Event::PeerDelta(delta(i, round, round as f32)))).or(last);
    }
    last.or_else(|| merged(&s.handle(at + 1_000, Event::Tick))).expect("the round closes")
}

/// A delta of a round far ahead says nothing of whether its sender takes
/// part in ours: it must not hold our rounds to their deadline (before, one
/// such delta kept its sender expected until its round plus
/// `activity_rounds`). It counts when its round comes.
#[test]
fn a_delta_of_a_far_round_keeps_no_one_expected_until_its_round_comes() {
    let mut s = state();
    for round in 0..2 {
        assert_eq!(close(&mut s, round * 2_000, round, &[2, 3]).2, CloseReason::Quorum);
    }
    // Key 3 falls silent, but for one delta of round 9.
    s.handle(4_000, Event::PeerDelta(delta(3, 9, 9.0)));
    for round in 2..4 {
        let (_, senders, reason) = close(&mut s, round * 2_000, round, &[2]);
        assert_eq!((senders.len(), reason), (2, CloseReason::Deadline), "round {round}: 3 is still expected");
    }
    for round in 4..9 {
        let (_, senders, reason) = close(&mut s, round * 2_000, round, &[2]);
        assert_eq!((senders.len(), reason), (2, CloseReason::Quorum), "round {round}: 3 is not awaited");
    }
    let (_, senders, reason) = close(&mut s, 18_000, 9, &[2]);
    assert_eq!((senders.len(), reason), (3, CloseReason::Quorum), "round 9 counts its delta");
}

/// A node that lands in a round by a sync waits there for the keys its
/// sources expect, not for every peer it is connected to: a silent peer (a
/// colluder's live connection, a node still syncing) held that round and the
/// next to their deadline, while the sources closed them at quorum.
#[test]
fn a_synced_node_expects_in_its_landing_round_whom_its_sources_expect() {
    let mut s = state();
    s.handle(0, Event::PeerConnected(pk(4)));
    // Our sources expect 2 and 3 (and not 4, silent since it connected).
    s.handle(0, Event::Synced { round: 5, expected_from: 7, expected: vec![pk(2), pk(3), pk(1)] });
    assert_eq!(s.active(), BTreeSet::from([pk(2), pk(3)]), "not us (observing), not 4");
    s.handle(1, Event::PeerDelta(delta(2, 5, 2.0)));
    let (round, senders, reason) = merged(&s.handle(1, Event::PeerDelta(delta(3, 5, 2.0)))).unwrap();
    assert_eq!((round, senders.len(), reason), (5, 2, CloseReason::Quorum));
    // The next round: who contributed to the landing round.
    assert_eq!(s.active(), BTreeSet::from([pk(2), pk(3)]));
    // Without word of whom the sources expect, every connected peer is
    // given its grace again in the landing round, as before.
    let mut old = state();
    old.handle(0, Event::PeerConnected(pk(4)));
    old.handle(0, Event::Synced { round: 5, expected_from: 7, expected: vec![] });
    assert!(old.active().contains(&pk(4)));
    // A key that tells us itself it starts later is not awaited either.
    let mut told = state();
    told.handle(0, Event::Synced { round: 5, expected_from: 7, expected: vec![pk(2), pk(3)] });
    told.handle(1, Event::PeerStarts { peer: pk(3), from: 7 });
    assert_eq!(told.active(), BTreeSet::from([pk(2)]));
}

/// A node that went its own way and installs its peers' state of the round it
/// is in observes that round when they expect it only later: its delta of the
/// round, trained from the new state, would come after they closed it, and
/// merging it itself would set it apart again, round after round (netsim's
/// partition-heal-minority-ahead with held deltas, seeds 6, 8 and 10).
#[test]
fn a_node_that_installs_the_state_of_its_own_round_observes_it_when_told_to() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(based(1, 0, 1.0, [9; 32])));
    assert!(!s.observing());
    s.handle(1, Event::Synced { round: 0, expected_from: 2, expected: vec![pk(2), pk(3)] });
    assert!(s.observing() && !s.wants_local(), "sits out round 0 and 1");
    assert_eq!(s.contributes_from(), 2);
    // Its peers' deltas close the round; its own (of the lineage it left) is
    // no reason to wait, and it is not in its own quorum.
    s.handle(2, Event::PeerDelta(delta(2, 0, 2.0)));
    let (round, senders, reason) = merged(&s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)))).unwrap();
    assert_eq!((round, reason), (0, CloseReason::Quorum));
    assert!(senders.contains(&pk(2)) && senders.contains(&pk(3)));
    // Told to contribute at once (expected from its own round), it goes on.
    let mut at_once = state();
    at_once.handle(0, Event::LocalDelta(based(1, 0, 1.0, [9; 32])));
    at_once.handle(1, Event::Synced { round: 0, expected_from: 0, expected: vec![pk(2), pk(3)] });
    assert!(!at_once.observing());
}

/// A key whose delta of the round is refused as a replay has signed its one
/// delta of that round: the round does not wait for it (before, a swarm with
/// replayers held every round they replayed in to its deadline: netsim's
/// `attack-replay`, 80 deadline closes in 20 rounds). The next round expects
/// it again; a refusal of a far round, or of our own key, counts for nothing.
#[test]
fn a_key_whose_delta_was_refused_as_a_replay_is_not_awaited_in_that_round() {
    let mut s = state();
    let old = delta(3, 0, 3.0);
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(delta(2, 0, 2.0)));
    merged(&s.handle(2, Event::PeerDelta(old.clone()))).expect("round 0 closes with all three");
    // Round 1: 3 re-signs its old payload; refused, and it is not awaited.
    let replay = resigned(3, 1, &old);
    assert_eq!(s.admit(&replay.header), Admission::Replayed);
    s.handle(10, Event::Replayed(resigned(3, 5, &old).header));
    s.handle(10, Event::Replayed(delta(1, 1, 9.0).header));
    assert!(s.active().contains(&pk(3)), "a far round's or our own refusal changes nothing");
    s.handle(10, Event::LocalDelta(delta(1, 1, 1.0)));
    assert!(merged(&s.handle(11, Event::PeerDelta(delta(2, 1, 2.0)))).is_none(), "3 is awaited");
    let (round, senders, reason) = merged(&s.handle(12, Event::Replayed(replay.header))).expect("closes");
    assert_eq!((round, senders.len(), reason), (1, 2, CloseReason::Quorum), "without 3, at quorum");
    // Round 2 expects 3 again.
    assert!(s.active().contains(&pk(3)));
    // A refusal of the next round's delta counts once that round comes.
    s.handle(20, Event::LocalDelta(delta(1, 2, 1.0)));
    s.handle(20, Event::Replayed(resigned(3, 3, &old).header));
    assert!(merged(&s.handle(21, Event::PeerDelta(delta(3, 2, 3.5)))).is_none(), "2 is awaited");
    let (_, senders, _) = merged(&s.handle(21, Event::PeerDelta(delta(2, 2, 2.0)))).expect("round 2 closes");
    assert_eq!(senders.len(), 3, "round 2 waited for everyone");
    assert!(!s.active().contains(&pk(3)), "round 3: its replay arrived a round early");
}

/// A key that says it starts, lets its grace pass without a delta, and says
/// so again is not waited for the second time until a delta of it arrives:
/// netsim's `attack-forge` attackers, whose deltas never pass validation,
/// held two rounds in five to their deadline that way.
#[test]
fn a_key_silent_through_its_grace_is_not_waited_for_when_it_starts_again() {
    let mut s = state();
    let k4 = pk(4);
    s.handle(0, Event::PeerConnected(k4));
    s.handle(0, Event::PeerStarts { peer: k4, from: 0 });
    for round in 0..2 {
        assert_eq!(close(&mut s, round * 2_000, round, &[2, 3]).2, CloseReason::Deadline, "its grace");
    }
    // It syncs and says it starts at round 4: no grace this time.
    s.handle(4_000, Event::PeerStarts { peer: k4, from: crate::wire::SYNCING });
    s.handle(4_000, Event::PeerStarts { peer: k4, from: 4 });
    for round in 2..5 {
        let (_, senders, reason) = close(&mut s, round * 2_000, round, &[2, 3]);
        assert_eq!((senders.len(), reason), (3, CloseReason::Quorum), "round {round}: 4 is not awaited");
    }
    // A delta of it comes: it is waited for again, and given its grace
    // when it next starts.
    s.handle(10_000, Event::PeerDelta(delta(4, 5, 4.0)));
    assert!(s.active().contains(&k4));
    let (_, senders, reason) = close(&mut s, 10_000, 5, &[2, 3]);
    assert_eq!((senders.len(), reason), (4, CloseReason::Quorum));
    s.handle(12_000, Event::PeerStarts { peer: k4, from: crate::wire::SYNCING });
    s.handle(12_000, Event::PeerStarts { peer: k4, from: 8 });
    for round in 6..8 {
        close(&mut s, round * 2_000, round, &[2, 3]);
    }
    assert!(s.active().contains(&k4), "round 8: its grace");
}
