//! `SignedDelta`: one node's contribution to one round, signed with its ed25519
//! identity so it can be stored, forwarded and re-verified anywhere.
//!
//! The signature covers a domain-separated BLAKE3 digest of the header, and the
//! header carries the BLAKE3 hash of the payload. BLAKE3 because it is fast
//! (several GB/s per core), so verifying a delta costs one pass over the
//! payload; ed25519 then signs 32 bytes whatever the payload size.

use bytes::Bytes;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::{Codec, CodecError};
use crate::keys::PublicKey;
use crate::run_id::RunId;

const HEADER_DOMAIN: &str = "starling 2026-11 delta header v1";
const PAYLOAD_DOMAIN: &str = "starling 2026-11 delta payload v1";

/// What a delta claims about itself. Signed, via its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaHeader {
    pub run_id: RunId,
    pub round: u64,
    /// [`crate::ModelState::lineage`] of the state this delta was trained from:
    /// every node announces it with each delta, so a node can tell whether it
    /// agrees with its peers (see [`crate::round`]).
    pub base: [u8; 32],
    pub sender: PublicKey,
    /// Training samples behind this delta: its weight in the mean.
    pub samples: u64,
    pub codec: Codec,
    pub payload_len: u64,
    pub payload_hash: [u8; 32],
}

/// A header, its payload and the sender's signature over the header digest.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedDelta {
    pub header: DeltaHeader,
    /// Shared, not copied, when the delta is: the engine, the merge and the
    /// outbox all hold the same bytes (a dense delta is as large as the model).
    pub payload: Bytes,
    pub signature: [u8; 64],
}

impl fmt::Debug for SignedDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedDelta")
            .field("round", &self.header.round)
            .field("sender", &self.header.sender)
            .field("samples", &self.header.samples)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The identity of a delta: the hash of its signed digest and signature.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeltaId(pub [u8; 32]);

/// Why a received delta was refused. Each reason has a stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("could not decode delta: {0}")]
    Malformed(String),
    #[error("delta is for another run")]
    WrongRun,
    #[error("delta uses codec {got}, but this run uses {expected}")]
    WrongCodec { got: Codec, expected: Codec },
    #[error("delta claims zero training samples")]
    ZeroSamples,
    #[error("delta claims {claimed} training samples; the spec allows one node at most {limit} a round (inner.steps × inner.batch_size)")]
    TooManySamples { claimed: u64, limit: u64 },
    #[error("payload length does not match the header")]
    PayloadLength,
    #[error("payload hash does not match the header")]
    PayloadHash,
    #[error("sender key is not a valid ed25519 key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("payload does not fit the model: {0}")]
    Payload(#[from] CodecError),
}

impl Refusal {
    /// A stable, metric-friendly label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::WrongRun => "wrong_run",
            Refusal::WrongCodec { .. } => "wrong_codec",
            Refusal::ZeroSamples => "zero_samples",
            Refusal::TooManySamples { .. } => "too_many_samples",
            Refusal::PayloadLength => "payload_length",
            Refusal::PayloadHash => "payload_hash",
            Refusal::BadKey => "bad_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Payload(_) => "bad_payload",
        }
    }
}

/// What a delta of one run must satisfy: its run, codec and model size, and
/// the most samples one node can train in a round, so that no key buys weight
/// in the sample-weighted rules by claiming more than it could have trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaRules {
    pub run_id: RunId,
    pub codec: Codec,
    pub params: usize,
    pub max_samples: u64,
}

impl DeltaRules {
    /// Rules with no bound on the samples claimed (tests and benches).
    pub fn new(run_id: RunId, codec: Codec, params: usize) -> Self {
        Self { run_id, codec, params, max_samples: u64::MAX }
    }

    pub fn with_max_samples(self, max_samples: u64) -> Self {
        Self { max_samples, ..self }
    }
}

/// The digest a header is signed under.
pub fn header_digest(header: &DeltaHeader) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(HEADER_DOMAIN);
    h.update(&crate::wire::primitives::encode(header));
    *h.finalize().as_bytes()
}

