//! Peer accountability records that outlive a restart: the keys banned for the
//! run, each with the proof that banned it, and per-key counts of the deltas
//! refused from each peer, by reason (gossipsub's own peer scores start afresh
//! with every process; these do not).
//!
//! A ban is one sled record keyed by the banned key, carrying a BLAKE3 checksum
//! over the key and the body, written and flushed in one insert: a torn or
//! rotted record is detected and reported by [`Store::bans`], never loaded.
//!
//! Both are bounded, as everything peers feed: at most [`MAX_BANS`] bans (the
//! first ones kept, as the round state keeps them) and [`MAX_REFUSAL_RECORDS`]
//! refusal counts (the node decides which, and saves them all at once).

use std::collections::BTreeSet;

use starling_protocol::PublicKey;

use crate::{Store, StoreError, CHECKSUM_LEN};

const BANS_TREE: &str = "bans";
const REFUSALS_TREE: &str = "refusals";

/// Most bans on record: the round state's `max_banned` (keys cost an attacker
/// nothing, so a ban past it is enforced for the process but not remembered,
/// on disk as in memory).
pub const MAX_BANS: usize = 4096;

/// Most refusal counts on record (one per peer key and reason).
pub const MAX_REFUSAL_RECORDS: usize = 4096;

/// A key banned for the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub key: PublicKey,
    /// Why, as a metric-friendly label (`equivocation`).
    pub reason: String,
    /// The encoded proof, for proofs that can be re-checked and gossiped again.
    pub proof: Vec<u8>,
}

/// A ban record that failed its checksum or did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptBan {
    /// The record's sled key, as hex.
    pub key: String,
    pub reason: String,
}

/// The readable bans, and the records that were not readable.
#[derive(Clone, Debug, Default)]
pub struct BanScan {
    pub bans: Vec<Ban>,
    pub skipped: Vec<CorruptBan>,
}

/// How many deltas a peer sent that were refused for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalCount {
    pub key: PublicKey,
    pub reason: String,
    pub count: u64,
}

impl Store {
    /// Records that `key` is banned for the run, with the `proof` (encoded) and
    /// the `reason`; durable when this returns. Banning a key again keeps the
    /// first record; past [`MAX_BANS`] records a new ban is not recorded.
    /// Returns whether the key's ban is on record.
    pub fn ban(&self, key: &PublicKey, proof: &[u8], reason: &str) -> Result<bool, StoreError> {
        let reason = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
        let mut body = Vec::with_capacity(2 + reason.len() + proof.len());
        body.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        body.extend_from_slice(reason);
        body.extend_from_slice(proof);
        let mut record = Vec::with_capacity(CHECKSUM_LEN + body.len());
        record.extend_from_slice(ban_checksum(&key.0, &body).as_bytes());
        record.extend_from_slice(&body);
        let tree = self.db.open_tree(BANS_TREE)?;
        if tree.contains_key(key.0)? {
            return Ok(true);
        }
        let mut held = self.bans_held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = match *held {
            Some(count) => count,
            // sled counts by a scan: once per process, then kept here.
            None => tree.len(),
        };
        if count >= MAX_BANS {
            *held = Some(count);
            return Ok(false);
        }
        tree.insert(key.0, record)?;
        self.db.flush()?;
        *held = Some(count + 1);
        Ok(true)
    }

    /// The bans on record, in key order, at most [`MAX_BANS`] (a datadir
    /// written before the bound may hold more; the first ones are read);
    /// unreadable records are reported, not loaded.
    pub fn bans(&self) -> Result<BanScan, StoreError> {
        let mut scan = BanScan::default();
        for entry in self.db.open_tree(BANS_TREE)?.iter().take(MAX_BANS) {
            let (key, record) = entry?;
            match decode_ban(&key, &record) {
                Ok(ban) => scan.bans.push(ban),
                Err(reason) => scan.skipped.push(CorruptBan { key: hex(&key), reason }),
            }
        }
        Ok(scan)
    }

