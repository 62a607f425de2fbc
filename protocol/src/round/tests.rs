//! Unit tests of [`RoundState`](super::RoundState): quorum, deadlines, replays,
//! sync triggers, newcomers, observers, equivocation, groups, and the bounds
//! on what the network feeds.
use super::*;
use crate::test_keys::{key, pk};
use crate::{Codec, RunId};

pub(super) fn delta(i: u8, round: u64, value: f32) -> SignedDelta {
    based(i, round, value, [0; 32])
}

pub(super) fn based(i: u8, round: u64, value: f32, base: [u8; 32]) -> SignedDelta {
    SignedDelta::sign(
        &key(i),
        RunId([0; 32]),
        round,
        base,
        10,
        Codec::Dense,
        // Sender and round in the payload, as in real deltas, so that two
        // deltas are never taken for a replay of one another by accident.
        Codec::Dense.encode(&[value, f32::from(i), round as f32]),
    )
}

fn diverged(actions: &[Action]) -> Option<PublicKey> {
    actions.iter().find_map(|a| match a {
        Action::Diverged { peer, .. } => Some(*peer),
        _ => None,
    })
}

pub(super) fn config() -> RoundConfig {
    // No settle time: these tests close at quorum at once (see
    // `a_round_settles_after_quorum_so_a_twin_delta_can_surface`).
    RoundConfig { settle_ms: 0, ..RoundConfig::from_spec(&RoundSpec { deadline_ms: 1_000, quorum: 1.0 }) }
}

pub(super) fn state() -> RoundState {
    let mut s = RoundState::new(PublicKey::of(&key(1)), config(), 0);
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(2))));
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(3))));
    s
}

pub(super) fn merged(actions: &[Action]) -> Option<(u64, Vec<PublicKey>, CloseReason)> {
    actions.iter().find_map(|a| match a {
        Action::Merge { round, deltas, reason } => {
            Some((*round, deltas.iter().map(|d| d.header.sender).collect(), *reason))
        }
        _ => None,
    })
}

#[test]
fn an_abstaining_node_merges_its_peers_rounds_without_a_delta_of_its_own() {
    let mut s = state();
    let a = s.handle(5, Event::Abstain);
    assert!(a.is_empty() && !s.wants_local(), "nothing is published, and nothing to train");
    assert!(merged(&s.handle(6, Event::PeerDelta(delta(3, 0, 3.0)))).is_none());
    // Both peers are in: the quorum counts them, not us.
    let (round, senders, reason) = merged(&s.handle(7, Event::PeerDelta(delta(2, 0, 2.0)))).unwrap();
    assert_eq!((round, reason), (0, CloseReason::Quorum));
    assert_eq!(senders.len(), 2);
    assert!(s.wants_local(), "the next round starts afresh");
    // A round nobody else contributes to closes empty at the deadline.
    s.handle(10, Event::Abstain);
    let (round, senders, reason) = merged(&s.handle(1_010, Event::Tick)).unwrap();
    assert_eq!((round, senders.len(), reason), (1, 0, CloseReason::Deadline));
}

#[test]
fn publishes_then_merges_at_quorum_in_sender_order() {
    let mut s = state();
    let a = s.handle(5, Event::LocalDelta(delta(1, 0, 1.0)));
    assert!(matches!(a[0], Action::Publish(_)));
    assert!(merged(&a).is_none());
    assert!(merged(&s.handle(6, Event::PeerDelta(delta(3, 0, 3.0)))).is_none());
    let (round, senders, reason) = merged(&s.handle(7, Event::PeerDelta(delta(2, 0, 2.0)))).unwrap();
    assert_eq!((round, reason), (0, CloseReason::Quorum));
    let mut sorted = senders.clone();
    sorted.sort();
    assert_eq!(senders, sorted);
    assert_eq!(s.round(), 1);
}

#[test]
fn a_round_settles_after_quorum_so_a_twin_delta_can_surface() {
    let mut s = RoundState::new(PublicKey::of(&key(1)), RoundConfig { settle_ms: 50, ..config() }, 0);
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(2))));
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    assert_eq!(s.wake_at(), Some(1_000), "the deadline, before quorum");
    assert!(merged(&s.handle(10, Event::PeerDelta(delta(2, 0, 2.0)))).is_none(), "quorum, then settle");
    assert_eq!(s.wake_at(), Some(60));
    // The twin arrives while the round settles: it is caught before any merge.
    assert_eq!(s.admit(&delta(2, 0, -2.0).header), Admission::Equivocation);
    assert!(merged(&s.handle(59, Event::Tick)).is_none());
    assert_eq!(merged(&s.handle(60, Event::Tick)).unwrap().2, CloseReason::Quorum);
    assert_eq!(s.wake_at(), None);
}

