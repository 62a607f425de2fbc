//! The payload hashes taken in over the replay window, so that a payload
//! replayed under another round or key is refused; forgetting old rounds costs
//! what it removes.

use std::collections::hash_map;

use super::RoundState;
use crate::delta::DeltaHeader;

impl RoundState {
    /// Remembers the payload of a delta taken in, so that the same payload
    /// under another round or key is refused as a replay. Bounded: at most
    /// `max_deltas_per_round` peer payloads per remembered round (see
    /// [`Self::admit`]), and our own.
    pub(super) fn remember_payload(&mut self, header: &DeltaHeader) {
        if let hash_map::Entry::Vacant(entry) = self.payloads.entry(header.payload_hash) {
            entry.insert((header.round, header.sender));
            self.payload_rounds.entry(header.round).or_default().push(header.payload_hash);
        }
    }

    /// How many payloads are remembered with `round`.
    pub(super) fn payloads_of(&self, round: u64) -> usize {
        self.payload_rounds.get(&round).map_or(0, Vec::len)
    }

    /// Forgets the payloads remembered with `round` (an evicted future round).
    pub(super) fn forget_payloads_of(&mut self, round: u64) {
        for hash in self.payload_rounds.remove(&round).unwrap_or_default() {
            self.payloads.remove(&hash);
        }
    }

    /// Forgets the payloads of rounds more than `replay_window_rounds` before
    /// the current one: the cost is what it removes.
    pub(super) fn forget_old_payloads(&mut self) {
        let horizon = self.round.saturating_sub(self.config.replay_window_rounds);
        while let Some(oldest) = self.payload_rounds.first_entry() {
            if *oldest.key() >= horizon {
                break;
            }
            for hash in oldest.remove() {
                self.payloads.remove(&hash);
            }
        }
    }

    /// How many payloads are remembered against replays.
    #[cfg(test)]
    pub(super) fn remembered_payloads(&self) -> usize {
        debug_assert_eq!(self.payloads.len(), self.payload_rounds.values().map(Vec::len).sum::<usize>());
        self.payloads.len()
    }
}
