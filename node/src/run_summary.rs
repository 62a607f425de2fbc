//! `starling run --summary FILE`: what a node did, as one JSON object written
//! when it stops, for scripts and `starling bench scale` (which runs nodes as
//! child processes and cannot read their memory).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::node::{NodeOutcome, Timing};

/// A stopped node's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The round the node had reached.
    pub round: u64,
    pub rounds_merged: u64,
    /// Parameters of the model.
    pub params: usize,
    /// Bytes of the signed deltas this node published (whether or not any peer
    /// was there to receive them).
    pub published_bytes: u64,
    /// Payload bytes of announced deltas fetched from peers (`--pull-above`).
    #[serde(default)]
    pub pulled_bytes: u64,
    /// Bytes through the transport.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Each kind of work over the whole run (how often, seconds in all, the
    /// longest): `train` (a round's inner steps), `encode` (error feedback,
    /// encoding and signing of our delta), `outbox` (saving it before it goes
    /// out), `merge` (aggregation and outer step), `checkpoint`, `eval`, `verify`, ...,
    /// and `between_trainings` (from the end of one training to the start of
    /// the next: what the rest of a round adds to its training).
    pub work: BTreeMap<String, Timing>,
}

/// A summary that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("cannot write the summary {path} (--summary): {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the summary {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the summary {path} is not a run summary: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl RunSummary {
    pub fn of(outcome: &NodeOutcome) -> Self {
        Self {
            round: outcome.state.round,
            rounds_merged: outcome.rounds_merged,
            params: outcome.state.params.len(),
            published_bytes: outcome.published_bytes,
            pulled_bytes: outcome.pulled_bytes,
            sent_bytes: outcome.traffic.sent,
            received_bytes: outcome.traffic.received,
            work: outcome.loop_stats.work.clone(),
        }
    }

    /// Writes the summary whole: a reader never sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), SummaryError> {
        let err = |source| SummaryError::Write { path: path.to_path_buf(), source };
        let text = serde_json::to_string(self).expect("a summary serializes");
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).map_err(err)?;
        std::fs::rename(&partial, path).map_err(err)
    }

    pub fn read(path: &Path) -> Result<Self, SummaryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SummaryError::Read { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|source| SummaryError::Parse { path: path.to_path_buf(), source })
    }

    /// Seconds of `kind` of work over the run.
    pub fn seconds(&self, kind: &str) -> f64 {
        self.work.get(kind).map_or(0.0, |t| t.total_seconds)
    }

    /// CPU seconds of `kind` of work over the run (work on the workers only).
    pub fn cpu_seconds(&self, kind: &str) -> f64 {
        self.work.get(kind).map_or(0.0, |t| t.cpu_seconds)
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.work.get(kind).map_or(0, |t| t.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let summary = RunSummary {
            round: 3,
            rounds_merged: 3,
            params: 1000,
            published_bytes: 12_000,
            work: [("train".to_string(), Timing { count: 3, total_seconds: 1.5, ..Timing::default() })]
                .into(),
            ..RunSummary::default()
        };
        summary.write(&path).unwrap();
        let back = RunSummary::read(&path).unwrap();
        assert_eq!(back, summary);
        assert_eq!((back.seconds("train"), back.count("train"), back.seconds("eval")), (1.5, 3, 0.0));
        let err = RunSummary::read(&dir.path().join("none.json")).unwrap_err().to_string();
        assert!(err.contains("none.json"), "{err}");
    }
}