#[test]
fn a_node_with_no_peer_closes_at_quorum_without_settling() {
    let mut s = RoundState::new(PublicKey::of(&key(1)), RoundConfig { settle_ms: 50, ..config() }, 0);
    let (_, senders, reason) = merged(&s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)))).unwrap();
    assert_eq!((senders.len(), reason), (1, CloseReason::Quorum), "no twin can come: closed at once");
    // With a peer connected it settles again.
    s.handle(1, Event::PeerConnected(PublicKey::of(&key(2))));
    s.handle(2, Event::PeerDelta(delta(2, 1, 2.0)));
    assert!(merged(&s.handle(3, Event::LocalDelta(delta(1, 1, 1.0)))).is_none(), "quorum, then settle");
    assert_eq!(s.wake_at(), Some(53));
}

#[test]
fn merges_what_it_has_at_the_deadline() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(10, Event::PeerDelta(delta(2, 0, 2.0)));
    assert!(merged(&s.handle(999, Event::Tick)).is_none());
    let (_, senders, reason) = merged(&s.handle(1_000, Event::Tick)).unwrap();
    assert_eq!(reason, CloseReason::Deadline);
    assert_eq!(senders.len(), 2);
}

#[test]
fn a_departed_peer_no_longer_holds_the_round() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(delta(2, 0, 2.0)));
    let a = s.handle(2, Event::PeerDisconnected(PublicKey::of(&key(3))));
    assert_eq!(merged(&a).unwrap().2, CloseReason::Quorum);
}

#[test]
fn a_connected_peer_that_stopped_sending_stops_holding_rounds() {
    let mut s = state();
    let silent = PublicKey::of(&key(3));
    // Rounds 0 and 1: peer 3 is silent, and each round waits for it until the deadline.
    for round in 0..2 {
        let t = round * 2_000;
        s.handle(t, Event::LocalDelta(delta(1, round, 1.0)));
        s.handle(t + 1, Event::PeerDelta(delta(2, round, 2.0)));
        assert!(s.active().contains(&silent));
        let (_, _, reason) = merged(&s.handle(t + 1_000, Event::Tick)).unwrap();
        assert_eq!(reason, CloseReason::Deadline);
    }
    // From round 2 it is no longer expected: the two that send close the round at once.
    assert!(!s.active().contains(&silent));
    s.handle(4_000, Event::LocalDelta(delta(1, 2, 1.0)));
    let (_, _, reason) = merged(&s.handle(4_001, Event::PeerDelta(delta(2, 2, 2.0)))).unwrap();
    assert_eq!(reason, CloseReason::Quorum);
    // Once it sends again, it is expected again.
    s.handle(4_002, Event::PeerDelta(delta(3, 3, 3.0)));
    assert!(s.active().contains(&silent));
}

#[test]
fn buffers_future_rounds_and_drops_stale_and_duplicates() {
    let mut s = state();
    s.handle(0, Event::PeerDelta(delta(2, 1, 2.0)));
    assert_eq!(s.admit(&delta(2, 1, 2.0).header), Admission::Duplicate);
    assert_eq!(s.admit(&delta(2, 1, 9.0).header), Admission::Equivocation);
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(delta(2, 0, 2.0)));
    s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)));
    assert_eq!(s.round(), 1);
    assert_eq!(s.collected(), 1, "the buffered round-1 delta is now current");
    assert_eq!(s.admit(&delta(3, 0, 3.0).header), Admission::Stale);
}

/// `delta` with the payload of `old`: an old delta re-signed as new.
pub(super) fn resigned(i: u8, round: u64, old: &SignedDelta) -> SignedDelta {
    SignedDelta::sign(&key(i), RunId([0; 32]), round, [0; 32], 10, Codec::Dense, old.payload.clone())
}

#[test]
fn an_old_payload_re_signed_for_a_new_round_or_key_is_a_replay() {
    let mut s = state();
    let old = delta(2, 0, 2.0);
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(old.clone()));
    s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)));
    assert_eq!(s.round(), 1);
    // Its own old delta under a new round, or someone else's under its key.
    assert_eq!(s.admit(&resigned(2, 1, &old).header), Admission::Replayed);
    assert_eq!(s.admit(&resigned(3, 1, &old).header), Admission::Replayed);
    assert_eq!(s.admit(&resigned(3, 4, &old).header), Admission::Replayed);
    // Our own published payload too.
    let mine = delta(1, 0, 1.0);
    assert_eq!(s.admit(&resigned(2, 1, &mine).header), Admission::Replayed);
    // A fresh delta is taken, and a replay does not change what is held.
    assert_eq!(s.admit(&delta(2, 1, 2.0).header), Admission::Accept);
    s.handle(3, Event::PeerDelta(resigned(2, 1, &old)));
    assert_eq!(s.collected(), 0);
}

