//! Node public keys as they appear on the wire: 32 raw ed25519 bytes; and the
//! seeded keys of simulated and local swarms.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ed25519 public key, the identity of a node. It orders bytewise, which is the
/// canonical order in which deltas are merged.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key of a signing key.
    pub fn of(key: &ed25519_dalek::SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// Parses 64 hex digits (what `Display` prints) naming a valid ed25519 key.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(format!("`{text}` is not 64 hex digits (an ed25519 public key)"));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("`{text}` is not 64 hex digits (an ed25519 public key)"))?;
        }
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("`{text}` is not a valid ed25519 public key"))?;
        Ok(Self(bytes))
    }

    /// A short hex prefix for logs.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The key of node `index` in a swarm seeded with `seed`: the local swarm, its
/// benches and tests, and netsim derive the same keys from the same seed.
pub fn node_key(seed: u64, index: usize) -> ed25519_dalek::SigningKey {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 local swarm node key v1");
    h.update(&seed.to_le_bytes());
    h.update(&(index as u64).to_le_bytes());
    ed25519_dalek::SigningKey::from_bytes(h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_are_deterministic_and_distinct() {
        assert_eq!(node_key(1, 0).to_bytes(), node_key(1, 0).to_bytes());
        assert_ne!(node_key(1, 0).to_bytes(), node_key(1, 1).to_bytes());
        assert_ne!(node_key(1, 0).to_bytes(), node_key(2, 0).to_bytes());
    }
}
