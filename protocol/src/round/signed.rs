//! What a node signed: the headers of its own recent deltas, so that it never
//! signs two different deltas for one round (an equivocation its peers would
//! ban it for), not even after it went back to an older state, the majority's,
//! or restarted from a checkpoint older than its last delta; and so that it
//! knows its own delta when a peer hands it back in an offer.

use super::RoundState;
use crate::delta::DeltaHeader;

impl RoundState {
    /// We signed `header` before a restart and cannot publish it again as is
    /// (our state is not the one it was trained from): observe until past its
    /// round, so as never to sign a second delta for a round we signed.
    pub fn signed_before(&mut self, header: DeltaHeader) {
        self.contribute_from = self.contribute_from.max(header.round + 1);
        self.remember_signed(header);
    }

    /// The last round we signed a delta for.
    pub fn last_signed(&self) -> Option<u64> {
        self.signed.last_key_value().map(|(r, _)| *r)
    }

    /// Whether a delta with this header may go out: no later round is signed,
    /// and this round is not, or with this very delta (republished as is).
    pub(super) fn may_sign(&self, header: &DeltaHeader) -> bool {
        self.signed
            .last_key_value()
            .is_none_or(|(r, h)| *r < header.round || (*r == header.round && h == header))
    }

    /// Whether a delta with our key is one we signed. One we did comes back in
    /// a peer's offer after we went back to an older state, and is merged as
    /// the peers merge it.
    pub(super) fn signed_by_us(&self, header: &DeltaHeader) -> bool {
        self.signed.get(&header.round) == Some(header)
    }

    pub(super) fn remember_signed(&mut self, header: DeltaHeader) {
        self.signed.insert(header.round, header);
        while self.signed.len() > self.config.buffered_rounds + 1 {
            self.signed.pop_first();
        }
    }
}