#[test]
fn payloads_are_forgotten_after_the_replay_window() {
    let config = RoundConfig { replay_window_rounds: 2, ..config() };
    let mut s = RoundState::new(PublicKey::of(&key(1)), config, 0);
    let old = delta(2, 0, 2.0);
    s.handle(0, Event::PeerDelta(old.clone()));
    assert_eq!(s.payloads.len(), 1);
    s.handle(1, Event::Synced { round: 2, expected_from: 2, expected: vec![] });
    assert_eq!(s.admit(&resigned(2, 2, &old).header), Admission::Replayed);
    s.handle(2, Event::Synced { round: 3, expected_from: 3, expected: vec![] });
    assert!(s.payloads.is_empty(), "memory is bounded by the window");
    assert_eq!(s.admit(&resigned(2, 3, &old).header), Admission::Accept);
}

#[test]
fn a_peer_far_ahead_triggers_one_state_request_and_sync_jumps() {
    let mut s = state();
    let a = s.handle(0, Event::PeerDelta(delta(2, 7, 2.0)));
    assert!(matches!(a[0], Action::RequestState { round: 7, .. }));
    let again = s.handle(1, Event::PeerDelta(delta(3, 7, 3.0)));
    assert!(again.is_empty(), "requests are rate limited");
    s.handle(2, Event::Synced { round: 7, expected_from: 7, expected: vec![] });
    assert_eq!(s.round(), 7);
    assert_eq!(s.collected(), 2, "deltas buffered for the synced round are kept");
    let a = s.handle(3, Event::LocalDelta(delta(1, 7, 1.0)));
    assert_eq!(merged(&a).unwrap().0, 7);
}

#[test]
fn a_stale_local_delta_after_sync_is_ignored() {
    let mut s = state();
    s.handle(0, Event::Synced { round: 3, expected_from: 3, expected: vec![] });
    assert!(s.handle(1, Event::LocalDelta(delta(1, 0, 1.0))).is_empty());
}

#[test]
fn future_buffer_is_bounded_and_keeps_the_nearest_rounds() {
    let buffered = config().buffered_rounds as u64;
    let mut s = RoundState::new(PublicKey::of(&key(1)), config(), 0);
    // A key gossiping deltas of ever farther rounds (a sync attacker's lures)
    // fills the buffer and then is refused: the next round's deltas stay.
    for r in 1..=20 {
        s.handle(0, Event::PeerDelta(delta(2, r, 0.0)));
    }
    assert_eq!(s.future_rounds(), s.config.buffered_rounds);
    assert_eq!(s.admit(&delta(3, 20, 0.0).header), Admission::Full);
    assert_eq!(s.admit(&delta(3, 1, 0.0).header), Admission::Accept);
    // A nearer round than the farthest held takes that one's place.
    let mut far = RoundState::new(PublicKey::of(&key(1)), config(), 0);
    for r in 2..=buffered + 1 {
        far.handle(0, Event::PeerDelta(delta(2, 10 * r, 0.0)));
    }
    far.handle(0, Event::PeerDelta(delta(3, 1, 0.0)));
    assert_eq!(far.future_rounds(), far.config.buffered_rounds);
    assert_eq!(far.admit(&delta(3, 1, 0.0).header), Admission::Duplicate, "the nearest round is kept");
    assert_eq!(far.admit(&delta(4, 10 * (buffered + 1), 0.0).header), Admission::Full, "the farthest went");
    // A refused round's payloads are never remembered; those of the rounds held are.
    assert_eq!(s.remembered_payloads(), s.config.buffered_rounds);
    assert_eq!(s.admit(&resigned(3, 5, &delta(2, 1, 0.0)).header), Admission::Replayed);
    assert_eq!(s.admit(&resigned(3, 5, &delta(2, 20, 0.0)).header), Admission::Accept);
}

#[test]
fn the_current_round_is_taken_while_the_future_buffer_is_full() {
    let mut s = RoundState::new(pk(1), config(), 0);
    for r in 1..=s.config.buffered_rounds as u64 {
        s.handle(0, Event::PeerDelta(delta(2, r, 0.0)));
    }
    assert_eq!(s.admit(&delta(3, 0, 0.0).header), Admission::Accept);
    s.handle(1, Event::PeerDelta(delta(3, 0, 0.0)));
    assert_eq!(s.collected(), 1);
    assert_eq!(s.future_rounds(), s.config.buffered_rounds, "no future round made room for it");
}

