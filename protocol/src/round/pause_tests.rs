//! Tests of a paused node: it publishes nothing, is not expected in its own
//! rounds, and still closes and merges its peers' rounds.

use super::*;
use crate::test_keys::key;
use crate::{Codec, RunId};

/// Sender and round in the payload, as in real deltas: equal payloads are replays.
fn delta(i: u8, round: u64) -> SignedDelta {
    let payload = Codec::Dense.encode(&[1.0, f32::from(i), round as f32]);
    SignedDelta::sign(&key(i), RunId([0; 32]), round, [0; 32], 10, Codec::Dense, payload)
}

fn merged(actions: &[Action]) -> Option<(u64, Vec<PublicKey>, CloseReason)> {
    actions.iter().find_map(|a| match a {
        Action::Merge { round, deltas, reason } => {
            Some((*round, deltas.iter().map(|d| d.header.sender).collect(), *reason))
        }
        _ => None,
    })
}

/// Node 1 with peers 2 and 3, quorum 1.0, no settle time, a 1 s deadline.
fn state() -> RoundState {
    let config = RoundConfig {
        settle_ms: 0,
        ..RoundConfig::from_spec(&crate::spec::RoundSpec { deadline_ms: 1_000, quorum: 1.0 })
    };
    let mut s = RoundState::new(PublicKey::of(&key(1)), config, 0);
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(2))));
    s.handle(0, Event::PeerConnected(PublicKey::of(&key(3))));
    s
}

#[test]
fn a_paused_node_merges_its_peers_deltas_without_its_own() {
    let mut s = state();
    s.handle(0, Event::Paused(true));
    assert!(s.paused() && !s.wants_local());
    assert!(!s.active().contains(&PublicKey::of(&key(1))), "a paused node does not wait for itself");
    assert_eq!(s.wake_at(), None, "no deadline before the round's first delta");
    assert!(merged(&s.handle(5, Event::PeerDelta(delta(2, 0)))).is_none());
    assert_eq!(s.wake_at(), Some(1_005), "the deadline counts from the first delta");
    let (round, senders, reason) = merged(&s.handle(6, Event::PeerDelta(delta(3, 0)))).unwrap();
    assert_eq!((round, reason), (0, CloseReason::Quorum));
    assert_eq!(senders, vec![PublicKey::of(&key(2)), PublicKey::of(&key(3))]);
    assert_eq!(s.round(), 1);
}

#[test]
fn a_paused_node_closes_at_the_deadline_from_the_first_delta() {
    let mut s = state();
    s.handle(0, Event::Paused(true));
    s.handle(100, Event::PeerDelta(delta(2, 0)));
    assert!(merged(&s.handle(1_099, Event::Tick)).is_none());
    let (_, senders, reason) = merged(&s.handle(1_100, Event::Tick)).unwrap();
    assert_eq!((senders.len(), reason), (1, CloseReason::Deadline));
}

#[test]
fn buffered_deltas_of_the_next_round_start_its_deadline_when_it_opens() {
    let mut s = state();
    s.handle(0, Event::Paused(true));
    s.handle(1, Event::PeerDelta(delta(2, 1)));
    s.handle(2, Event::PeerDelta(delta(2, 0)));
    assert!(merged(&s.handle(3, Event::PeerDelta(delta(3, 0)))).is_some());
    assert_eq!(s.wake_at(), Some(1_003), "round 1 already holds a delta: its deadline runs from the merge");
}

#[test]
fn pausing_after_publishing_keeps_the_own_delta_and_resuming_trains_again() {
    let mut s = state();
    let published = s.handle(0, Event::LocalDelta(delta(1, 0)));
    assert!(matches!(published[0], Action::Publish(_)));
    s.handle(1, Event::Paused(true));
    s.handle(2, Event::PeerDelta(delta(2, 0)));
    let (_, senders, _) = merged(&s.handle(3, Event::PeerDelta(delta(3, 0)))).unwrap();
    assert_eq!(senders.len(), 3, "the delta published before the pause is merged");
    assert!(!s.wants_local(), "paused: round 1 gets no delta of ours");
    s.handle(4, Event::Paused(false));
    assert!(s.wants_local() && s.active().contains(&PublicKey::of(&key(1))));
    // Resumed: the round waits for our own delta again before it closes.
    s.handle(5, Event::PeerDelta(delta(2, 1)));
    assert!(merged(&s.handle(6, Event::PeerDelta(delta(3, 1)))).is_none());
    assert!(merged(&s.handle(7, Event::LocalDelta(delta(1, 1)))).is_some());
}
