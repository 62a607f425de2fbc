//! The last delta this node signed, kept until the next one replaces it. A node
//! that crashes after publishing its delta for a round and restarts into the
//! same round publishes that delta again instead of training a different one:
//! two different deltas for one round are an equivocation, and peers ban the
//! key that signs them.

use crate::{Store, StoreError, CHECKSUM_LEN};

const OWN_DELTA_KEY: &[u8] = b"own_delta";

impl Store {
    /// Records the encoded delta this node is about to publish; durable when this returns.
    pub fn save_own_delta(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(CHECKSUM_LEN + bytes.len());
        record.extend_from_slice(own_checksum(bytes).as_bytes());
        record.extend_from_slice(bytes);
        self.meta.insert(OWN_DELTA_KEY, record)?;
        self.db.flush()?;
        Ok(())
    }

    /// The encoded delta last recorded, if its record is whole.
    pub fn own_delta(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(record) = self.meta.get(OWN_DELTA_KEY)? else {
            return Ok(None);
        };
        if record.len() < CHECKSUM_LEN {
            return Ok(None);
        }
        let (sum, body) = record.split_at(CHECKSUM_LEN);
        Ok((own_checksum(body).as_bytes() == sum).then(|| body.to_vec()))
    }
}

fn own_checksum(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 own delta record v1");
    h.update(body);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_own_delta_survives_reopen_and_a_torn_one_is_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.own_delta().unwrap(), None);
            store.save_own_delta(b"first").unwrap();
            store.save_own_delta(b"second").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.own_delta().unwrap().as_deref(), Some(&b"second"[..]));
        let mut record = store.meta.get(OWN_DELTA_KEY).unwrap().unwrap().to_vec();
        record.truncate(record.len() - 1);
        store.meta.insert(OWN_DELTA_KEY, record).unwrap();
        assert_eq!(store.own_delta().unwrap(), None);
    }
}