#[test]
fn payloads_stay_within_the_window_over_many_normal_closes() {
    let window = 16;
    let mut s = RoundState::new(pk(1), RoundConfig { replay_window_rounds: window, ..config() }, 0);
    s.handle(0, Event::PeerConnected(pk(2)));
    let per_round = 2;
    let bound = window as usize * per_round;
    for round in 0..1_000 {
        let t = round * 10;
        s.handle(t, Event::LocalDelta(delta(1, round, 1.0)));
        let (closed, senders, reason) =
            merged(&s.handle(t + 1, Event::PeerDelta(delta(2, round, 2.0)))).unwrap();
        assert_eq!((closed, senders.len(), reason), (round, per_round, CloseReason::Quorum));
        assert!(s.remembered_payloads() <= bound, "round {round}: {}", s.remembered_payloads());
    }
    assert_eq!(s.round(), 1_000);
    assert_eq!(s.remembered_payloads(), bound, "the whole window is remembered");
    // The oldest round of the window still refuses replays, of a peer's
    // payload and of ours; the round before it is forgotten.
    let oldest = 1_000 - window;
    assert_eq!(s.admit(&resigned(2, 1_000, &delta(2, oldest, 2.0)).header), Admission::Replayed);
    assert_eq!(s.admit(&resigned(2, 1_000, &delta(1, oldest, 1.0)).header), Admission::Replayed);
    assert_eq!(s.admit(&resigned(2, 1_000, &delta(2, oldest - 1, 2.0)).header), Admission::Accept);
}

#[test]
fn a_banned_keys_place_in_a_round_is_not_taken_again() {
    let mut s = RoundState::new(pk(1), RoundConfig { max_deltas_per_round: 2, ..config() }, 0);
    s.handle(0, Event::PeerDelta(delta(2, 1, 2.0)));
    s.handle(0, Event::PeerDelta(delta(3, 1, 3.0)));
    assert_eq!(s.admit(&delta(4, 1, 4.0).header), Admission::Full);
    s.handle(1, Event::Ban(pk(2)));
    assert_eq!(s.rounds[&1].len(), 1, "the banned key's delta is dropped...");
    assert_eq!(s.remembered_payloads(), 2, "...but its payload is still remembered");
    assert_eq!(s.admit(&delta(4, 1, 4.0).header), Admission::Full);
}

#[test]
fn connected_peers_are_bounded() {
    let mut s = RoundState::new(pk(1), RoundConfig { max_peers: 3, ..config() }, 0);
    for i in 2..=10 {
        s.handle(0, Event::PeerConnected(pk(i)));
    }
    assert_eq!(s.connected.keys().copied().collect::<BTreeSet<_>>(), BTreeSet::from([pk(2), pk(3), pk(4)]));
    assert_eq!(s.quorum_target(), 4, "those tracked are expected as before");
    // Word that an untracked peer starts does not make room for it; a tracked one's counts.
    s.handle(0, Event::PeerStarts { peer: pk(5), from: 0 });
    assert!(!s.connected.contains_key(&pk(5)));
    s.handle(0, Event::PeerStarts { peer: pk(4), from: 5 });
    assert_eq!(s.expected_from(&pk(4)), 5);
    // One leaves: the next to connect takes its place.
    s.handle(1, Event::PeerDisconnected(pk(2)));
    s.handle(1, Event::PeerConnected(pk(7)));
    assert!(s.connected.contains_key(&pk(7)));
    assert_eq!(s.connected.len(), 3);
}

#[test]
fn recently_active_senders_are_bounded_and_the_nearest_rounds_win() {
    // Activity counts for the current round and the next (see `note_active`).
    let mut s = RoundState::new(pk(1), RoundConfig { max_peers: 3, ..config() }, 10);
    s.handle(0, Event::PeerDelta(delta(2, 11, 2.0)));
    s.handle(0, Event::PeerDelta(delta(3, 10, 3.0)));
    s.handle(0, Event::PeerDelta(delta(4, 10, 4.0)));
    assert_eq!(s.last_active.len(), 3);
    // A sender of a nearer round takes the place of the farthest.
    s.handle(0, Event::PeerDelta(delta(5, 10, 5.0)));
    assert_eq!(s.last_active.len(), 3);
    assert!(!s.last_active.contains_key(&pk(2)) && s.last_active.contains_key(&pk(5)));
    // One no nearer than any held is not tracked, but its delta is kept.
    s.handle(0, Event::PeerDelta(delta(6, 10, 6.0)));
    assert!(!s.last_active.contains_key(&pk(6)));
    assert_eq!(s.rounds[&10].len(), 4);
    // Those tracked still move on.
    s.handle(0, Event::PeerDelta(delta(4, 11, 4.0)));
    assert_eq!(s.last_active[&pk(4)], 11);
}