/// Everything [`SignedDelta::validate`] checks that needs no payload: run,
/// codec, samples, the payload length the header claims, and the signature.
fn check_signed_header(
    header: &DeltaHeader,
    signature: &[u8; 64],
    rules: &DeltaRules,
) -> Result<(), Refusal> {
    let DeltaRules { run_id, codec, params, max_samples } = *rules;
    if header.run_id != run_id {
        return Err(Refusal::WrongRun);
    }
    if header.codec != codec {
        return Err(Refusal::WrongCodec { got: header.codec, expected: codec });
    }
    if header.samples == 0 {
        return Err(Refusal::ZeroSamples);
    }
    if header.samples > max_samples {
        return Err(Refusal::TooManySamples { claimed: header.samples, limit: max_samples });
    }
    if header.payload_len > codec.max_payload_len(params) as u64 {
        return Err(Refusal::PayloadLength);
    }
    let key = VerifyingKey::from_bytes(&header.sender.0).map_err(|_| Refusal::BadKey)?;
    key.verify_strict(&header_digest(header), &Signature::from_bytes(signature))
        .map_err(|_| Refusal::BadSignature)
}

/// A delta header with the sender's signature over its digest: what an
/// announcement carries, and half of an equivocation proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeader {
    pub header: DeltaHeader,
    pub signature: [u8; 64],
}

impl SignedHeader {
    /// The signed header of a delta (its payload is not needed to check the signature).
    pub fn of(delta: &SignedDelta) -> Self {
        Self { header: delta.header.clone(), signature: delta.signature }
    }
}

impl SignedHeader {
    /// Checks a delta announced without its payload: everything
    /// [`SignedDelta::validate`] checks but the payload's hash and shape, so
    /// that a node fetches only payloads a valid key of this run signed, of a
    /// length the run allows.
    pub fn validate(&self, rules: &DeltaRules) -> Result<(), Refusal> {
        check_signed_header(&self.header, &self.signature, rules)
    }
}

impl DeltaHeader {
    /// The header `key` signs for a payload of `payload_len` bytes, before
    /// its hash is known (`payload_hash` all zeros).
    pub(crate) fn unhashed(
        key: &SigningKey,
        run_id: RunId,
        round: u64,
        base: [u8; 32],
        samples: u64,
        codec: Codec,
        payload_len: usize,
    ) -> Self {
        let sender = PublicKey::of(key);
        let payload_len = payload_len as u64;
        Self { run_id, round, base, sender, samples, codec, payload_len, payload_hash: [0; 32] }
    }
}

pub(crate) fn payload_hash(payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(PAYLOAD_DOMAIN);
    h.update(payload);
    *h.finalize().as_bytes()
}

impl SignedDelta {
    /// Signs an encoded payload for `round` of `run_id`, trained from the state
    /// whose lineage is `base`.
    pub fn sign(
        key: &SigningKey,
        run_id: RunId,
        round: u64,
        base: [u8; 32],
        samples: u64,
        codec: Codec,
        payload: impl Into<Bytes>,
    ) -> Self {
        let payload = payload.into();
        let mut header = DeltaHeader::unhashed(key, run_id, round, base, samples, codec, payload.len());
        header.payload_hash = payload_hash(&payload);
        let signature = key.sign(&header_digest(&header)).to_bytes();
        Self { header, payload, signature }
    }

