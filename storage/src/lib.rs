//! Crash-safe storage for a Starling node, on sled.
//!
//! One sled database per datadir holds the node's identity key, the RunSpec it
//! trains, and its latest checkpoints (model state, outer momentum and the
//! error-feedback residual, together). Every checkpoint is one record keyed by
//! its round and carrying a BLAKE3 checksum of its body; the newest record
//! that verifies is the state to resume from. A crash at any instant therefore
//! leaves either the new record whole or the previous one in charge: a torn or
//! corrupted record is detected, reported and skipped, never loaded.

pub mod peers;

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::Rng;
use starling_protocol::{wire, Checkpoint, ModelState, RunSpec, SignedDelta, SpecError};

pub use peers::{Ban, BanScan, CorruptBan, RefusalCount, MAX_BANS, MAX_REFUSAL_RECORDS};

const IDENTITY_KEY: &[u8] = b"identity.ed25519";
const SPEC_KEY: &[u8] = b"run_spec.toml";
const OUTBOX_KEY: &[u8] = b"own_delta";
const PRIVACY_KEY: &[u8] = b"privacy_accountant";
const CHECKSUM_LEN: usize = 32;

/// How many checkpoints are kept; older ones are pruned after each save.
pub const KEEP_CHECKPOINTS: usize = 3;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the datadir {path}: {source} (is another starling node using it? pass a different --datadir)")]
    Open { path: PathBuf, source: sled::Error },
    #[error("datadir database error: {0}")]
    Db(#[from] sled::Error),
    #[error("the identity key in the datadir is corrupt ({0} bytes, expected 32); move the datadir aside to make a new identity")]
    CorruptIdentity(usize),
    #[error("the run spec stored in the datadir is unreadable: {0}")]
    CorruptSpec(String),
    #[error("the run spec stored in the datadir is invalid: {0}")]
    InvalidSpec(#[from] SpecError),
}

/// A checkpoint record that failed its checksum or did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptCheckpoint {
    pub round: u64,
    pub reason: String,
}

/// The newest readable checkpoint, if any, and the newer records that were not readable.
#[derive(Clone, Debug)]
pub struct CheckpointScan {
    pub checkpoint: Option<Checkpoint>,
    pub skipped: Vec<CorruptCheckpoint>,
}

/// Verified chunks of a state being fetched: its root, and (index, bytes) pairs.
pub type KeptChunks = ([u8; 32], Vec<(u32, Vec<u8>)>);