#[test]
fn bans_are_bounded_and_one_past_the_bound_still_drops_the_keys_deltas() {
    let mut s = RoundState::new(pk(1), RoundConfig { max_banned: 2, ..config() }, 0);
    for i in 2..=5 {
        s.handle(0, Event::PeerConnected(pk(i)));
    }
    s.handle(0, Event::PeerDelta(delta(4, 0, 4.0)));
    s.handle(1, Event::Ban(pk(2)));
    s.handle(1, Event::Ban(pk(3)));
    s.handle(2, Event::Ban(pk(4)));
    assert_eq!(*s.banned(), BTreeSet::from([pk(2), pk(3)]));
    assert_eq!(s.collected(), 0, "the unremembered key's delta is dropped...");
    assert!(!s.connected.contains_key(&pk(4)), "...and it is no longer expected");
    // An equivocation caught past the bound drops the key's delta, and yields
    // no proof to hold: pending proofs stay within the bound too.
    s.handle(3, Event::PeerDelta(delta(5, 0, 5.0)));
    s.handle(3, Event::PeerDelta(delta(5, 0, -5.0)));
    assert!(s.take_equivocations().is_empty());
    assert!(!s.is_banned(&pk(5)));
    assert_eq!(s.collected(), 0);
}

#[test]
fn a_peer_that_connects_to_a_running_node_is_expected_two_rounds_later() {
    let (k2, k3) = (PublicKey::of(&key(2)), PublicKey::of(&key(3)));
    let mut s = RoundState::new(PublicKey::of(&key(1)), config(), 0);
    s.handle(0, Event::PeerConnected(k2));
    assert_eq!(s.expected_from(&k2), 0, "peers there before the first round are expected at once");
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerConnected(k3));
    assert_eq!(s.expected_from(&k3), 2);
    // The newcomer's early delta does not count toward the quorum...
    assert!(merged(&s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)))).is_none());
    // ...but is merged with the round once the expected peer delivers.
    let (round, senders, reason) = merged(&s.handle(3, Event::PeerDelta(delta(2, 0, 2.0)))).unwrap();
    assert_eq!((round, senders.len(), reason), (0, 3, CloseReason::Quorum));
}

#[test]
fn a_newcomer_is_expected_from_the_round_it_announces() {
    let (k2, k3) = (PublicKey::of(&key(2)), PublicKey::of(&key(3)));
    let mut s = RoundState::new(PublicKey::of(&key(1)), config(), 0);
    s.handle(0, Event::PeerConnected(k2));
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerConnected(k3));
    assert_eq!(s.expected_from(&k3), 2, "our guess");
    // It synced from a peer that saw it a round later.
    s.handle(1, Event::PeerStarts { peer: k3, from: 3 });
    assert_eq!(s.expected_from(&k3), 3);
    assert!(merged(&s.handle(2, Event::PeerDelta(delta(2, 0, 2.0)))).is_some());
    s.handle(3, Event::LocalDelta(delta(1, 1, 1.5)));
    assert!(merged(&s.handle(4, Event::PeerDelta(delta(2, 1, 2.5)))).is_some());
    // Round 2 closes at quorum without it, not at the deadline.
    s.handle(5, Event::LocalDelta(delta(1, 2, 1.75)));
    let (round, senders, reason) = merged(&s.handle(6, Event::PeerDelta(delta(2, 2, 2.75)))).unwrap();
    assert_eq!((round, senders.len(), reason), (2, 2, CloseReason::Quorum));
    assert!(s.active().contains(&k3), "expected in round 3");
}

#[test]
fn an_observer_sits_out_but_follows_by_merging_its_peers_rounds() {
    let mut s = state();
    s.handle(0, Event::Synced { round: 5, expected_from: 7, expected: vec![] });
    assert!(s.observing() && !s.wants_local());
    assert!(!s.active().contains(&PublicKey::of(&key(1))), "an observer is not in its own quorum");
    // Its peers' deltas close its rounds, as for a paused node, so its state
    // keeps up with theirs; it waits for each connected peer, as they do.
    assert_eq!(merged(&s.handle(1, Event::PeerDelta(delta(2, 5, 2.0)))), None, "peer 3 is still to come");
    let (round, senders, _) =
        merged(&s.handle(1, Event::PeerDelta(delta(3, 5, 2.0)))).expect("merges round 5");
    assert_eq!((round, senders.len()), (5, 2));
    assert!(s.observing(), "still observing round 6");
    s.handle(2, Event::PeerDelta(delta(2, 6, 2.0)));
    let (round, _, _) = merged(&s.handle(2, Event::PeerDelta(delta(3, 6, 2.0)))).expect("merges round 6");
    assert_eq!(round, 6);
    assert!(!s.observing() && s.wants_local(), "contributes from round 7");
}

