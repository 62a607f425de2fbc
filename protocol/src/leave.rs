//! `LeaveNotice`: a node's signed word, gossiped as it shuts down gracefully,
//! that it contributes no delta to a round of its run from round `from` on.
//!
//! A node's direct peers see its connections close and stop expecting it at
//! once; a node that knows the leaver only through deltas relayed by others
//! would keep expecting it for `activity_rounds` more rounds, each closed at
//! its deadline. The notice travels the run's leave topic, so it reaches them
//! too. It is signed like a delta (a domain-separated digest, here of the run
//! id, the sender and the round), so it can be forwarded and re-verified
//! anywhere, and a notice of one run means nothing in another. What a notice
//! does to the rounds, and why an old one replayed is ignored, is the round
//! state's business (see [`crate::round`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::keys::PublicKey;
use crate::run_id::RunId;

const LEAVE_DOMAIN: &str = "starling 2026-12 leave notice v1";

/// The most bytes an encoded notice may take (it takes about 140); decoding
/// refuses anything longer before it looks inside.
pub const MAX_LEAVE_BYTES: usize = 256;

/// "Key `sender` contributes nothing to run `run_id` from round `from` on",
/// signed by that key. `from` is the round after the last one the sender
/// published a delta for (or the round it was in, if it published none there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveNotice {
    pub run_id: RunId,
    pub sender: PublicKey,
    pub from: u64,
    pub signature: [u8; 64],
}

/// Why a received leave notice was refused. Each reason has a stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaveRefusal {
    #[error("could not decode the leave notice: {0}")]
    Malformed(String),
    #[error("the leave notice is for another run")]
    WrongRun,
    #[error("the leave notice's sender is not a valid ed25519 key")]
    BadKey,
    #[error("the leave notice's signature does not verify")]
    BadSignature,
}

impl LeaveRefusal {
    /// A stable, metric-friendly label.
    pub fn label(&self) -> &'static str {
        match self {
            LeaveRefusal::Malformed(_) => "bad_leave",
            LeaveRefusal::WrongRun => "leave_wrong_run",
            LeaveRefusal::BadKey => "leave_bad_key",
            LeaveRefusal::BadSignature => "leave_bad_signature",
        }
    }
}

/// The digest a notice is signed under.
fn digest(run_id: &RunId, sender: &PublicKey, from: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(LEAVE_DOMAIN);
    h.update(&crate::wire::primitives::encode(&(run_id, sender, from)));
    *h.finalize().as_bytes()
}

impl LeaveNotice {
    /// Signs "`key` contributes nothing to `run_id` from round `from` on".
    pub fn sign(key: &SigningKey, run_id: RunId, from: u64) -> Self {
        let sender = PublicKey::of(key);
        let signature = key.sign(&digest(&run_id, &sender, from)).to_bytes();
        Self { run_id, sender, from, signature }
    }

    /// Checks that the notice is of `run_id` and signed by its sender.
    pub fn verify(&self, run_id: RunId) -> Result<(), LeaveRefusal> {
        if self.run_id != run_id {
            return Err(LeaveRefusal::WrongRun);
        }
        let key = VerifyingKey::from_bytes(&self.sender.0).map_err(|_| LeaveRefusal::BadKey)?;
        key.verify_strict(
            &digest(&self.run_id, &self.sender, self.from),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| LeaveRefusal::BadSignature)
    }

    /// The notice's identity (for duplicate suppression in a simulator).
    pub fn id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-12 leave notice id v1");
        h.update(&self.to_bytes());
        *h.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_notice_round_trips_and_verifies_for_its_run_only() {
        let notice = LeaveNotice::sign(&key(1), RunId([7; 32]), 12);
        let bytes = notice.to_bytes();
        assert!(bytes.len() <= MAX_LEAVE_BYTES);
        assert_eq!(LeaveNotice::from_untrusted(&bytes, RunId([7; 32])), Ok(notice.clone()));
        assert_eq!(LeaveNotice::from_untrusted(&bytes, RunId([8; 32])), Err(LeaveRefusal::WrongRun));
        let other_round = LeaveNotice { from: 13, ..notice.clone() };
        assert_eq!(other_round.verify(RunId([7; 32])), Err(LeaveRefusal::BadSignature));
        let other_sender = LeaveNotice { sender: PublicKey::of(&key(2)), ..notice };
        assert_eq!(other_sender.verify(RunId([7; 32])), Err(LeaveRefusal::BadSignature));
    }

    #[test]
    fn a_notice_is_not_a_delta_header_signature() {
        // The domains differ: a notice's signature never verifies as anything else's.
        let notice = LeaveNotice::sign(&key(1), RunId([7; 32]), 3);
        let delta =
            crate::SignedDelta::sign(&key(1), RunId([7; 32]), 3, [0; 32], 1, crate::Codec::Dense, vec![]);
        assert_ne!(notice.signature, delta.signature);
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_refused(from in any::<u64>(), bit in any::<prop::sample::Index>()) {
            let mut bytes = LeaveNotice::sign(&key(4), RunId([2; 32]), from).to_bytes();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(LeaveNotice::from_untrusted(&bytes, RunId([2; 32])).is_err());
        }

        #[test]
        fn random_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(LeaveNotice::from_untrusted(&bytes, RunId([2; 32])).is_err());
        }
    }
}