    /// Replaces the refusal counts on record by these (at most
    /// [`MAX_REFUSAL_RECORDS`], the first ones kept), in one atomic batch,
    /// durable when this returns: counts the node no longer holds are removed.
    /// A node counts in memory and saves now and then, so a flood of bad
    /// deltas costs no write each.
    pub fn save_refusals(&self, counts: &[RefusalCount]) -> Result<(), StoreError> {
        let tree = self.db.open_tree(REFUSALS_TREE)?;
        let mut batch = sled::Batch::default();
        let mut kept = BTreeSet::new();
        for c in counts.iter().take(MAX_REFUSAL_RECORDS) {
            let mut id = c.key.0.to_vec();
            id.extend_from_slice(c.reason.as_bytes());
            batch.insert(id.clone(), &c.count.to_be_bytes()[..]);
            kept.insert(id);
        }
        for id in tree.iter().keys() {
            let id = id?;
            if !kept.contains(id.as_ref()) {
                batch.remove(id);
            }
        }
        tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The refusal counts on record, by key then reason, at most [`MAX_REFUSAL_RECORDS`].
    pub fn refusals(&self) -> Result<Vec<RefusalCount>, StoreError> {
        let mut counts = Vec::new();
        for entry in self.db.open_tree(REFUSALS_TREE)?.iter().take(MAX_REFUSAL_RECORDS) {
            let (id, value) = entry?;
            let (Some(key), Ok(count)) = (id.get(..32), <[u8; 8]>::try_from(value.as_ref())) else {
                continue; // not a record this module wrote
            };
            counts.push(RefusalCount {
                key: PublicKey(key.try_into().expect("32 bytes")),
                reason: String::from_utf8_lossy(&id[32..]).into_owned(),
                count: u64::from_be_bytes(count),
            });
        }
        Ok(counts)
    }

    /// Writes raw bytes as the ban record of `key`, bypassing the checksum. For
    /// tests that simulate a corrupted write.
    #[doc(hidden)]
    pub fn put_raw_ban(&self, key: &PublicKey, record: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(BANS_TREE)?.insert(key.0, record)?;
        self.db.flush()?;
        Ok(())
    }
}

fn ban_checksum(key: &[u8], body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 ban record v1");
    h.update(key);
    h.update(body);
    h.finalize()
}

fn decode_ban(key: &[u8], record: &[u8]) -> Result<Ban, String> {
    let key: [u8; 32] = key.try_into().map_err(|_| format!("record key is {} bytes, not 32", key.len()))?;
    if record.len() < CHECKSUM_LEN + 2 {
        return Err(format!("record is {} bytes, shorter than its checksum and header", record.len()));
    }
    let (sum, body) = record.split_at(CHECKSUM_LEN);
    if ban_checksum(&key, body).as_bytes() != sum {
        return Err("checksum mismatch (torn or corrupted write)".into());
    }
    let reason_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let reason = body.get(2..2 + reason_len).ok_or("reason runs past the record")?;
    Ok(Ban {
        key: PublicKey(key),
        reason: String::from_utf8_lossy(reason).into_owned(),
        proof: body[2 + reason_len..].to_vec(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        PublicKey::of(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    #[test]
    fn bans_and_refusal_counts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.ban(&key(1), b"proof one", "equivocation").unwrap();
            store.ban(&key(1), b"a later proof", "equivocation").unwrap();
            store.ban(&key(2), b"", "equivocation").unwrap();
            let count = |reason: &str, count| RefusalCount { key: key(3), reason: reason.into(), count };
            store.save_refusals(&[count("bad_signature", 1), count("wrong_run", 1)]).unwrap();
            store.save_refusals(&[count("bad_signature", 2), count("wrong_run", 1)]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let scan = store.bans().unwrap();
        assert!(scan.skipped.is_empty());
        let mut expected = vec![
            Ban { key: key(1), reason: "equivocation".into(), proof: b"proof one".to_vec() },
            Ban { key: key(2), reason: "equivocation".into(), proof: vec![] },
        ];
        expected.sort_by_key(|b| b.key);
        assert_eq!(scan.bans, expected);
        let counts = store.refusals().unwrap();
        assert_eq!(
            counts.iter().map(|c| (c.reason.as_str(), c.count)).collect::<Vec<_>>(),
            vec![("bad_signature", 2), ("wrong_run", 1)]
        );
    }

    #[test]
    fn saved_refusals_replace_those_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let count = |seed, count| RefusalCount { key: key(seed), reason: "bad_signature".into(), count };
        store.save_refusals(&[count(1, 4), count(2, 1)]).unwrap();
        store.save_refusals(&[count(1, 5), count(3, 1)]).unwrap();
        let held: Vec<_> = store.refusals().unwrap().into_iter().map(|c| (c.key, c.count)).collect();
        assert_eq!(held.len(), 2, "the count the node evicted is gone from disk too");
        assert!(held.contains(&(key(1), 5)) && held.contains(&(key(3), 1)));
    }

    #[test]
    fn bans_past_the_bound_are_not_recorded() {
        assert_eq!(
            MAX_BANS,
            starling_protocol::RoundConfig::from_spec(&starling_protocol::RunSpec::builtin().round)
                .max_banned,
            "the store keeps what the round state remembers"
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.ban(&key(1), b"proof", "equivocation").unwrap());
        // Pretend the store is full, as a datadir with MAX_BANS bans would be.
        *store.bans_held.lock().unwrap() = Some(MAX_BANS);
        assert!(store.ban(&key(1), b"again", "equivocation").unwrap(), "a key on record stays");
        assert!(!store.ban(&key(2), b"proof", "equivocation").unwrap(), "no room for another");
        assert_eq!(store.bans().unwrap().bans.iter().map(|b| b.key).collect::<Vec<_>>(), vec![key(1)]);
        // Reopened, the count is taken afresh from what is on disk.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.ban(&key(2), b"proof", "equivocation").unwrap());
        assert_eq!(store.bans().unwrap().bans.len(), 2);
    }

    #[test]
    fn a_corrupted_ban_is_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.ban(&key(1), b"proof", "equivocation").unwrap();
        let mut record = store.db.open_tree(BANS_TREE).unwrap().get(key(1).0).unwrap().unwrap().to_vec();
        record[CHECKSUM_LEN + 3] ^= 1;
        store.put_raw_ban(&key(1), &record).unwrap();
        // A good record moved under another key fails too: the key is checksummed.
        store.ban(&key(2), b"proof", "equivocation").unwrap();
        let good = store.db.open_tree(BANS_TREE).unwrap().get(key(2).0).unwrap().unwrap().to_vec();
        store.put_raw_ban(&key(3), &good).unwrap();
        store.put_raw_ban(&key(4), &good[..10]).unwrap();
        let scan = store.bans().unwrap();
        assert_eq!(scan.bans.iter().map(|b| b.key).collect::<Vec<_>>(), vec![key(2)]);
        assert_eq!(scan.skipped.len(), 3, "{:?}", scan.skipped);
    }
}