#[test]
fn an_observer_overtaken_by_a_later_round_syncs_again() {
    let mut s = state();
    s.handle(0, Event::Synced { round: 5, expected_from: 7, expected: vec![] });
    let a = s.handle(2, Event::PeerDelta(delta(2, 6, 2.0)));
    assert!(matches!(a[0], Action::RequestState { round: 6, .. }), "{a:?}");
    s.handle(2, Event::PeerDelta(delta(3, 6, 2.0)));
    // The buffered round-6 deltas are kept; they are all the round waits for,
    // so the round closes on them (after the settle time, none in these tests)
    // rather than wait for deltas that already came.
    let (round, senders, reason) =
        merged(&s.handle(3, Event::Synced { round: 6, expected_from: 7, expected: vec![] }))
            .expect("round 6 closes");
    assert_eq!((round, senders.len(), reason), (6, 2, CloseReason::Quorum));
    assert!(!s.observing() && s.wants_local(), "contributes from round 7");
}

#[test]
fn a_node_whose_base_the_majority_does_not_share_asks_for_their_state() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(based(1, 0, 1.0, [9; 32])));
    s.handle(1, Event::PeerDelta(based(2, 0, 2.0, [5; 32])));
    let a = s.handle(2, Event::PeerDelta(based(3, 0, 3.0, [5; 32])));
    assert!(merged(&a).is_some());
    assert_eq!(diverged(&a), Some(PublicKey::of(&key(2))));
}

#[test]
fn the_majority_and_a_tie_won_by_the_smaller_hash_stay_put() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(based(1, 0, 1.0, [5; 32])));
    s.handle(1, Event::PeerDelta(based(2, 0, 2.0, [5; 32])));
    let a = s.handle(2, Event::PeerDelta(based(3, 0, 3.0, [9; 32])));
    assert!(merged(&a).is_some() && diverged(&a).is_none());
    // Two against two: the smaller hash wins.
    let mut s = state();
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(4))));
    s.handle(0, Event::LocalDelta(based(1, 0, 1.0, [5; 32])));
    s.handle(1, Event::PeerDelta(based(2, 0, 2.0, [5; 32])));
    s.handle(1, Event::PeerDelta(based(3, 0, 2.0, [9; 32])));
    let a = s.handle(2, Event::PeerDelta(based(4, 0, 3.0, [9; 32])));
    assert!(merged(&a).is_some() && diverged(&a).is_none());
}

#[test]
fn a_second_delta_for_a_round_bans_the_sender_and_drops_its_first() {
    let mut s = state();
    let (k2, k3) = (PublicKey::of(&key(2)), PublicKey::of(&key(3)));
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(delta(2, 0, 2.0)));
    s.handle(1, Event::PeerDelta(delta(2, 1, 2.0)));
    assert!(s.take_equivocations().is_empty());
    assert!(merged(&s.handle(2, Event::PeerDelta(delta(2, 0, 9.0)))).is_none(), "k3 is still expected");
    let proofs = s.take_equivocations();
    assert_eq!(proofs.len(), 1);
    assert_eq!(proofs[0].verify(RunId([0; 32])), Ok(k2));
    assert!(s.is_banned(&k2));
    assert_eq!(s.admit(&delta(2, 2, 2.0).header), Admission::Banned);
    // The banned key's first delta is gone and it is no longer expected:
    // k3's delta closes round 0 with two deltas, and round 1 waits for no k2.
    let (round, senders, _) = merged(&s.handle(3, Event::PeerDelta(delta(3, 0, 3.0)))).unwrap();
    assert_eq!((round, senders), (0, vec![PublicKey::of(&key(1)), k3]));
    assert_eq!(s.collected(), 0, "k2's buffered round-1 delta was dropped");
    assert_eq!(s.quorum_target(), 2);
}

#[test]
fn a_ban_from_a_proof_drops_the_unmerged_delta_and_never_bans_ourselves() {
    let mut s = state();
    let k2 = PublicKey::of(&key(2));
    s.handle(0, Event::PeerDelta(delta(2, 0, 2.0)));
    s.handle(1, Event::Ban(k2));
    assert_eq!(s.collected(), 0);
    assert!(s.take_equivocations().is_empty(), "a ban from outside is not a new proof");
    s.handle(2, Event::Ban(PublicKey::of(&key(1))));
    assert!(!s.is_banned(&PublicKey::of(&key(1))));
    s.handle(3, Event::LocalDelta(delta(1, 0, 1.0)));
    // Someone else's delta under our key is refused but bans nobody.
    s.handle(4, Event::PeerDelta(delta(1, 0, 5.0)));
    assert!(s.take_equivocations().is_empty());
    let (_, senders, _) = merged(&s.handle(5, Event::PeerDelta(delta(3, 0, 3.0)))).unwrap();
    assert_eq!(senders.len(), 2);
}

