//! Crash-safe storage for a Starling node: sled for what is small and
//! transactional, files for checkpoints.
//!
//! sled holds the node's identity key, the RunSpec it trains, the pointers to
//! its last [`KEEP_CHECKPOINTS`] checkpoints (each a round and the BLAKE3
//! checksums of its files), its own delta of the current round, bans, refusal
//! counts and the privacy ledger. A checkpoint's parameters and outer momentum
//! are a safetensors file in `<datadir>/checkpoints/`, and the error-feedback
//! residual another (see [`files`]); a file is durable under its final name
//! before sled points at it, and is deleted only once no pointer does. A crash
//! at any instant therefore leaves either the new checkpoint whole or the
//! previous one in charge; a torn or corrupted file fails its checksum and is
//! reported and skipped, never loaded. What a crash leaves half-written (a
//! `.tmp` file, a file no pointer names) is deleted on the next open.

mod direct;
mod fetch;
pub mod files;
mod legacy;
mod outbox;
pub mod peers;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
};

use ed25519_dalek::SigningKey;
use rand::Rng;
use starling_protocol::{
    state_file, wire, Checkpoint, ModelState, RunSpec, SignedDelta, SpecError, StateManifest,
};

use files::{Checksum, ResidualFile};
pub use outbox::{SavedDelta, UnreadableOutbox};
pub use peers::{Ban, BanScan, CorruptBan, RefusalCount, MAX_BANS, MAX_REFUSAL_RECORDS};
pub use starling_protocol::state_file::Layout;

const IDENTITY_KEY: &[u8] = b"identity.ed25519";
const SPEC_KEY: &[u8] = b"run_spec.toml";
/// The own delta, with the checksum of the residual file saved with it (if any).
const OUTBOX_KEY: &[u8] = b"own_delta.v2";
const PRIVACY_KEY: &[u8] = b"privacy_accountant";
/// Round → checksums of the checkpoint's files.
const POINTERS_TREE: &str = "checkpoint_files";
const CHECKSUM_LEN: usize = 32;

/// How many checkpoints are kept; older ones' files are deleted once the new one is durable.
pub const KEEP_CHECKPOINTS: usize = 2;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the datadir {path}: {source} (is another starling node using it? pass a different --datadir)")]
    Open { path: PathBuf, source: sled::Error },
    #[error("datadir database error: {0}")]
    Db(#[from] sled::Error),
    #[error("checkpoint file {path}: {source} (is the disk full or the datadir read-only?)")]
    File { path: PathBuf, source: std::io::Error },
    #[error("a state of {params} parameters with {momentum} momentum values cannot be checkpointed")]
    Shape { params: usize, momentum: usize },
    #[error("the identity key in the datadir is corrupt ({0} bytes, expected 32); move the datadir aside to make a new identity")]
    CorruptIdentity(usize),
    #[error("the run spec stored in the datadir is unreadable: {0}")]
    CorruptSpec(String),
    #[error("the run spec stored in the datadir is invalid: {0}")]
    InvalidSpec(#[from] SpecError),
}

/// A checkpoint whose files failed their checksum or did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptCheckpoint {
    pub round: u64,
    pub reason: String,
}

/// The newest readable checkpoint, if any, and the newer ones that were not readable.
#[derive(Clone, Debug)]
pub struct CheckpointScan {
    pub checkpoint: Option<Checkpoint>,
    pub skipped: Vec<CorruptCheckpoint>,
}

/// What [`Store::migrate_legacy`] moved out of sled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The round of the checkpoint now in a file (`None`: no old record was readable).
    pub round: Option<u64>,
    /// Old records that were unreadable and dropped.
    pub unreadable: usize,
}

/// A state file on disk that peers may fetch in chunks: its manifest (whose
/// root names it) and its path. The file may be deleted once newer
/// checkpoints replace it; a read then fails and the chunk is unavailable.
#[derive(Clone, Debug)]
pub struct ServedFile {
    pub manifest: StateManifest,
    pub path: PathBuf,
}

/// How many files written only to be served are kept.
const SERVED_FILES: usize = 2;

/// Verified chunks of a state being fetched: its root, and (index, bytes) pairs.
pub type KeptChunks = ([u8; 32], Vec<(u32, Vec<u8>)>);

