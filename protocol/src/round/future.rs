//! The byte budget of the future-round buffer.
//!
//! Deltas of rounds after the current one are kept until their round comes
//! (see [`RoundState`]), from any key: a flood of valid-looking deltas for far
//! rounds would otherwise hold `buffered_rounds * max_deltas_per_round` full
//! deltas. Each buffered future delta is charged its payload plus
//! [`DELTA_OVERHEAD`], and the charges stay within
//! [`RoundConfig::max_future_bytes`](super::RoundConfig::max_future_bytes).
//!
//! When a new future delta does not fit, the least useful ones make room for
//! it, if there are enough of them less useful than it; otherwise it is refused
//! as [`Admission::Full`](super::Admission::Full). Least useful first: deltas
//! from keys that are not connected peers of the run (whether a key is connected
//! is followed as peers come and go), then within each class the farthest round
//! (a nearer round is merged sooner; a lagging node learns it is behind from
//! the delta's arrival, not from keeping it). Unknown keys' deltas of rounds
//! two or more ahead share a smaller part of the budget,
//! [`RoundConfig::max_far_unknown_bytes`](super::RoundConfig::max_far_unknown_bytes):
//! made-up keys cost a flood nothing. Within a round, deltas of one
//! class do not displace one another, so a flood of keys cannot churn out
//! those already held. The current round is never charged and never refused
//! for room; when it moves on, the deltas of the round it reaches leave the budget.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::RoundState;
use crate::delta::DeltaHeader;
use crate::keys::PublicKey;

/// What a buffered delta is charged beyond its payload: its header, signature
/// and the map entries that hold it, so that tiny payloads are not held in
/// great numbers for nothing.
pub(super) const DELTA_OVERHEAD: usize = 256;

/// The charge of a buffered delta with a payload of `payload_len` bytes.
pub(super) fn cost(payload_len: u64) -> usize {
    usize::try_from(payload_len).unwrap_or(usize::MAX).saturating_add(DELTA_OVERHEAD)
}

/// The charges of the buffered future deltas, least useful first.
#[derive(Debug, Default)]
pub(super) struct FutureBytes {
    /// The sum of the charges below.
    held: usize,
    /// Unknown keys' deltas, then connected peers': by farthest round first,
    /// then key. Exactly the deltas of the future rounds `RoundState` holds
    /// (so bounded alike).
    by_class: [BTreeMap<(Reverse<u64>, PublicKey), usize>; 2],
    /// The charges of `by_class[0]` (unknown keys), summed by round: at most
    /// `buffered_rounds` entries, so the far rounds' share is a short sum.
    unknown_by_round: BTreeMap<u64, usize>,
}

/// Unknown keys' deltas of rounds `from` on are held within `bytes`.
#[derive(Clone, Copy, Debug)]
struct FarCap {
    from: u64,
    bytes: usize,
}

/// The first key of `round` in the order of [`FutureBytes::by_class`]: those
/// before it are of farther rounds.
fn round_start(round: u64) -> (Reverse<u64>, PublicKey) {
    (Reverse(round), PublicKey([0; 32]))
}

impl FutureBytes {
    pub(super) fn held(&self) -> usize {
        self.held
    }

    fn len(&self) -> usize {
        self.by_class.iter().map(BTreeMap::len).sum()
    }

    fn add(&mut self, known: bool, round: u64, key: PublicKey, cost: usize) {
        self.remove(round, key);
        self.by_class[usize::from(known)].insert((Reverse(round), key), cost);
        self.held += cost;
        if !known {
            *self.unknown_by_round.entry(round).or_default() += cost;
        }
    }

    fn remove(&mut self, round: u64, key: PublicKey) {
        for class in 0..self.by_class.len() {
            if let Some(cost) = self.by_class[class].remove(&(Reverse(round), key)) {
                self.held -= cost;
                if class == 0 {
                    self.uncharge_unknown(round, cost);
                }
            }
        }
    }

