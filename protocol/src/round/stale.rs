//! Deltas of the rounds just behind the current one, kept for a node that goes
//! back to them.
//!
//! A delta of a round already merged is stale and takes no part in it. But a
//! node that then installs an older state (a diverged node taking the
//! majority's, a round or two behind its own, as the side of a partition
//! that ran ahead does after the heal) re-enters those rounds, and gossip
//! never brings their deltas again: without them it waits for a delta it
//! once had, and fetches again when the next round's first delta overtakes
//! it (netsim `partition-heal-minority-ahead` seeds 11, 21, 46, 48). So the
//! stale deltas of the last [`RoundConfig::sync_lag_rounds`] rounds are kept,
//! and those of the round a node lands in go back through admission.
//!
//! Bound: those rounds, each with at most `max_deltas_per_round` deltas, and
//! within `max_future_bytes` in all (each charged as a future delta is).
//! Honest swarms send few stale deltas (late arrivals), so the bound is met
//! only under a flood, and then the first ones kept stay.

use std::collections::BTreeMap;

use super::{future, RoundConfig};
use crate::delta::SignedDelta;
use crate::keys::PublicKey;

/// Stale deltas of recent rounds, by round, then sender.
#[derive(Debug, Default)]
pub(super) struct RecentStale {
    by_round: BTreeMap<u64, BTreeMap<PublicKey, SignedDelta>>,
    /// The charges of the deltas held (see [`future::cost`]).
    bytes: usize,
}

impl RecentStale {
    /// Keeps `delta`, a stale one while the current round is `round`, if it is
    /// recent and there is room; a second delta of a sender for a round is not
    /// kept (admission judges it when it comes back).
    pub(super) fn keep(&mut self, delta: SignedDelta, round: u64, config: &RoundConfig) {
        let of = delta.header.round;
        let cost = future::cost(delta.header.payload_len);
        if of + config.sync_lag_rounds < round || self.bytes.saturating_add(cost) > config.max_future_bytes {
            return;
        }
        let deltas = self.by_round.entry(of).or_default();
        if deltas.len() >= config.max_deltas_per_round || deltas.contains_key(&delta.header.sender) {
            return;
        }
        deltas.insert(delta.header.sender, delta);
        self.bytes += cost;
    }

    /// Forgets the rounds too far behind `round`, the current one.
    pub(super) fn prune(&mut self, round: u64, config: &RoundConfig) {
        let keep = self.by_round.split_off(&round.saturating_sub(config.sync_lag_rounds));
        for deltas in std::mem::replace(&mut self.by_round, keep).into_values() {
            self.uncharge(deltas.values());
        }
    }

    /// The deltas of `round`, taken out (the node landed in it). Those of the
    /// rounds after it stay: a node that lands in an older round holds the
    /// later deltas that were not stale, and a later stale one is of a round
    /// the state it took had not reached, so a lineage it left.
    pub(super) fn take(&mut self, round: u64) -> Vec<SignedDelta> {
        let deltas: Vec<SignedDelta> =
            self.by_round.remove(&round).into_iter().flat_map(BTreeMap::into_values).collect();
        self.uncharge(deltas.iter());
        deltas
    }

    /// Drops the deltas of a banned key.
    pub(super) fn forget_key(&mut self, key: &PublicKey) {
        let mut dropped = Vec::new();
        for deltas in self.by_round.values_mut() {
            dropped.extend(deltas.remove(key));
        }
        self.uncharge(dropped.iter());
    }

    fn uncharge<'a>(&mut self, deltas: impl Iterator<Item = &'a SignedDelta>) {
        for d in deltas {
            self.bytes -= future::cost(d.header.payload_len);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_round.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::round::tests::{delta, merged, state};
    use crate::round::{CloseReason, Event};
    use crate::test_keys::key;
    use crate::PublicKey;

    /// A node that goes back to an older round (the side of a partition that ran
    /// ahead, taking the majority's state) finds the deltas of that round that
    /// reached it while it was past it, and closes the round on them instead of
    /// waiting for deltas gossip never brings again.
    #[test]
    fn a_node_back_in_an_older_round_has_the_deltas_that_came_while_it_was_past_it() {
        let mut s = state();
        s.handle(0, Event::Synced { round: 2, expected_from: 2, expected: vec![] });
        assert!(s.handle(1, Event::PeerDelta(delta(2, 1, 1.0))).is_empty(), "stale");
        s.handle(1, Event::PeerDelta(delta(3, 1, 1.0)));
        s.handle(1, Event::PeerDelta(delta(3, 0, 1.0)));
        assert_eq!(s.stale.len(), 3, "rounds within sync_lag_rounds are kept");
        let (round, senders, reason) =
            merged(&s.handle(2, Event::Synced { round: 1, expected_from: 3, expected: vec![] }))
                .expect("round 1 closes at once");
        assert_eq!((round, senders.len(), reason), (1, 2, CloseReason::Quorum));
        // Far behind, or of a banned key, nothing is kept.
        let mut s = state();
        s.handle(0, Event::Synced { round: 5, expected_from: 5, expected: vec![] });
        s.handle(1, Event::PeerDelta(delta(2, 2, 1.0)));
        s.handle(1, Event::PeerDelta(delta(3, 3, 1.0)));
        assert_eq!(s.stale.len(), 1, "round 2 is more than sync_lag_rounds behind 5");
        s.handle(1, Event::Ban(PublicKey::of(&key(3))));
        assert_eq!(s.stale.len(), 0);
    }
}
