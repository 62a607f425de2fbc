//! The chunks of a state being fetched from peers, kept on disk so that a
//! fetch interrupted by a restart resumes: their bytes at their offsets in
//! `<datadir>/sync/<root>.chunks` (which, once whole, is that state's state
//! file and becomes the node's checkpoint), which chunks are there in sled.

use std::path::PathBuf;

use starling_protocol::{chunks::CHUNK_BYTES, ModelState};

use crate::{files, KeptChunks, ServedFile, Store, StoreError};

impl Store {
    /// Checkpoints a state installed from peers as [`Store::save_checkpoint`]
    /// does, but when the chunks fetched of it (kept under `root`, see
    /// [`Store::save_sync_chunk`]) are whole and hash to `root`, they are the
    /// state file: fsynced and moved into place rather than written again.
    /// The kept chunks are forgotten either way.
    pub fn save_fetched_checkpoint(
        &self,
        state: &ModelState,
        residual: &[f32],
        root: Option<&[u8; 32]>,
    ) -> Result<ServedFile, StoreError> {
        self.sync_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let shaped = state.momentum.len() == state.params.len();
        let whole = root.filter(|_| shaped).and_then(|root| {
            let path = self.sync_path(root);
            match files::manifest_of_file(&path) {
                Ok(Some(m)) if &m.root() == root && m.round == state.round && m.lineage == state.lineage => {
                    Some((m, path))
                }
                _ => None,
            }
        });
        let saved = if let Some((manifest, fetched)) = whole {
            let _files = self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let path = self.dir.join(files::state_name(state.round, &manifest.root()));
            let io = |source| StoreError::File { path: fetched.clone(), source };
            std::fs::File::open(&fetched).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&fetched, &path).map_err(io)?;
            files::sync_dir(&self.dir).map_err(io)?;
            let layout = self.layout_for(state.params.len());
            self.point_at(state, manifest, path, &layout, residual)?
        } else {
            self.save_checkpoint(state, residual)?
        };
        self.clear_sync_chunks()?;
        Ok(saved)
    }

    /// Keeps a verified chunk of the state with `root` being fetched: its
    /// bytes at their place in `<datadir>/sync/<root>.chunks`, its length in
    /// sled. Neither is flushed: a chunk lost in a crash is fetched again,
    /// and every chunk is checked against the agreed manifest when it is used.
    pub fn save_sync_chunk(&self, root: &[u8; 32], index: u32, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.sync_path(root);
        let io = |source| StoreError::File { path: path.clone(), source };
        let mut file = self.sync_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if file.as_ref().map(|(r, _)| r) != Some(root) {
            std::fs::create_dir_all(&self.sync_dir).map_err(io)?;
            let opened = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path);
            *file = Some((*root, opened.map_err(io)?));
        }
        let (_, handle) = file.as_ref().expect("opened above");
        handle.write_all_at(bytes, u64::from(index) * CHUNK_BYTES as u64).map_err(io)?;
        let mut key = root.to_vec();
        key.extend_from_slice(&index.to_be_bytes());
        self.sync_chunks.insert(key, &(bytes.len() as u32).to_be_bytes())?;
        Ok(())
    }

    /// The kept chunks of a state being fetched: its root and (index, bytes) pairs.
    /// Chunks of more than one root (a crash while switching) keep the first root's;
    /// a chunk whose bytes did not reach the disk reads back short or wrong, and
    /// the fetch refuses it against the manifest.
    pub fn sync_chunks(&self) -> Result<Option<KeptChunks>, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut root: Option<[u8; 32]> = None;
        let mut lengths = Vec::new();
        for entry in self.sync_chunks.iter() {
            let (key, value) = entry?;
            let (Ok(r), Ok(index), Ok(len)) = (
                <[u8; 32]>::try_from(&key[..32.min(key.len())]),
                <[u8; 4]>::try_from(&key[32.min(key.len())..]),
                <[u8; 4]>::try_from(value.as_ref()),
            ) else {
                continue;
            };
            match root {
                None => root = Some(r),
                Some(first) if first != r => continue,
                Some(_) => {}
            }
            let len = (u32::from_be_bytes(len) as usize).min(CHUNK_BYTES);
            lengths.push((u32::from_be_bytes(index), len));
        }
        let Some(root) = root else { return Ok(None) };
        let Ok(file) = std::fs::File::open(self.sync_path(&root)) else {
            return Ok(Some((root, Vec::new())));
        };
        let chunks = lengths
            .into_iter()
            .filter_map(|(index, len)| {
                let mut bytes = vec![0; len];
                file.read_exact_at(&mut bytes, u64::from(index) * CHUNK_BYTES as u64).ok()?;
                Some((index, bytes))
            })
            .collect();
        Ok(Some((root, chunks)))
    }

    /// Forgets kept chunks (the state was installed, or another one is fetched).
    pub fn clear_sync_chunks(&self) -> Result<(), StoreError> {
        let mut file = self.sync_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *file = None;
        self.sync_chunks.clear()?;
        match std::fs::remove_dir_all(&self.sync_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::File { path: self.sync_dir.clone(), source: e })
            }
            _ => Ok(()),
        }
    }

    fn sync_path(&self, root: &[u8; 32]) -> PathBuf {
        let hex: String = root.iter().map(|b| format!("{b:02x}")).collect();
        self.sync_dir.join(format!("{hex}.chunks"))
    }
}