    fn uncharge_unknown(&mut self, round: u64, cost: usize) {
        if let Some(sum) = self.unknown_by_round.get_mut(&round) {
            *sum -= cost;
            if *sum == 0 {
                self.unknown_by_round.remove(&round);
            }
        }
    }

    /// Forgets the charges of rounds up to `round` (it became the current
    /// one): the cost is what it removes.
    pub(super) fn forget_through(&mut self, round: u64) {
        for class in &mut self.by_class {
            let gone = class.split_off(&round_start(round));
            self.held -= gone.values().sum::<usize>();
        }
        self.unknown_by_round = self.unknown_by_round.split_off(&round.saturating_add(1));
    }

    /// The charges of unknown keys' deltas of rounds `from` on.
    fn unknown_from(&self, from: u64) -> usize {
        self.unknown_by_round.range(from..).map(|(_, &c)| c).sum()
    }

    /// The deltas to drop, least useful first, so that one charged `cost` from
    /// a `known` key (or not) for `round` fits within `budget`, and, from an
    /// unknown key for a round at or past `far.from`, within `far.bytes` of
    /// such deltas; `None` when all those less useful than it would not make
    /// room. A delta larger than a whole budget fits only when nothing else
    /// is held in it.
    fn victims(
        &self,
        known: bool,
        round: u64,
        cost: usize,
        budget: usize,
        far: FarCap,
    ) -> Option<Vec<(u64, PublicKey)>> {
        let capped = !known && round >= far.from;
        let within = |held: usize, limit: usize| held == 0 || held.saturating_add(cost) <= limit;
        let fits =
            |held: usize, far_held: usize| within(held, budget) && (!capped || within(far_held, far.bytes));
        let mut held = self.held;
        let mut far_held = if capped { self.unknown_from(far.from) } else { 0 };
        let mut victims = Vec::new();
        if fits(held, far_held) {
            return Some(victims);
        }
        let farther = ..round_start(round);
        // A connected peer's delta displaces any unknown key's; otherwise only
        // those of its class for farther rounds (all far, when it is).
        let unknown = if known { self.by_class[0].range(..) } else { self.by_class[0].range(farther) };
        let peers = self.by_class[1].range(farther).take(if known { usize::MAX } else { 0 });
        for (&(Reverse(r), key), &c) in unknown.chain(peers) {
            held -= c;
            if capped {
                far_held -= c;
            }
            victims.push((r, key));
            if fits(held, far_held) {
                return Some(victims);
            }
        }
        None
    }

    fn least_useful(&self) -> Option<(u64, PublicKey)> {
        self.by_class.iter().find_map(|class| class.keys().next()).map(|&(Reverse(r), key)| (r, key))
    }
}

impl RoundState {
    pub(super) fn future_rounds(&self) -> usize {
        self.rounds.range(self.round + 1..).count()
    }

    pub(super) fn highest_future_round(&self) -> Option<u64> {
        self.rounds.range(self.round + 1..).next_back().map(|(r, _)| *r)
    }

    /// Whether `key` counts as a connected peer for the budget (our own key does).
    fn known(&self, key: &PublicKey) -> bool {
        *key == self.me || self.connected.contains_key(key)
    }

    /// Whether a future delta with `header` fits the byte budget, once the
    /// less useful ones make room. Pure.
    pub(super) fn future_room(&self, header: &DeltaHeader) -> bool {
        let known = self.known(&header.sender);
        let cost = cost(header.payload_len);
        self.future.victims(known, header.round, cost, self.config.max_future_bytes, self.far_cap()).is_some()
    }

    /// What unknown keys' deltas of far rounds may hold: rounds two or more
    /// ahead of the current one.
    fn far_cap(&self) -> FarCap {
        FarCap { from: self.round.saturating_add(2), bytes: self.config.max_far_unknown_bytes }
    }

