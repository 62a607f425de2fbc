//! The datadir: where a node keeps everything, its layout as named paths in one
//! place, and the lock that keeps two nodes off one datadir.
//!
//! ```text
//! <datadir>/
//!   config.toml     options of `starling run` (commented defaults, written by `starling init`)
//!   starling.lock   held (an OS file lock) while a starling process uses the datadir; holds its PID
//!   db/             sled database: node key, run spec, checkpoint pointers and checksums,
//!                   own delta, bans, refusal counts, privacy ledger, sync chunks
//!   checkpoints/    the last checkpoints as safetensors files (docs/checkpoints.md):
//!                   state-<round>-<checksum>.safetensors, residual-<checksum>.safetensors
//! ```
//!
//! The default datadir is `$STARLING_DATADIR`, else `$XDG_DATA_HOME/starling`,
//! else `~/.local/share/starling`.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// A datadir's paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datadir {
    root: PathBuf,
}

/// Why a datadir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatadirError {
    #[error("the datadir {0} does not exist: create it with `starling init --datadir {0}` (or pass --spec FILE to `starling run` to start a new node there)")]
    Missing(PathBuf),
    #[error("cannot create the datadir {path}: {source} (pass a writable --datadir)")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the datadir {path} is in use by another starling process{holder}; stop it, or pass a different --datadir")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock the datadir {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

impl Datadir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--datadir` when given, else the default datadir.
    pub fn resolve(flag: Option<&Path>) -> Self {
        Self::new(flag.map(Path::to_path_buf).unwrap_or_else(default_datadir))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Options of `starling run`, below flags and `STARLING_*` variables.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The lock file; a running process holds an OS lock on it.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("starling.lock")
    }

    /// The sled database (node key, spec, checkpoint pointers); `starling_storage::Store::open(root)` opens it.
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Fails with a hint to run `starling init` when the datadir does not exist.
    pub fn require(&self) -> Result<(), DatadirError> {
        if self.exists() {
            Ok(())
        } else {
            Err(DatadirError::Missing(self.root.clone()))
        }
    }

    /// Creates the datadir if needed; true if it did.
    pub fn create(&self) -> Result<bool, DatadirError> {
        if self.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|source| DatadirError::Create { path: self.root.clone(), source })?;
        Ok(true)
    }

    /// Takes the datadir's lock (the datadir must exist), held until the
    /// returned guard drops or the process ends, however it ends.
    pub fn lock(&self) -> Result<DatadirLock, DatadirError> {
        let path = self.lock_file();
        let lock_err = |source| DatadirError::Lock { path: path.clone(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(DatadirError::Locked { path: self.root.clone(), holder });
            }
            Err(TryLockError::Error(source)) => return Err(lock_err(source)),
        }
        // Only the holder writes its PID, so a reader that fails to lock sees the holder's.
        file.set_len(0).map_err(lock_err)?;
        file.seek(SeekFrom::Start(0)).map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        file.flush().map_err(lock_err)?;
        Ok(DatadirLock { _file: file })
    }
}

/// The datadir's lock: an OS lock on `starling.lock`, released when this drops
/// or the process exits (a crash included), so it never goes stale.
#[derive(Debug)]
pub struct DatadirLock {
    _file: File,
}

/// `$STARLING_DATADIR` is read by clap; this is the fallback after it.
pub fn default_datadir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("starling");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/starling"),
        None => PathBuf::from("starling-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = Datadir::new(dir.path());
        let held = datadir.lock().unwrap();
        let err = datadir.lock().unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("--datadir"), "{err}");
        drop(held);
        datadir.lock().expect("the lock is free again once dropped");
    }

    #[test]
    fn a_missing_datadir_points_at_init() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = Datadir::new(dir.path().join("nope"));
        let err = datadir.require().unwrap_err().to_string();
        assert!(err.contains("starling init --datadir"), "{err}");
        assert!(datadir.create().unwrap());
        assert!(!datadir.create().unwrap());
        datadir.require().unwrap();
    }
}
