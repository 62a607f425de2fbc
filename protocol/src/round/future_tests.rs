//! Tests of the future-round buffer's byte budget (`round/future.rs`): floods
//! of far rounds from many keys, unknown keys' share, connected peers first,
//! and the current round never refused for room.

use super::tests::{config, delta, merged};
use super::*;
use crate::test_keys::pk;

/// A config whose future buffer holds `n` of the tests' deltas.
fn budget_of(n: usize) -> RoundConfig {
    RoundConfig { max_future_bytes: n * future::cost(delta(2, 1, 0.0).header.payload_len), ..config() }
}

#[test]
fn a_flood_of_far_round_deltas_from_many_keys_stays_within_the_byte_budget() {
    let config = budget_of(10);
    let budget = config.max_future_bytes;
    let mut s = RoundState::new(pk(1), config, 0);
    s.handle(0, Event::PeerConnected(pk(2)));
    s.handle(0, Event::PeerConnected(pk(3)));
    // The connected peers' deltas of the next round come first.
    s.handle(0, Event::PeerDelta(delta(2, 1, 2.0)));
    s.handle(0, Event::PeerDelta(delta(3, 1, 3.0)));
    let mut refused = 0;
    for i in 10..=200 {
        for r in 1..=20 {
            let d = delta(i, r, 9.0);
            if s.admit(&d.header) != Admission::Accept {
                refused += 1;
            }
            s.handle(0, Event::PeerDelta(d));
            assert!(s.future_bytes() <= budget, "key {i}, round {r}: {} > {budget}", s.future_bytes());
            assert!(s.future_rounds() <= s.config.buffered_rounds);
        }
    }
    assert!(refused > 0, "the flood was refused once the budget was full");
    assert_eq!(s.future_bytes(), budget, "the budget is used");
    // The flood did not displace the connected peers' deltas.
    assert!(s.rounds[&1].contains_key(&pk(2)) && s.rounds[&1].contains_key(&pk(3)));
    // A connected peer's delta displaces an unknown key's, the farthest first.
    let farthest = *s.rounds.keys().next_back().unwrap();
    let unknown_far = s.rounds[&farthest].len();
    assert_eq!(s.admit(&delta(2, 2, 2.0).header), Admission::Accept);
    s.handle(1, Event::PeerDelta(delta(2, 2, 2.0)));
    assert_eq!(s.future_bytes(), budget);
    assert!(s.rounds[&2].contains_key(&pk(2)));
    assert_eq!(s.rounds.get(&farthest).map_or(0, |m| m.len()), unknown_far - 1);
    // An unknown key's delta does not displace one of its round, nor a nearer one.
    assert_eq!(s.admit(&delta(201, farthest, 9.0).header), Admission::Full);
    assert_eq!(s.admit(&delta(201, farthest + 1, 9.0).header), Admission::Full);
}

#[test]
fn unknown_keys_deltas_of_far_rounds_hold_only_their_own_part_of_the_budget() {
    let one = future::cost(delta(2, 1, 0.0).header.payload_len);
    let config = RoundConfig { max_far_unknown_bytes: 3 * one, ..budget_of(10) };
    let mut s = RoundState::new(pk(1), config, 0);
    s.handle(0, Event::PeerConnected(pk(2)));
    // A flood of made-up keys for far rounds: three are held.
    for i in 10..40 {
        s.handle(0, Event::PeerDelta(delta(i, 1_000 + u64::from(i % 4), 9.0)));
    }
    assert_eq!(s.future_bytes(), 3 * one);
    // A nearer far round still displaces the farthest of them.
    assert_eq!(s.admit(&delta(50, 2, 5.0).header), Admission::Accept);
    s.handle(0, Event::PeerDelta(delta(50, 2, 5.0)));
    assert!(s.rounds[&2].contains_key(&pk(50)));
    assert_eq!(s.future_bytes(), 3 * one);
    // Neither the next round's deltas of unknown keys nor a connected peer's
    // far delta count against that part: the rest of the budget is theirs.
    for i in 60..66 {
        assert_eq!(s.admit(&delta(i, 1, 6.0).header), Admission::Accept, "key {i}");
        s.handle(0, Event::PeerDelta(delta(i, 1, 6.0)));
    }
    s.handle(0, Event::PeerDelta(delta(2, 5, 2.0)));
    assert!(s.rounds[&5].contains_key(&pk(2)));
    assert_eq!(s.future_bytes(), 10 * one);
}