    /// Makes room for an admitted delta of a future round: the farthest
    /// future round goes when it opens a round past `buffered_rounds` (it is
    /// nearer, or it would not be admitted), and the least useful deltas when
    /// it does not fit the byte budget.
    pub(super) fn make_future_room(&mut self, header: &DeltaHeader) {
        if !self.rounds.contains_key(&header.round) && self.future_rounds() >= self.config.buffered_rounds {
            if let Some(highest) = self.highest_future_round() {
                self.drop_future_round(highest);
            }
        }
        let known = self.known(&header.sender);
        let cost = cost(header.payload_len);
        let victims =
            self.future.victims(known, header.round, cost, self.config.max_future_bytes, self.far_cap());
        for (round, key) in victims.unwrap_or_default() {
            self.evict_future(round, key);
        }
    }

    /// Charges a delta just buffered for a future round.
    pub(super) fn charge_future(&mut self, header: &DeltaHeader) {
        let known = self.known(&header.sender);
        self.future.add(known, header.round, header.sender, cost(header.payload_len));
    }

    /// Drops a whole future round, its deltas, charges and payloads.
    fn drop_future_round(&mut self, round: u64) {
        for key in self.rounds.remove(&round).unwrap_or_default().into_keys() {
            self.future.remove(round, key);
        }
        self.forget_payloads_of(round);
    }

    /// Drops one buffered future delta; a round left empty goes with its
    /// payloads, so that it does not hold a place among the buffered rounds.
    fn evict_future(&mut self, round: u64, key: PublicKey) {
        self.future.remove(round, key);
        if let Some(deltas) = self.rounds.get_mut(&round) {
            deltas.remove(&key);
            if deltas.is_empty() {
                self.rounds.remove(&round);
                self.forget_payloads_of(round);
            }
        }
    }

    /// Forgets the charges of `key`'s deltas (banned).
    pub(super) fn uncharge_key(&mut self, key: PublicKey) {
        let rounds: Vec<u64> = self.rounds.range(self.round + 1..).map(|(r, _)| *r).collect();
        for round in rounds {
            self.future.remove(round, key);
        }
    }

    /// Moves `key`'s charges to its class after it connected or left.
    pub(super) fn reclass_future(&mut self, key: PublicKey) {
        let known = self.known(&key);
        let rounds: Vec<(u64, usize)> = self
            .rounds
            .range(self.round + 1..)
            .filter_map(|(r, m)| m.get(&key).map(|d| (*r, cost(d.header.payload_len))))
            .collect();
        for (round, cost) in rounds {
            self.future.add(known, round, key, cost);
        }
    }

    /// Charges the future rounds afresh after a jump (which may make the old
    /// current round a future one), dropping the least useful deltas past the
    /// budget.
    pub(super) fn recharge_future(&mut self) {
        self.future = FutureBytes::default();
        let held: Vec<(bool, u64, PublicKey, usize)> = self
            .rounds
            .range(self.round + 1..)
            .flat_map(|(r, m)| m.iter().map(move |(k, d)| (*r, *k, cost(d.header.payload_len))))
            .map(|(r, k, c)| (self.known(&k), r, k, c))
            .collect();
        for (known, round, key, cost) in held {
            self.future.add(known, round, key, cost);
        }
        while self.future.held() > self.config.max_future_bytes && self.future.len() > 1 {
            let Some((round, key)) = self.future.least_useful() else { break };
            self.evict_future(round, key);
        }
    }

    /// The bytes charged for future rounds, checked against the deltas held.
    #[cfg(test)]
    pub(super) fn future_bytes(&self) -> usize {
        let held: usize = self
            .rounds
            .range(self.round + 1..)
            .flat_map(|(_, m)| m.values())
            .map(|d| cost(d.header.payload_len))
            .sum();
        assert_eq!(held, self.future.held(), "the charges match the deltas held");
        assert_eq!(
            self.future.len(),
            self.rounds.range(self.round + 1..).map(|(_, m)| m.len()).sum::<usize>()
        );
        let mut unknown = BTreeMap::<u64, usize>::new();
        for (&(Reverse(round), _), &c) in &self.future.by_class[0] {
            *unknown.entry(round).or_default() += c;
        }
        assert_eq!(unknown, self.future.unknown_by_round, "the unknown keys' sums by round match");
        held
    }
}