/// Where a checkpoint's files are: sled's record of one round (and, with
/// `state` the delta's file, of the outbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pointer {
    state: Checksum,
    residual: Option<Checksum>,
}

impl Pointer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.state.to_vec();
        if let Some(residual) = &self.residual {
            out.extend_from_slice(residual);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let state = bytes.get(..32)?.try_into().ok()?;
        let residual = match bytes.len() {
            32 => None,
            64 => Some(bytes[32..].try_into().ok()?),
            _ => return None,
        };
        Some(Self { state, residual })
    }
}

/// The node's datadir: its sled database and its checkpoint files.
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    /// Round → [`Pointer`], the last [`KEEP_CHECKPOINTS`] checkpoints.
    pointers: sled::Tree,
    /// Whole checkpoints of the old layout, until [`Store::migrate_legacy`] moves them.
    legacy: sled::Tree,
    /// The node's own delta of its current round, saved before it is published.
    outbox: sled::Tree,
    /// Which verified chunks of a state being fetched are kept (root and
    /// index → length), so a fetch interrupted by a restart resumes; their
    /// bytes are in [`SYNC_DIR`] (sled keeps old versions of big values and
    /// writes them slowly: profiled at 42 % of a 10M-parameter fetch).
    sync_chunks: sled::Tree,
    /// The file of the chunks being kept, and the root it is for.
    sync_file: Mutex<Option<([u8; 32], std::fs::File)>>,
    /// `<datadir>/sync`.
    sync_dir: PathBuf,
    /// How many bans are on record, once counted (sled counts by a scan).
    bans_held: Mutex<Option<usize>>,
    /// `<datadir>/checkpoints`.
    dir: PathBuf,
    /// The model's tensors, for the files' names and shapes; flat when not given.
    layout: Option<Layout>,
    /// Held while checkpoint files are written or deleted.
    files: Mutex<()>,
    /// The fsync of the outbox's delta file, after its record is flushed.
    outbox_sync: outbox::Syncer,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.outbox_sync.wait();
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. sled locks the directory, so two
    /// nodes cannot share one datadir. Files a crash left behind (half-written,
    /// or written but never pointed at) are deleted.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        finish_compaction(dir).map_err(|source| StoreError::File { path: dir.to_path_buf(), source })?;
        let db =
            open_db(&dir.join(DB)).map_err(|source| StoreError::Open { path: dir.to_path_buf(), source })?;
        let files_dir = dir.join(files::DIR);
        std::fs::create_dir_all(&files_dir)
            .map_err(|source| StoreError::File { path: files_dir.clone(), source })?;
        let store = Self {
            meta: db.open_tree("meta")?,
            pointers: db.open_tree(POINTERS_TREE)?,
            legacy: db.open_tree(legacy::CHECKPOINTS_TREE)?,
            outbox: db.open_tree("outbox")?,
            sync_chunks: db.open_tree("sync_chunks")?,
            sync_file: Mutex::new(None),
            sync_dir: dir.join(SYNC_DIR),
            db,
            bans_held: Mutex::new(None),
            dir: files_dir,
            layout: None,
            files: Mutex::new(()),
            outbox_sync: outbox::Syncer::default(),
        };
        store.collect_garbage()?;
        Ok(store)
    }

    /// Names and shapes the checkpoint files' tensors as the model's (a state
    /// of another length is written as one flat tensor).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = Some(layout);
    }

    /// The folder of the checkpoint files.
    pub fn checkpoint_dir(&self) -> &Path {
        &self.dir
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
    /// (empty for none): the files durable under their names, then sled's
    /// pointer flushed; then the checkpoints past the last [`KEEP_CHECKPOINTS`]
    /// are forgotten and their files deleted. A residual whose file is already
    /// there (the outbox saved it this round) is not written again.
    /// Checkpoints of later rounds are forgotten in the same batch: a node that
    /// installed an older state (a diverged node going back to the majority's)
    /// left their lineage, and must not resume from it.
    /// Returns the state file, which peers may fetch.
    pub fn save_checkpoint(&self, state: &ModelState, residual: &[f32]) -> Result<ServedFile, StoreError> {
        if state.momentum.len() != state.params.len() {
            return Err(StoreError::Shape { params: state.params.len(), momentum: state.momentum.len() });
        }
        let _files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let layout = self.layout_for(state.params.len());
        let name = |root: &Checksum| files::state_name(state.round, root);
        let (manifest, path) = files::write_state_file(&self.dir, &layout, state, name, true)
            .map_err(|source| StoreError::File { path: self.dir.clone(), source })?;
        self.point_at(state, manifest, path, &layout, residual)
    }

    /// Points sled at the durable state file of `state` (and a residual file
    /// written now), forgets the checkpoints past the last [`KEEP_CHECKPOINTS`]
    /// and later ones, and deletes the files no pointer names.
    pub(crate) fn point_at(
        &self,
        state: &ModelState,
        manifest: StateManifest,
        path: PathBuf,
        layout: &Layout,
        residual: &[f32],
    ) -> Result<ServedFile, StoreError> {
        let sum = manifest.root();
        let residual = self.keep_residual(layout, residual, true)?;
        let key = state.round.to_be_bytes();
        let mut batch = sled::Batch::default();
        for later in self.pointers.range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)) {
            batch.remove(later?.0);
        }
        batch.insert(&key, Pointer { state: sum, residual }.encode());
        self.pointers.apply_batch(batch)?;
        self.db.flush()?;
        let mut forgot = false;
        while self.pointers.len() > KEEP_CHECKPOINTS {
            forgot |= self.pointers.pop_min()?.is_some();
        }
        if forgot {
            self.db.flush()?;
        }
        self.delete_unreferenced()?;
        Ok(ServedFile { manifest, path })
    }

    /// The state file of `state` to serve to peers: its checkpoint's file
    /// when it has one (hashed again after a restart), else a file written
    /// only to be served (a round `checkpoint_every` skipped), of which the
    /// last [`SERVED_FILES`] are kept. Never a copy of the state in memory.
    pub fn serve_state(&self, state: &ModelState) -> Result<ServedFile, StoreError> {
        let _files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pointer) = self.pointers.get(state.round.to_be_bytes())?.and_then(|p| Pointer::decode(&p))
        {
            let path = self.dir.join(files::state_name(state.round, &pointer.state));
            if let Ok(Some(manifest)) = files::manifest_of_file(&path) {
                if manifest.lineage == state.lineage && manifest.root() == pointer.state {
                    return Ok(ServedFile { manifest, path });
                }
            }
        }
        let layout = self.layout_for(state.params.len());
        let io = |source| StoreError::File { path: self.dir.clone(), source };
        // Never read after a restart (deleted on open): no fsync.
        let name = |root: &Checksum| files::served_name(state.round, root);
        let (manifest, path) = files::write_state_file(&self.dir, &layout, state, name, false).map_err(io)?;
        let mut older: Vec<PathBuf> = self.served_files()?.into_iter().filter(|p| p != &path).collect();
        older.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        for old in older.iter().rev().skip(SERVED_FILES - 1) {
            std::fs::remove_file(old).map_err(|source| StoreError::File { path: old.clone(), source })?;
        }
        Ok(ServedFile { manifest, path })
    }

    /// The newest checkpoint that verifies, for a model of `param_count` parameters.
    /// Newer ones that fail are reported in `skipped`, not loaded. A datadir
    /// not yet migrated is read in the old layout.
    pub fn latest_checkpoint(&self, param_count: usize) -> Result<CheckpointScan, StoreError> {
        if self.pointers.is_empty() && !self.legacy.is_empty() {
            return Ok(legacy::scan(&self.legacy, param_count)?);
        }
        let mut skipped = Vec::new();
        for entry in self.pointers.iter().rev() {
            let (key, value) = entry?;
            let round = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
            match self.load(round, &value, param_count) {
                Ok(checkpoint) => return Ok(CheckpointScan { checkpoint: Some(checkpoint), skipped }),
                Err(reason) => skipped.push(CorruptCheckpoint { round, reason }),
            }
        }
        Ok(CheckpointScan { checkpoint: None, skipped })
    }

    fn load(&self, round: u64, pointer: &[u8], param_count: usize) -> Result<Checkpoint, String> {
        let pointer = Pointer::decode(pointer).ok_or("the pointer record is malformed")?;
        let path = self.dir.join(files::state_name(round, &pointer.state));
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        files::state_matches(&bytes, &pointer.state).map_err(|e| format!("{}: {e}", path.display()))?;
        let state = state_file::decode_state(&bytes, param_count).map_err(|e| e.to_string())?;
        drop(bytes);
        if state.round != round {
            return Err(format!("the file claims round {}", state.round));
        }
        let residual = match &pointer.residual {
            Some(sum) => {
                let bytes = files::read_checked(&self.dir.join(files::residual_name(sum)), sum)?;
                files::decode_residual(&bytes, param_count)?
            }
            None => Vec::new(),
        };
        Ok(Checkpoint { state, residual })
    }

    /// Saves the node's own signed delta durably before it is published: a
    /// node restarted in the same round republishes this delta rather than
    /// sign a different one (which peers would take for equivocation). The
    /// delta's bytes go to a file (a dense delta is as big as the model, and
    /// sled keeps old versions of big values), sled's outbox record names it.
    /// Its `residual` (what the encoding left) is saved with it only when the
    /// newest checkpoint is of the delta's round, the one case where a restart
    /// resumes from the state the delta was trained from and needs it; the
    /// next checkpoint then points at the same file. The delta's file is made
    /// durable after the record, off the caller's path (see [`outbox`]).
    pub fn save_outbox(&self, delta: &SignedDelta, residual: &[f32]) -> Result<(), StoreError> {
        let _files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let io = |source| StoreError::File { path: self.dir.clone(), source };
        let (delta_sum, delta_path) = files::write_named(
            &self.dir,
            files::delta_name,
            |mut out| wire::write_outbox(delta, &[], &mut out),
            false,
        )
        .map_err(io)?;
        let newest = self.pointers.last()?.map(|(k, _)| k.as_ref().try_into().map(u64::from_be_bytes));
        let residual = match newest {
            Some(Ok(round)) if round == delta.header.round => {
                self.keep_residual(&self.layout_for(residual.len()), residual, false)?
            }
            _ => None,
        };
        let record = outbox::encode_record(&Pointer { state: delta_sum, residual }, delta);
        self.outbox.insert(OUTBOX_KEY, record)?;
        self.db.flush()?;
        self.outbox_sync.sync_later(delta_path);
        self.delete_unreferenced()
    }

    /// The saved own delta, if any. An unreadable record is an `Err` with the
    /// reason (the node then trains the round afresh: a record that did not
    /// reach the disk whole was never published); a readable record whose
    /// delta file is not is an `Err` with the delta's header
    /// ([`UnreadableOutbox::signed`]: the node then sits that round out).
    pub fn outbox(
        &self,
        param_count: usize,
        max_delta_bytes: usize,
    ) -> Result<Option<SavedDelta>, UnreadableOutbox> {
        let db_err = |e: sled::Error| UnreadableOutbox::new(e.to_string());
        let Some(record) = self.outbox.get(OUTBOX_KEY).map_err(db_err)? else {
            return match self.outbox.get(legacy::OUTBOX_KEY).map_err(db_err)? {
                Some(old) => legacy::outbox(&old, param_count, max_delta_bytes)
                    .map(|(delta, residual)| {
                        Some(SavedDelta { delta, residual: Ok((!residual.is_empty()).then_some(residual)) })
                    })
                    .map_err(UnreadableOutbox::new),
                None => Ok(None),
            };
        };
        let (pointer, signed) = outbox::decode_record(&record)
            .ok_or_else(|| UnreadableOutbox::new("outbox checksum mismatch (torn or corrupted write)"))?;
        let unreadable = |reason: String| UnreadableOutbox { reason, signed: signed.clone() };
        let bytes = files::read_checked(&self.dir.join(files::delta_name(&pointer.state)), &pointer.state)
            .map_err(unreadable)?;
        let (delta, _) = wire::decode_outbox(&bytes, max_delta_bytes + 1024, param_count)
            .map_err(|e| unreadable(e.to_string()))?;
        let residual = match pointer.residual {
            Some(sum) => files::read_checked(&self.dir.join(files::residual_name(&sum)), &sum)
                .and_then(|bytes| files::decode_residual(&bytes, param_count))
                .map(Some),
            None => Ok(None),
        };
        Ok(Some(SavedDelta { delta, residual }))
    }

    /// Moves a datadir of the old layout (whole checkpoints inside sled) to
    /// files: its newest readable checkpoint becomes a checkpoint file, its own
    /// delta is saved anew, and the old records are deleted. Does nothing on a
    /// datadir already migrated; safe to repeat after a crash half-way.
    pub fn migrate_legacy(
        &self,
        param_count: usize,
        max_delta_bytes: usize,
    ) -> Result<Option<Migration>, StoreError> {
        let old_outbox = self.outbox.get(legacy::OUTBOX_KEY)?;
        if self.legacy.is_empty() && old_outbox.is_none() {
            return Ok(None);
        }
        let scan = legacy::scan(&self.legacy, param_count)?;
        if let (Some(checkpoint), true) = (&scan.checkpoint, self.pointers.is_empty()) {
            self.save_checkpoint(&checkpoint.state, &checkpoint.residual)?;
        }
        if let Some(old) = old_outbox {
            if let (Ok((delta, residual)), None) =
                (legacy::outbox(&old, param_count, max_delta_bytes), self.outbox.get(OUTBOX_KEY)?)
            {
                self.save_outbox(&delta, &residual)?;
            }
            self.outbox.remove(legacy::OUTBOX_KEY)?;
        }
        self.legacy.clear()?;
        self.db.flush()?;
        Ok(Some(Migration { round: scan.checkpoint.map(|c| c.state.round), unreadable: scan.skipped.len() }))
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

    /// Flushes everything written so far to disk (each save already does; this is for shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Rebuilds the database with only its live records, and reopens the
    /// store on it: sled keeps the space of big values it no longer needs
    /// (an old datadir's checkpoints, gigabytes) until it happens to rewrite
    /// them. Called after [`Store::migrate_legacy`]. Crash-safe: the copy is
    /// whole before it replaces the database (see [`finish_compaction`]).
    pub fn compact(self) -> Result<Self, StoreError> {
        let root = self.dir.parent().expect("the checkpoint folder is in the datadir").to_path_buf();
        let io = |source| StoreError::File { path: root.clone(), source };
        let fresh = root.join(DB_COMPACTING);
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh).map_err(io)?;
        }
        {
            let copy = sled::Config::new().path(&fresh).open()?;
            for name in self.db.tree_names() {
                let (from, to) = (self.db.open_tree(&name)?, copy.open_tree(&name)?);
                for entry in from.iter() {
                    let (key, value) = entry?;
                    to.insert(key, value)?;
                }
            }
            copy.flush()?;
        }
        let layout = self.layout.clone();
        drop(self);
        std::fs::rename(root.join(DB), root.join(DB_REPLACED)).map_err(io)?;
        finish_compaction(&root).map_err(io)?;
        let mut store = Self::open(&root)?;
        store.layout = layout;
        Ok(store)
    }

    /// Rounds of the checkpoints kept, oldest first.
    pub fn checkpoint_rounds(&self) -> Result<Vec<u64>, StoreError> {
        let tree = if self.pointers.is_empty() { &self.legacy } else { &self.pointers };
        tree.iter()
            .keys()
            .map(|k| Ok(k?.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)))
            .collect()
    }

    /// The bytes of the state file of `round`. For tests and inspection.
    #[doc(hidden)]
    pub fn raw_checkpoint(&self, round: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(pointer) = self.pointers.get(round.to_be_bytes())?.and_then(|p| Pointer::decode(&p)) else {
            return Ok(None);
        };
        let path = self.dir.join(files::state_name(round, &pointer.state));
        std::fs::read(&path).map(Some).map_err(|source| StoreError::File { path, source })
    }

    /// Overwrites the state file of `round` with raw bytes, keeping its
    /// checksum (or pointing at a new file when the round has none). For tests
    /// that simulate a torn or corrupted file.
    #[doc(hidden)]
    pub fn put_raw_checkpoint(&self, round: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let pointer = match self.pointers.get(round.to_be_bytes())?.and_then(|p| Pointer::decode(&p)) {
            Some(pointer) => pointer,
            None => {
                let pointer = Pointer { state: [0; 32], residual: None };
                self.pointers.insert(round.to_be_bytes(), pointer.encode())?;
                self.db.flush()?;
                pointer
            }
        };
        let path = self.dir.join(files::state_name(round, &pointer.state));
        std::fs::write(&path, bytes).map_err(|source| StoreError::File { path, source })
    }

    fn layout_for(&self, len: usize) -> Layout {
        match &self.layout {
            Some(layout) if layout.len() == len => layout.clone(),
            _ => Layout::flat(len),
        }
    }

    /// The checksum of the residual's file, written unless empty or (when
    /// `reuse`) already there.
    fn keep_residual(
        &self,
        layout: &Layout,
        residual: &[f32],
        reuse: bool,
    ) -> Result<Option<Checksum>, StoreError> {
        if residual.is_empty() {
            return Ok(None);
        }
        let file = ResidualFile { layout, residual };
        if reuse {
            let sum = files::checksum_of(|out| file.write_to(out));
            if self.dir.join(files::residual_name(&sum)).is_file() {
                return Ok(Some(sum));
            }
        }
        let (sum, _) = files::write_durably(&self.dir, files::residual_name, |out| file.write_to(out))
            .map_err(|source| StoreError::File { path: self.dir.clone(), source })?;
        Ok(Some(sum))
    }

    /// Deletes the checkpoint folder's files that no pointer and no outbox
    /// names, and any half-written one.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let _files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Files written to be served, by an earlier run.
        for path in self.served_files()? {
            std::fs::remove_file(&path).map_err(|source| StoreError::File { path, source })?;
        }
        self.delete_unreferenced()
    }

    /// The files written only to be served (see [`Store::serve_state`]).
    fn served_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let io = |source| StoreError::File { path: self.dir.clone(), source };
        let mut served = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(files::is_served) {
                served.push(path);
            }
        }
        Ok(served)
    }

    fn delete_unreferenced(&self) -> Result<(), StoreError> {
        let mut keep = BTreeSet::new();
        for entry in self.pointers.iter() {
            let (key, value) = entry?;
            let (Ok(round), Some(pointer)) =
                (<[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes), Pointer::decode(&value))
            else {
                continue;
            };
            keep.insert(files::state_name(round, &pointer.state));
            keep.extend(pointer.residual.as_ref().map(files::residual_name));
        }
        if let Some((outbox, _)) = self.outbox.get(OUTBOX_KEY)?.and_then(|r| outbox::decode_record(&r)) {
            keep.insert(files::delta_name(&outbox.state));
            keep.extend(outbox.residual.as_ref().map(files::residual_name));
        }
        let io = |source| StoreError::File { path: self.dir.clone(), source };
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            if files::is_ours(name) && !keep.contains(name) {
                let path = self.dir.join(name);
                std::fs::remove_file(&path).map_err(|source| StoreError::File { path, source })?;
            }
        }
        Ok(())
    }
}

