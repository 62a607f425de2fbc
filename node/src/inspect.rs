//! `starling inspect`: reads a datadir offline and says what is in it and
//! whether it is healthy, without touching the network or changing anything.

use std::path::{Path, PathBuf};

use serde::Serialize;
use starling_storage::{Store, StoreError};

use crate::net;

/// What a datadir holds.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub datadir: PathBuf,
    /// The node's libp2p PeerId (its ed25519 identity).
    pub peer_id: Option<String>,
    pub run_id: Option<String>,
    pub run_name: Option<String>,
    pub params: Option<usize>,
    /// The round the newest readable checkpoint starts.
    pub round: Option<u64>,
    /// BLAKE3 of that checkpoint's parameters, and its lineage (hex).
    pub params_hash: Option<String>,
    pub lineage: Option<String>,
    /// Rounds of the checkpoint records kept, oldest first.
    pub checkpoints_kept: Vec<u64>,
    /// Newer records that fail their checksum or do not decode.
    pub corrupt_checkpoints: Vec<CorruptRecord>,
    /// No problem found: identity, spec and the newest checkpoint all read.
    pub healthy: bool,
    /// What is wrong, in words, when it is not healthy.
    pub problems: Vec<String>,
}

/// A checkpoint record that did not verify.
#[derive(Clone, Debug, Serialize)]
pub struct CorruptRecord {
    pub round: u64,
    pub reason: String,
}