#[test]
fn a_grouped_round_expects_and_merges_only_its_group() {
    let mut s = state();
    let group = vec![PublicKey::of(&key(1)), PublicKey::of(&key(3))];
    s.handle(0, Event::Group { round: 0, members: group });
    s.handle(0, Event::LocalDelta(based(1, 0, 1.0, [1; 32])));
    s.handle(1, Event::PeerDelta(based(2, 0, 2.0, [2; 32])));
    let a = s.handle(2, Event::PeerDelta(based(3, 0, 3.0, [3; 32])));
    let (_, senders, reason) = merged(&a).expect("the group is complete");
    assert_eq!(reason, CloseReason::Quorum);
    assert_eq!(senders, vec![PublicKey::of(&key(1)), PublicKey::of(&key(3))]);
    assert!(diverged(&a).is_none(), "grouped rounds do not check agreement");
    // Round 1 has no group: back to everyone.
    assert_eq!(s.quorum_target(), 3);
}

#[test]
fn going_back_to_an_older_state_observes_past_the_rounds_signed_and_keeps_their_deltas() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDelta(delta(2, 0, 2.0)));
    assert!(merged(&s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)))).is_some());
    // Trained from the lineage the node is about to leave.
    let ours = based(1, 1, 1.5, [9; 32]);
    s.handle(3, Event::LocalDelta(ours.clone()));
    s.handle(4, Event::PeerDelta(delta(2, 1, 2.5)));
    assert_eq!(s.round(), 1);
    // The majority's state of round 0 is installed: back to round 0, observing.
    assert!(s.handle(5, Event::Synced { round: 0, expected_from: 0, expected: vec![] }).is_empty());
    assert_eq!((s.round(), s.contributes_from(), s.last_signed()), (0, 2, Some(1)));
    assert!(s.observing() && !s.wants_local());
    // A second delta of ours for round 0 is never taken, nor handed back as ours.
    assert!(s.handle(6, Event::LocalDelta(delta(1, 0, 9.0))).is_empty());
    assert_eq!(s.admit(&delta(1, 0, 9.0).header), Admission::Equivocation);
    // Ours of round 0, as the majority holds it, is merged like theirs.
    assert_eq!(s.admit(&delta(1, 0, 1.0).header), Admission::Accept);
    s.handle(7, Event::PeerDelta(delta(1, 0, 1.0)));
    s.handle(7, Event::PeerDelta(delta(2, 0, 2.0)));
    let (round, senders, _) = merged(&s.handle(8, Event::PeerDelta(delta(3, 0, 3.0)))).expect("closes");
    assert_eq!((round, senders.len()), (0, 3));
    // Round 1 still holds our delta and the peer's from before.
    assert_eq!(s.collected(), 2);
    assert!(s.handle(9, Event::LocalDelta(delta(1, 1, 7.0))).is_empty(), "round 1 was signed");
    let actions = s.handle(10, Event::PeerDelta(delta(3, 1, 3.5)));
    let (round, senders, _) = merged(&actions).expect("closes");
    assert_eq!((round, senders.len()), (1, 3));
    assert_eq!(diverged(&actions), None, "our old delta's base is no longer our lineage");
    assert!(s.wants_local(), "contributes again from round 2");
}

#[test]
fn a_joiner_is_not_expected_before_the_round_it_announced_even_once_its_deltas_come() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    let k4 = pk(4);
    s.handle(1, Event::PeerConnected(k4));
    s.handle(1, Event::PeerStarts { peer: k4, from: 1 });
    assert!(!s.active().contains(&k4));
    // Its delta of round 1 comes while round 0 still waits for peers 2 and 3.
    s.handle(2, Event::PeerDelta(delta(4, 1, 4.0)));
    assert!(!s.active().contains(&k4), "a delta of round 1 says nothing of round 0");
    s.handle(3, Event::PeerDelta(delta(2, 0, 2.0)));
    let (round, senders, reason) = merged(&s.handle(4, Event::PeerDelta(delta(3, 0, 3.0)))).unwrap();
    assert_eq!((round, senders.len(), reason), (0, 3, CloseReason::Quorum));
    assert!(s.active().contains(&k4), "expected in round 1");
}

/// Netsim's crash-restart scenario with a 2.5 s restart found it: a node
/// restarted at round 3 connects to its peers, syncs to round 5, and had
/// closed round 5 on the first peer's delta, because the second had connected
/// "three rounds ago" and said nothing since (it could not: those rounds were
/// skipped). Skipped rounds show nothing of a peer; its grace starts anew.
#[test]
fn a_node_that_syncs_ahead_waits_for_every_connected_peer_in_the_round_it_lands_in() {
    let mut s = RoundState::new(pk(1), config(), 3);
    s.handle(0, Event::PeerConnected(pk(2)));
    s.handle(0, Event::PeerConnected(pk(3)));
    s.handle(10, Event::Synced { round: 5, expected_from: 7, expected: vec![] });
    assert!(s.observing());
    let early = s.handle(20, Event::PeerDelta(delta(2, 5, 1.0)));
    assert_eq!(merged(&early), None, "one of two peers' deltas closes nothing");
    let both = s.handle(30, Event::PeerDelta(delta(3, 5, 1.0)));
    let (round, mut senders, reason) = merged(&both).expect("both peers' deltas close the round");
    senders.sort();
    let mut peers = vec![pk(2), pk(3)];
    peers.sort();
    assert_eq!((round, senders, reason), (5, peers, CloseReason::Quorum));
}

