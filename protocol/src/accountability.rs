//! Peer accountability in the pure core: equivocation proofs, the evidence that
//! one key signed two different deltas for the same round of a run.
//!
//! A delta's signature covers a domain-separated digest of its header, and the
//! header carries the payload hash (see [`crate::delta`]). Two signed headers
//! therefore suffice as a proof: anyone can check both signatures without the
//! payloads, so a proof is a few hundred bytes whatever the model size.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::delta::{header_digest, SignedDelta, SignedHeader};
use crate::keys::PublicKey;
use crate::run_id::RunId;

/// The most bytes an encoded proof may take: two headers and two signatures,
/// with room to spare. Decoding refuses anything longer before it allocates.
pub const MAX_PROOF_BYTES: usize = 2048;

impl SignedHeader {
    fn digest(&self) -> [u8; 32] {
        header_digest(&self.header)
    }

    fn verify(&self, which: &'static str) -> Result<(), ProofError> {
        let key = VerifyingKey::from_bytes(&self.header.sender.0).map_err(|_| ProofError::BadKey)?;
        key.verify_strict(&self.digest(), &Signature::from_bytes(&self.signature))
            .map_err(|_| ProofError::BadSignature { which })
    }
}

/// Why a proof does not prove equivocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("could not decode the equivocation proof: {0}")]
    Malformed(String),
    #[error("the proof's deltas are not both for this run")]
    WrongRun,
    #[error("the proof's deltas have different senders")]
    DifferentSenders,
    #[error("the proof's deltas are for different rounds ({a} and {b})")]
    DifferentRounds { a: u64, b: u64 },
    #[error("the proof's two deltas are the same delta")]
    SameDelta,
    #[error("the proof's sender is not a valid ed25519 key")]
    BadKey,
    #[error("the signature of delta {which} of the proof does not verify")]
    BadSignature { which: &'static str },
}

/// Two different deltas signed by one key for one round of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EquivocationProof {
    pub a: SignedHeader,
    pub b: SignedHeader,
}

impl EquivocationProof {
    /// The proof that `first` and `second` equivocate, in canonical order (smaller
    /// digest first, so every node that catches the same pair gossips the same
    /// bytes and gossipsub delivers the proof once). `None` when they do not:
    /// another sender, run or round, or the same header. Signatures are not
    /// checked here; [`EquivocationProof::verify`] does.
    pub fn new(first: &SignedDelta, second: &SignedDelta) -> Option<Self> {
        let (a, b) = (SignedHeader::of(first), SignedHeader::of(second));
        let (ha, hb) = (&a.header, &b.header);
        if ha.sender != hb.sender || ha.run_id != hb.run_id || ha.round != hb.round || ha == hb {
            return None;
        }
        Some(if a.digest() <= b.digest() { Self { a, b } } else { Self { a: b, b: a } })
    }

    /// The key that equivocated, as claimed (check with [`EquivocationProof::verify`]).
    pub fn sender(&self) -> PublicKey {
        self.a.header.sender
    }

    /// The round it equivocated in.
    pub fn round(&self) -> u64 {
        self.a.header.round
    }

    /// Checks that this proves equivocation in `run`: same sender, run and round,
    /// different digests, both signatures valid. Returns the guilty key.
    pub fn verify(&self, run: RunId) -> Result<PublicKey, ProofError> {
        let (a, b) = (&self.a.header, &self.b.header);
        if a.run_id != run || b.run_id != run {
            return Err(ProofError::WrongRun);
        }
        if a.sender != b.sender {
            return Err(ProofError::DifferentSenders);
        }
        if a.round != b.round {
            return Err(ProofError::DifferentRounds { a: a.round, b: b.round });
        }
        if self.a.digest() == self.b.digest() {
            return Err(ProofError::SameDelta);
        }
        self.a.verify("a")?;
        self.b.verify("b")?;
        Ok(a.sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;
    use ed25519_dalek::SigningKey;

    const RUN: RunId = RunId([7; 32]);

    fn delta(seed: u8, round: u64, value: f32) -> SignedDelta {
        let key = SigningKey::from_bytes(&[seed; 32]);
        SignedDelta::sign(&key, RUN, round, [0; 32], 10, Codec::Dense, Codec::Dense.encode(&[value]))
    }

    #[test]
    fn two_deltas_of_one_key_for_one_round_prove_equivocation() {
        let (a, b) = (delta(1, 3, 1.0), delta(1, 3, 2.0));
        let proof = EquivocationProof::new(&a, &b).expect("they equivocate");
        assert_eq!(proof.verify(RUN), Ok(a.header.sender));
        assert_eq!(proof, EquivocationProof::new(&b, &a).unwrap(), "the order is canonical");
        let (back, key) = EquivocationProof::from_untrusted(&proof.to_bytes(), RUN).unwrap();
        assert_eq!((back, key), (proof.clone(), a.header.sender));
        assert!(proof.to_bytes().len() <= MAX_PROOF_BYTES);
        assert_eq!(proof.verify(RunId([8; 32])), Err(ProofError::WrongRun));
    }

    #[test]
    fn honest_pairs_are_not_proofs() {
        assert!(EquivocationProof::new(&delta(1, 3, 1.0), &delta(1, 3, 1.0)).is_none(), "same delta");
        assert!(EquivocationProof::new(&delta(1, 3, 1.0), &delta(1, 4, 2.0)).is_none(), "other round");
        assert!(EquivocationProof::new(&delta(1, 3, 1.0), &delta(2, 3, 2.0)).is_none(), "other sender");
    }

    #[test]
    fn forged_proofs_are_refused() {
        let mut proof = EquivocationProof::new(&delta(1, 3, 1.0), &delta(1, 3, 2.0)).unwrap();
        // A header altered after it was signed.
        let mut forged = proof.clone();
        forged.b.header.payload_len += 1;
        assert!(matches!(forged.verify(RUN), Err(ProofError::BadSignature { .. })));
        // Two different keys' deltas relabelled as one sender.
        let other = delta(2, 3, 2.0);
        forged = proof.clone();
        forged.b = SignedHeader::of(&other);
        assert_eq!(forged.verify(RUN), Err(ProofError::DifferentSenders));
        forged.b.header.sender = proof.a.header.sender;
        assert!(matches!(forged.verify(RUN), Err(ProofError::BadSignature { .. })));
        // The same header twice.
        proof.b = proof.a.clone();
        assert_eq!(proof.verify(RUN), Err(ProofError::SameDelta));
        assert!(EquivocationProof::from_untrusted(&[0xFF; 64], RUN).is_err());
        assert!(EquivocationProof::from_untrusted(&vec![0; MAX_PROOF_BYTES + 1], RUN).is_err());
    }
}