/// The node's datadir database.
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    checkpoints: sled::Tree,
    /// The node's own delta of its current round, saved before it is published.
    outbox: sled::Tree,
    /// Verified chunks of a state being fetched, keyed by root and index, so a
    /// fetch interrupted by a restart resumes.
    sync_chunks: sled::Tree,
    /// How many bans are on record, once counted (sled counts by a scan).
    bans_held: std::sync::Mutex<Option<usize>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. sled locks the directory, so two
    /// nodes cannot share one datadir.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(|source| StoreError::Open { path: dir.to_path_buf(), source })?;
        let meta = db.open_tree("meta")?;
        let checkpoints = db.open_tree("checkpoints")?;
        let outbox = db.open_tree("outbox")?;
        let sync_chunks = db.open_tree("sync_chunks")?;
        Ok(Self { db, meta, checkpoints, outbox, sync_chunks, bans_held: std::sync::Mutex::new(None) })
    }

    /// The node's identity key, created on first use and reused after.
    pub fn identity(&self) -> Result<SigningKey, StoreError> {
        if let Some(bytes) = self.meta.get(IDENTITY_KEY)? {
            let secret: [u8; 32] =
                bytes.as_ref().try_into().map_err(|_| StoreError::CorruptIdentity(bytes.len()))?;
            return Ok(SigningKey::from_bytes(&secret));
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        self.set_identity(&SigningKey::from_bytes(&secret))?;
        self.identity()
    }

    /// The identity key if the datadir has one; unlike [`Store::identity`], never creates it.
    pub fn existing_identity(&self) -> Result<Option<SigningKey>, StoreError> {
        match self.meta.get(IDENTITY_KEY)? {
            Some(bytes) => {
                let secret: [u8; 32] =
                    bytes.as_ref().try_into().map_err(|_| StoreError::CorruptIdentity(bytes.len()))?;
                Ok(Some(SigningKey::from_bytes(&secret)))
            }
            None => Ok(None),
        }
    }

    /// Installs a given identity key (used by tests and `swarm`, which derive keys from a seed).
    pub fn set_identity(&self, key: &SigningKey) -> Result<(), StoreError> {
        self.meta.insert(IDENTITY_KEY, &key.to_bytes()[..])?;
        self.db.flush()?;
        Ok(())
    }

    /// The RunSpec this datadir trains, if one was saved.
    pub fn spec(&self) -> Result<Option<RunSpec>, StoreError> {
        let Some(bytes) = self.meta.get(SPEC_KEY)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| StoreError::CorruptSpec(e.to_string()))?;
        Ok(Some(RunSpec::from_toml(text)?))
    }

    /// Saves the RunSpec this datadir trains.
    pub fn set_spec(&self, spec: &RunSpec) -> Result<(), StoreError> {
        self.meta.insert(SPEC_KEY, spec.to_toml().as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes a checkpoint of `state` and the node's error-feedback `residual`
    /// (empty for none) durably, flushed before returning; then prunes old ones.
    /// Checkpoints of later rounds go in the same batch: a node that installed
    /// an older state (a diverged node going back to the majority's) left
    /// their lineage, and must not resume from it.
    pub fn save_checkpoint(&self, state: &ModelState, residual: &[f32]) -> Result<(), StoreError> {
        let body = wire::encode_checkpoint(state, residual);
        let mut record = Vec::with_capacity(CHECKSUM_LEN + body.len());
        record.extend_from_slice(checksum(&body).as_bytes());
        record.extend_from_slice(&body);
        let key = state.round.to_be_bytes();
        let mut batch = sled::Batch::default();
        for later in self.checkpoints.range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)) {
            batch.remove(later?.0);
        }
        batch.insert(&key, record);
        self.checkpoints.apply_batch(batch)?;
        self.db.flush()?;
        while self.checkpoints.len() > KEEP_CHECKPOINTS {
            if self.checkpoints.pop_min()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The newest checkpoint that verifies, for a model of `param_count` parameters.
    /// Newer records that fail are reported in `skipped`, not loaded.
    pub fn latest_checkpoint(&self, param_count: usize) -> Result<CheckpointScan, StoreError> {
        let mut skipped = Vec::new();
        for entry in self.checkpoints.iter().rev() {
            let (key, record) = entry?;
            let round = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            match decode_record(&record, param_count) {
                Ok(checkpoint) if checkpoint.state.round == round => {
                    return Ok(CheckpointScan { checkpoint: Some(checkpoint), skipped })
                }
                Ok(checkpoint) => skipped.push(CorruptCheckpoint {
                    round,
                    reason: format!("record claims round {}", checkpoint.state.round),
                }),
                Err(reason) => skipped.push(CorruptCheckpoint { round, reason }),
            }
        }
        Ok(CheckpointScan { checkpoint: None, skipped })
    }

    /// Saves the node's own signed delta and its residual after encoding it,
    /// checksummed and flushed, before the delta is published: a node restarted
    /// in the same round republishes this delta rather than sign a different one
    /// (which peers would take for equivocation).
    pub fn save_outbox(&self, delta: &SignedDelta, residual: &[f32]) -> Result<(), StoreError> {
        let body = wire::encode_outbox(delta, residual);
        let mut record = Vec::with_capacity(CHECKSUM_LEN + body.len());
        record.extend_from_slice(checksum(&body).as_bytes());
        record.extend_from_slice(&body);
        self.outbox.insert(OUTBOX_KEY, record)?;
        self.db.flush()?;
        Ok(())
    }

    /// The saved own delta and residual, if any; an unreadable record is an `Err`
    /// with the reason (the node then trains the round afresh).
    pub fn outbox(
        &self,
        param_count: usize,
        max_delta_bytes: usize,
    ) -> Result<Option<(SignedDelta, Vec<f32>)>, String> {
        let Some(record) = self.outbox.get(OUTBOX_KEY).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if record.len() < CHECKSUM_LEN {
            return Err(format!("outbox record is {} bytes, shorter than its checksum", record.len()));
        }
        let (sum, body) = record.split_at(CHECKSUM_LEN);
        if checksum(body).as_bytes() != sum {
            return Err("outbox checksum mismatch (torn or corrupted write)".into());
        }
        let limit = max_delta_bytes + param_count * 4 + 1024;
        wire::decode_outbox(body, limit, param_count).map(Some).map_err(|e| e.to_string())
    }

    /// Saves the privacy accountant's bytes, checksummed and flushed: a restart
    /// must never find less privacy spent than was.
    pub fn save_privacy_ledger(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(CHECKSUM_LEN + bytes.len());
        record.extend_from_slice(checksum(bytes).as_bytes());
        record.extend_from_slice(bytes);
        self.meta.insert(PRIVACY_KEY, record)?;
        self.db.flush()?;
        Ok(())
    }

    /// The saved privacy accountant's bytes: `Ok(None)` if none was ever saved,
    /// `Err` with the reason if the record is damaged.
    pub fn privacy_ledger(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(record) = self.meta.get(PRIVACY_KEY).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if record.len() < CHECKSUM_LEN {
            return Err(format!("privacy record is {} bytes, shorter than its checksum", record.len()));
        }
        let (sum, body) = record.split_at(CHECKSUM_LEN);
        if checksum(body).as_bytes() != sum {
            return Err("privacy record checksum mismatch (torn or corrupted write)".into());
        }
        Ok(Some(body.to_vec()))
    }

    /// Keeps a verified chunk of the state with `root` being fetched. Not
    /// flushed: a chunk lost in a crash is fetched again, and every chunk is
    /// checked against the agreed manifest when it is used.
    pub fn save_sync_chunk(&self, root: &[u8; 32], index: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let mut key = root.to_vec();
        key.extend_from_slice(&index.to_be_bytes());
        self.sync_chunks.insert(key, bytes)?;
        Ok(())
    }

    /// The kept chunks of a state being fetched: its root and (index, bytes) pairs.
    /// Chunks of more than one root (a crash while switching) keep the first root's.
    pub fn sync_chunks(&self) -> Result<Option<KeptChunks>, StoreError> {
        let mut root: Option<[u8; 32]> = None;
        let mut chunks = Vec::new();
        for entry in self.sync_chunks.iter() {
            let (key, value) = entry?;
            let (Ok(r), Ok(index)) = (
                <[u8; 32]>::try_from(&key[..32.min(key.len())]),
                <[u8; 4]>::try_from(&key[32.min(key.len())..]),
            ) else {
                continue;
            };
            match root {
                None => root = Some(r),
                Some(first) if first != r => continue,
                Some(_) => {}
            }
            chunks.push((u32::from_be_bytes(index), value.to_vec()));
        }
        Ok(root.map(|r| (r, chunks)))
    }

    /// Forgets kept chunks (the state was installed, or another one is fetched).
    pub fn clear_sync_chunks(&self) -> Result<(), StoreError> {
        self.sync_chunks.clear()?;
        Ok(())
    }

    /// Flushes everything written so far to disk (each save already does; this is for shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Rounds of the checkpoints kept, oldest first.
    pub fn checkpoint_rounds(&self) -> Result<Vec<u64>, StoreError> {
        self.checkpoints
            .iter()
            .keys()
            .map(|k| Ok(k?.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)))
            .collect()
    }

    /// The raw record of `round`, checksum included. For tests and inspection.
    #[doc(hidden)]
    pub fn raw_checkpoint(&self, round: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.checkpoints.get(round.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Writes raw bytes as the record of `round`, bypassing the checksum. For tests
    /// that simulate a torn or corrupted write.
    #[doc(hidden)]
    pub fn put_raw_checkpoint(&self, round: u64, record: &[u8]) -> Result<(), StoreError> {
        self.checkpoints.insert(round.to_be_bytes(), record)?;
        self.db.flush()?;
        Ok(())
    }
}

fn checksum(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 checkpoint record v1");
    h.update(body);
    h.finalize()
}

fn decode_record(record: &[u8], param_count: usize) -> Result<Checkpoint, String> {
    if record.len() < CHECKSUM_LEN {
        return Err(format!("record is {} bytes, shorter than its checksum", record.len()));
    }
    let (sum, body) = record.split_at(CHECKSUM_LEN);
    if checksum(body).as_bytes() != sum {
        return Err("checksum mismatch (torn or corrupted write)".into());
    }
    let limit = param_count * 12 + 1024;
    wire::decode_checkpoint(body, limit, param_count).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(store: &Store, checkpoint: &Checkpoint) {
        store.save_checkpoint(&checkpoint.state, &checkpoint.residual).unwrap();
    }

    fn state(round: u64) -> Checkpoint {
        Checkpoint {
            state: ModelState {
                round,
                lineage: [round as u8; 32],
                params: vec![round as f32, 1.5, -2.0],
                momentum: vec![0.25; 3],
            },
            residual: if round.is_multiple_of(2) { vec![] } else { vec![0.5, 0.0, -0.5] },
        }
    }

    #[test]
    fn identity_is_created_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap().identity().unwrap();
        let again = Store::open(dir.path()).unwrap().identity().unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
    }

    #[test]
    fn spec_and_checkpoints_survive_reopen_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_spec(&RunSpec::builtin()).unwrap();
            for r in 0..6 {
                save(&store, &state(r));
            }
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.spec().unwrap(), Some(RunSpec::builtin()));
        let scan = store.latest_checkpoint(3).unwrap();
        assert_eq!(scan.checkpoint, Some(state(5)));
        assert!(scan.skipped.is_empty());
        assert_eq!(store.checkpoint_rounds().unwrap(), vec![3, 4, 5]);
    }

    #[test]
    fn an_older_state_saved_replaces_the_checkpoints_of_later_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for r in 3..6 {
            save(&store, &state(r));
        }
        save(&store, &state(4));
        assert_eq!(store.checkpoint_rounds().unwrap(), vec![3, 4]);
        assert_eq!(store.latest_checkpoint(3).unwrap().checkpoint, Some(state(4)));
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        save(&store, &state(1));
        save(&store, &state(2));
        // A record for round 3 whose write stopped half-way.
        let mut whole = Vec::new();
        whole.extend_from_slice(
            checksum(&wire::encode_checkpoint(&state(3).state, &state(3).residual)).as_bytes(),
        );
        whole.extend_from_slice(&wire::encode_checkpoint(&state(3).state, &state(3).residual));
        store.put_raw_checkpoint(3, &whole[..whole.len() / 2]).unwrap();
        // And one whose bytes rotted.
        whole[40] ^= 0x10;
        store.put_raw_checkpoint(4, &whole).unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let scan = store.latest_checkpoint(3).unwrap();
        assert_eq!(scan.checkpoint, Some(state(2)));
        assert_eq!(scan.skipped.iter().map(|c| c.round).collect::<Vec<_>>(), vec![4, 3]);
        assert!(scan.skipped[0].reason.contains("checksum"), "{:?}", scan.skipped);
    }

    #[test]
    fn a_checkpoint_of_another_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        save(&store, &state(1));
        let scan = store.latest_checkpoint(4).unwrap();
        assert_eq!(scan.checkpoint, None);
        assert_eq!(scan.skipped.len(), 1);
    }

    #[test]
    fn the_own_delta_survives_reopen_and_a_torn_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let codec = starling_protocol::Codec::Dense;
        let delta = SignedDelta::sign(
            &key,
            starling_protocol::RunId([0; 32]),
            4,
            [9; 32],
            10,
            codec,
            codec.encode(&[1.0, 2.0, 3.0]),
        );
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.outbox(3, 1024).unwrap().is_none());
            store.save_outbox(&delta, &[0.5, 0.0, 0.25]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (saved, residual) = store.outbox(3, 1024).unwrap().unwrap();
        assert_eq!((saved.id(), residual), (delta.id(), vec![0.5, 0.0, 0.25]));
        let record = store.outbox.get(OUTBOX_KEY).unwrap().unwrap();
        store.outbox.insert(OUTBOX_KEY, &record[..record.len() / 2]).unwrap();
        assert!(store.outbox(3, 1024).unwrap_err().contains("checksum"));
    }

    #[test]
    fn kept_sync_chunks_survive_reopen_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_sync_chunk(&[7; 32], 2, b"two").unwrap();
            store.save_sync_chunk(&[7; 32], 0, b"zero").unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (root, chunks) = store.sync_chunks().unwrap().unwrap();
        assert_eq!(root, [7; 32]);
        assert_eq!(chunks, vec![(0, b"zero".to_vec()), (2, b"two".to_vec())]);
        store.clear_sync_chunks().unwrap();
        assert!(store.sync_chunks().unwrap().is_none());
    }

    #[test]
    fn two_stores_cannot_share_a_datadir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("second open must fail");
        assert!(err.to_string().contains("--datadir"), "{err}");
    }
}