/// A connected peer silent past its grace (the other side of a partition that
/// just healed) is no longer waited for; were a state offer to tell it its
/// old round, it would contribute to rounds we close without it and merge
/// sets we do not. It is told the round a syncing peer is told.
#[test]
fn a_peer_we_no_longer_wait_for_is_told_to_contribute_from_two_rounds_on() {
    let mut s = state();
    assert_eq!(s.expected_from(&pk(3)), 0, "expected at once while within its grace");
    let mut t = 0;
    while s.round() < 3 {
        let r = s.round();
        s.handle(t, Event::LocalDelta(delta(1, r, 1.0)));
        s.handle(t + 1, Event::PeerDelta(delta(2, r, 2.0)));
        // Node 3 says nothing: the round closes at its deadline, or at once
        // once node 3's grace has run out.
        t += 1_001;
        s.handle(t, Event::Tick);
        t += 1;
    }
    assert!(!s.active().contains(&pk(3)));
    assert_eq!(s.expected_from(&pk(2)), 0, "a peer that contributes keeps its round");
    assert_eq!(s.expected_from(&pk(3)), 5);
    // A delta of it in time makes it expected again, from its old round.
    s.handle(t, Event::PeerDelta(delta(3, 3, 3.0)));
    assert_eq!(s.expected_from(&pk(3)), 0);
}

/// A peer's last delta can reach the round state after its connection closed
/// (the driver verifies deltas on workers): sent before it left, it is merged,
/// but it does not make the peer expected in the rounds to come, which would
/// then wait for its deadline. A later delta of it (relayed) does.
#[test]
fn a_delta_sent_before_its_peer_left_does_not_make_it_expected_again() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    s.handle(1, Event::PeerDisconnected(pk(3)));
    assert!(merged(&s.handle(2, Event::PeerDelta(delta(3, 0, 3.0)))).is_none(), "node 2 is awaited");
    let actions = s.handle(3, Event::PeerDelta(delta(2, 0, 2.0)));
    let (round, senders, _) = merged(&actions).expect("round 0 closes");
    assert_eq!((round, senders.len()), (0, 3), "its delta of round 0 is merged");
    assert!(!s.active().contains(&pk(3)), "but it is not expected in round 1");
    // A delta of a round after it left: it is in the run, through others.
    s.handle(4, Event::PeerDelta(delta(3, 1, 3.0)));
    assert!(s.active().contains(&pk(3)));
}

/// Rounds that all close at the deadline (a peer is expected and never
/// sends) keep the nodes' offsets when each deadline counts from the node's
/// own publish, and training times make them drift until one node closes a
/// deadline after another and leaves its delta out (netsim's
/// `attack-sync-sybil-deadline`). A node whose peer published first counts
/// from that peer's delta, even one that came before the node entered the round.
#[test]
fn a_deadline_counts_from_the_rounds_first_delta_when_a_peer_published_before_us() {
    let mut s = state();
    s.handle(0, Event::LocalDelta(delta(1, 0, 1.0)));
    // Node 2 is ahead of us: its delta of round 1 comes while we gather round 0.
    s.handle(400, Event::PeerDelta(delta(2, 1, 2.0)));
    let (round, _, reason) = merged(&s.handle(1_000, Event::Tick)).unwrap();
    assert_eq!((round, reason), (0, CloseReason::Deadline), "node 3 never sends");
    // Our delta of round 1 is out at 1 300: the deadline counts from 400, not from 1 300.
    s.handle(1_300, Event::LocalDelta(delta(1, 1, 1.0)));
    assert_eq!(s.wake_at(), Some(1_400));
    let (round, senders, reason) = merged(&s.handle(1_400, Event::Tick)).unwrap();
    assert_eq!((round, senders.len(), reason), (1, 2, CloseReason::Deadline));
    // When we publish first, a later peer delta does not move our deadline.
    s.handle(1_500, Event::LocalDelta(delta(1, 2, 1.0)));
    assert!(
        merged(&s.handle(1_900, Event::PeerDelta(delta(3, 2, 3.0)))).is_none(),
        "node 2 is still expected"
    );
    assert_eq!(s.wake_at(), Some(2_500));
}