/// The database's folder, and the names it has while [`Store::compact`] replaces it.
const DB: &str = "db";
const DB_COMPACTING: &str = "db.compacting";
const DB_REPLACED: &str = "db.replaced";
/// The datadir's folder of the chunks of a state being fetched.
const SYNC_DIR: &str = "sync";

/// Opens sled's database, waiting up to [`LOCK_WAIT`] for its lock: a store
/// dropped in this process lets the lock go only once sled's background
/// threads have dropped their handles, a moment later (seen as a flaky
/// reopen in `inspect`'s tests). Another process holding it still fails.
fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long [`open_db`] waits for a lock a closing store still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Ends a compaction a crash cut short. The copy (`db.compacting`) is whole
/// once the old database has been moved aside (`db.replaced`); before that,
/// the old database is the one, and a copy is deleted.
fn finish_compaction(root: &Path) -> std::io::Result<()> {
    let (db, fresh, replaced) = (root.join(DB), root.join(DB_COMPACTING), root.join(DB_REPLACED));
    if replaced.exists() {
        if !db.exists() {
            std::fs::rename(&fresh, &db)?;
            files::sync_dir(root)?;
        }
        std::fs::remove_dir_all(&replaced)?;
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    Ok(())
}

/// The checksum of a small record in sled (the privacy ledger; the old layout's checkpoints).
fn checksum(body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("starling 2026-11 checkpoint record v1");
    h.update(body);
    h.finalize()
}

/// The files an outbox record names (`state`: the delta's), if its checksum holds.
#[cfg(test)]
mod tests;
