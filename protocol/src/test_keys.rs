//! Keys and deltas the unit tests of the round state and the engine share:
//! key `i` is the ed25519 key whose seed is 32 bytes of `i`.

use ed25519_dalek::SigningKey;

use crate::{Codec, PublicKey, RunId, SignedDelta};

pub(crate) fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

pub(crate) fn pk(i: u8) -> PublicKey {
    PublicKey::of(&key(i))
}

/// Key `i`'s delta of `round` in run 0, trained from base 0; sender and round
/// in the payload, so that two are never taken for a replay of one another.
pub(crate) fn delta(i: u8, round: u64) -> SignedDelta {
    let payload = Codec::Dense.encode(&[f32::from(i), round as f32]);
    SignedDelta::sign(&key(i), RunId([0; 32]), round, [0; 32], 10, Codec::Dense, payload)
}