/// Why a datadir could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0} holds no starling datadir (no db/ inside); pass the --datadir a node ran with")]
    NotADatadir(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Inspects the datadir at `dir`. A node running on it holds its lock, and then
/// the error says so.
pub fn inspect(dir: &Path) -> Result<Inspection, InspectError> {
    if !dir.join("db").is_dir() {
        return Err(InspectError::NotADatadir(dir.to_path_buf()));
    }
    let store = Store::open(dir)?;
    let mut problems = Vec::new();
    let peer_id =
        present(store.existing_identity(), "no identity key yet (the node has never started)", &mut problems)
            .map(|key| net::keypair(&key).public().to_peer_id().to_string());
    let spec = present(store.spec(), "no run spec stored (start the node once with --spec)", &mut problems);
    let checkpoints_kept = store.checkpoint_rounds()?;
    let mut inspection = Inspection {
        datadir: dir.to_path_buf(),
        peer_id,
        run_id: spec.as_ref().map(|s| s.run_id().to_string()),
        run_name: spec.as_ref().map(|s| s.name.clone()),
        params: spec.as_ref().map(|s| s.param_count()),
        round: None,
        params_hash: None,
        lineage: None,
        checkpoints_kept,
        corrupt_checkpoints: Vec::new(),
        healthy: false,
        problems: Vec::new(),
    };
    if let Some(spec) = &spec {
        let scan = store.latest_checkpoint(spec.param_count())?;
        inspection.corrupt_checkpoints =
            scan.skipped.iter().map(|c| CorruptRecord { round: c.round, reason: c.reason.clone() }).collect();
        for c in &scan.skipped {
            problems.push(format!("checkpoint of round {} is unreadable: {}", c.round, c.reason));
        }
        match scan.checkpoint {
            Some(checkpoint) => {
                inspection.round = Some(checkpoint.state.round);
                inspection.params_hash = Some(hex(&checkpoint.state.params_hash()));
                inspection.lineage = Some(hex(&checkpoint.state.lineage));
            }
            None if inspection.checkpoints_kept.is_empty() => {}
            None => problems.push("no checkpoint verifies; the node will sync state from peers".to_string()),
        }
    }
    inspection.healthy = problems.is_empty();
    inspection.problems = problems;
    Ok(inspection)
}

/// The value of a read that should find something; a missing value or an
/// error becomes a problem.
fn present<T>(read: Result<Option<T>, StoreError>, missing: &str, problems: &mut Vec<String>) -> Option<T> {
    match read {
        Ok(Some(value)) => Some(value),
        Ok(None) => {
            problems.push(missing.to_string());
            None
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "datadir      {}", self.datadir.display())?;
        writeln!(f, "peer id      {}", or(&self.peer_id))?;
        writeln!(f, "run          {} ({})", or(&self.run_id), or(&self.run_name))?;
        writeln!(f, "parameters   {}", self.params.map_or("-".into(), |p| p.to_string()))?;
        writeln!(f, "round        {}", self.round.map_or("-".into(), |r| r.to_string()))?;
        writeln!(f, "params hash  {}", or(&self.params_hash))?;
        writeln!(f, "lineage      {}", or(&self.lineage))?;
        let kept: Vec<String> = self.checkpoints_kept.iter().map(|r| r.to_string()).collect();
        writeln!(f, "checkpoints  {} kept (rounds {})", kept.len(), kept.join(", "))?;
        if self.healthy {
            write!(f, "health       healthy")
        } else {
            write!(f, "health       NOT healthy: {}", self.problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::{ModelState, RunSpec};

    fn datadir_with_checkpoints(rounds: &[u64]) -> (tempfile::TempDir, RunSpec) {
        let dir = tempfile::tempdir().unwrap();
        let spec = RunSpec::builtin();
        let store = Store::open(dir.path()).unwrap();
        store.identity().unwrap();
        store.set_spec(&spec).unwrap();
        for &r in rounds {
            let mut state = ModelState::initial(vec![0.5; spec.param_count()]);
            state.round = r;
            store.save_checkpoint(&state, &[]).unwrap();
        }
        (dir, spec)
    }

    #[test]
    fn a_healthy_datadir_reports_its_run_round_and_checkpoints() {
        let (dir, spec) = datadir_with_checkpoints(&[1, 2, 3, 4]);
        let i = inspect(dir.path()).unwrap();
        assert!(i.healthy, "{:?}", i.problems);
        assert_eq!(i.run_id, Some(spec.run_id().to_string()));
        assert_eq!(i.round, Some(4));
        assert_eq!(i.checkpoints_kept, vec![3, 4]);
        assert!(i.peer_id.as_deref().unwrap().starts_with("12D3KooW"));
        assert!(i.to_string().contains("healthy"));
    }

    #[test]
    fn a_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used() {
        let (dir, _) = datadir_with_checkpoints(&[1, 2]);
        Store::open(dir.path()).unwrap().put_raw_checkpoint(3, b"torn write").unwrap();
        let i = inspect(dir.path()).unwrap();
        assert!(!i.healthy);
        assert_eq!(i.round, Some(2));
        assert_eq!(i.corrupt_checkpoints.len(), 1);
        assert!(i.problems[0].contains("round 3"), "{:?}", i.problems);
    }

    #[test]
    fn candle_reads_a_checkpoint_file_as_the_models_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RunSpec::builtin();
        let mut store = Store::open(dir.path()).unwrap();
        let layout = starling_training::init::layout(&spec.model).unwrap();
        store.set_layout(starling_storage::Layout::new(layout).unwrap());
        let params: Vec<f32> = (0..spec.param_count()).map(|i| i as f32 * 1e-3).collect();
        let mut state = ModelState::initial(params.clone());
        state.round = 9;
        store.save_checkpoint(&state, &[]).unwrap();
        let file = dir.path().join("checkpoint.safetensors");
        std::fs::write(&file, store.raw_checkpoint(9).unwrap().unwrap()).unwrap();

        let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
        let model = starling_training::models::Model::new(&spec.model).unwrap();
        let mut flat = Vec::new();
        for (name, var) in model.named_vars() {
            let t = &tensors[name];
            assert_eq!(t.dims(), var.dims(), "{name}");
            flat.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert!(tensors.contains_key(&format!("outer_momentum.{name}")));
        }
        assert_eq!(flat, params);
    }

    #[test]
    fn a_directory_that_is_not_a_datadir_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--datadir"), "{err}");
        assert!(!dir.path().join("db").exists(), "inspect must not create a datadir");
    }
}