    /// Checks the payload against its hash and the signature against the sender's
    /// key. Says nothing about whether the delta belongs to a given run.
    pub fn verify(&self) -> Result<(), Refusal> {
        if self.payload.len() as u64 != self.header.payload_len {
            return Err(Refusal::PayloadLength);
        }
        if payload_hash(&self.payload) != self.header.payload_hash {
            return Err(Refusal::PayloadHash);
        }
        let key = VerifyingKey::from_bytes(&self.header.sender.0).map_err(|_| Refusal::BadKey)?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&header_digest(&self.header), &signature).map_err(|_| Refusal::BadSignature)
    }

    /// Everything a node checks before it accepts or forwards a delta of this run:
    /// run, codec, samples, payload shape, payload hash, signature. Cheap checks come
    /// first; the signature last.
    pub fn validate(&self, rules: &DeltaRules) -> Result<(), Refusal> {
        if self.payload.len() as u64 != self.header.payload_len {
            return Err(Refusal::PayloadLength);
        }
        check_signed_header(&self.header, &self.signature, rules)?;
        if payload_hash(&self.payload) != self.header.payload_hash {
            return Err(Refusal::PayloadHash);
        }
        rules.codec.check(&self.payload, rules.params)?;
        Ok(())
    }

    /// The delta whose signed header is `signed` and whose payload is
    /// `payload`, fetched apart from it (see [`SignedHeader::validate`]).
    pub fn from_parts(signed: SignedHeader, payload: Bytes) -> Self {
        Self { header: signed.header, payload, signature: signed.signature }
    }

    /// The delta's identity, stable across re-encodings.
    pub fn id(&self) -> DeltaId {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 delta id v1");
        h.update(&header_digest(&self.header));
        h.update(&self.signature);
        DeltaId(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sample(values: &[f32]) -> SignedDelta {
        SignedDelta::sign(&key(1), RunId([9; 32]), 4, [0; 32], 100, Codec::Dense, Codec::Dense.encode(values))
    }

    #[test]
    fn a_signed_delta_verifies_and_validates() {
        let d = sample(&[1.0, 2.0, 3.0]);
        d.verify().unwrap();
        d.validate(&DeltaRules::new(RunId([9; 32]), Codec::Dense, 3)).unwrap();
    }

    #[test]
    fn an_announcement_is_checked_without_its_payload_and_joins_it_after() {
        let d = sample(&[1.0, 2.0, 3.0]);
        let rules = DeltaRules::new(RunId([9; 32]), Codec::Dense, 3);
        let signed = wire::decode_announcement(&wire::encode_announcement(&SignedHeader::of(&d))).unwrap();
        signed.validate(&rules).unwrap();
        assert_eq!(SignedDelta::from_parts(signed.clone(), d.payload.clone()), d);
        // A payload other than the signed one is refused once joined.
        let other = SignedDelta::from_parts(signed.clone(), Codec::Dense.encode(&[1.0, 2.0, 4.0]).into());
        assert_eq!(other.validate(&rules), Err(Refusal::PayloadHash));
        // What the header alone can show is refused before any payload is fetched.
        assert_eq!(
            signed.validate(&DeltaRules::new(RunId([8; 32]), Codec::Dense, 3)),
            Err(Refusal::WrongRun)
        );
        assert_eq!(
            signed.validate(&DeltaRules::new(RunId([9; 32]), Codec::Dense, 2)),
            Err(Refusal::PayloadLength)
        );
        let mut forged = signed.clone();
        forged.header.samples += 1;
        assert_eq!(forged.validate(&rules), Err(Refusal::BadSignature));
        assert!(wire::decode_announcement(&[0xFF; 2000]).is_err());
    }

    #[test]
    fn another_run_is_refused() {
        let d = sample(&[1.0]);
        assert_eq!(d.validate(&DeltaRules::new(RunId([8; 32]), Codec::Dense, 1)), Err(Refusal::WrongRun));
    }

    #[test]
    fn a_header_signed_by_another_key_is_refused() {
        let mut d = sample(&[1.0]);
        d.header.sender = PublicKey::of(&key(2));
        assert_eq!(d.verify(), Err(Refusal::BadSignature));
    }

    #[test]
    fn a_claim_of_more_samples_than_a_node_can_train_in_a_round_is_refused() {
        let d = sample(&[1.0]);
        let rules = DeltaRules::new(RunId([9; 32]), Codec::Dense, 1);
        assert!(d.validate(&rules.with_max_samples(100)).is_ok());
        assert_eq!(
            d.validate(&rules.with_max_samples(99)),
            Err(Refusal::TooManySamples { claimed: 100, limit: 99 })
        );
    }

    #[test]
    fn a_wrong_shape_is_refused() {
        let d = sample(&[1.0, 2.0]);
        assert!(d.validate(&DeltaRules::new(RunId([9; 32]), Codec::Dense, 3)).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(values in prop::collection::vec(-1e6f32..1e6, 0..300), round in any::<u64>()) {
            let d = SignedDelta::sign(&key(3), RunId([1; 32]), round, [0; 32], 7, Codec::Dense, Codec::Dense.encode(&values));
            let back = wire::decode_delta(&d.to_bytes(), 1 << 20).unwrap();
            prop_assert_eq!(&back, &d);
            prop_assert!(back.validate(&DeltaRules::new(RunId([1; 32]), Codec::Dense, values.len())).is_ok());
        }

        #[test]
        fn any_bit_flip_is_refused(values in prop::collection::vec(-10f32..10.0, 1..64), bit in any::<prop::sample::Index>()) {
            let d = SignedDelta::sign(&key(4), RunId([2; 32]), 3, [0; 32], 5, Codec::Dense, Codec::Dense.encode(&values));
            let mut bytes = d.to_bytes();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(SignedDelta::from_untrusted(&bytes, &DeltaRules::new(RunId([2; 32]), Codec::Dense, values.len())).is_err());
        }

        #[test]
        fn random_bytes_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(SignedDelta::from_untrusted(&bytes, &DeltaRules::new(RunId([2; 32]), Codec::Dense, 16)).is_err());
        }
    }
}