#[test]
fn unknown_keys_give_way_to_a_peer_that_connects() {
    let mut s = RoundState::new(pk(1), budget_of(2), 0);
    s.handle(0, Event::PeerDelta(delta(2, 3, 2.0)));
    s.handle(0, Event::PeerDelta(delta(3, 1, 3.0)));
    // Full: a nearer round displaces a farther one among unknown keys.
    assert_eq!(s.admit(&delta(4, 4, 4.0).header), Admission::Full);
    s.handle(0, Event::PeerDelta(delta(4, 2, 4.0)));
    assert!(!s.rounds.contains_key(&3), "round 3 went, and its payloads with it");
    // Once connected, a key's delta is kept before unknown ones, even nearer.
    s.handle(0, Event::PeerConnected(pk(4)));
    s.handle(0, Event::PeerDelta(delta(5, 1, 5.0)));
    assert!(s.rounds[&2].contains_key(&pk(4)));
    assert_eq!(s.rounds[&1].len(), 1);
    assert_eq!(s.future_bytes(), s.config.max_future_bytes);
    // Banned, its charge goes with its delta.
    s.handle(0, Event::Ban(pk(4)));
    assert_eq!(s.future_bytes(), s.config.max_future_bytes / 2);
}

#[test]
fn the_current_round_is_taken_while_the_byte_budget_is_full() {
    let mut s = RoundState::new(pk(1), budget_of(3), 0);
    s.handle(0, Event::PeerConnected(pk(2)));
    for i in 10..20 {
        s.handle(0, Event::PeerDelta(delta(i, 1, 9.0)));
    }
    assert_eq!(s.future_bytes(), s.config.max_future_bytes);
    for i in 20..30 {
        assert_eq!(s.admit(&delta(i, 0, 0.0).header), Admission::Accept);
        s.handle(1, Event::PeerDelta(delta(i, 0, 0.0)));
    }
    assert_eq!(s.collected(), 10, "the current round is not charged");
    assert_eq!(s.future_bytes(), s.config.max_future_bytes);
    // When the round moves on, the deltas of the round it reaches leave the budget.
    s.handle(2, Event::LocalDelta(delta(1, 0, 1.0)));
    let (round, senders, _) = merged(&s.handle(1_002, Event::Tick)).unwrap();
    assert_eq!((round, senders.len(), s.round()), (0, 11, 1));
    assert_eq!(s.future_bytes(), 0);
    assert_eq!(s.collected(), 3);
}

#[test]
fn a_lagging_node_learns_it_is_behind_through_a_flood() {
    let mut s = RoundState::new(pk(1), budget_of(4), 0);
    s.handle(0, Event::PeerConnected(pk(2)));
    // Unknown keys fill the budget with deltas of the next round: none says
    // we are behind.
    for i in 10..40 {
        assert!(s.handle(0, Event::PeerDelta(delta(i, 1, 9.0))).is_empty());
    }
    assert_eq!(s.future_bytes(), s.config.max_future_bytes);
    // A connected peer rounds ahead still gets in, and we ask it for its state.
    let a = s.handle(1, Event::PeerDelta(delta(2, 6, 2.0)));
    assert!(matches!(a[..], [Action::RequestState { peer, round: 6 }] if peer == pk(2)), "{a:?}");
    assert!(s.future_bytes() <= s.config.max_future_bytes);
    // And after the sync, the buffered deltas of the round reached stay,
    // charged anew within the budget.
    // (round 6 then closes on it: see `an_observer_overtaken_by_a_later_round_syncs_again`).
    let (round, senders, _) =
        merged(&s.handle(2, Event::Synced { round: 6, expected_from: 8, expected: vec![] })).unwrap();
    assert_eq!((round, senders), (6, vec![pk(2)]));
    assert_eq!(s.future_bytes(), 0);
}
