//! What a running node reports about itself: its state, figures and a bounded
//! history of merged rounds. `GET /status` serves a [`NodeStatus`] as JSON,
//! `GET /health` its [`Health`], and `starling status` prints one.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// What the node is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Waiting for `--wait-peers` peers before the first round.
    Waiting,
    /// Fetching the swarm's state, or sitting out a round after fetching it.
    Syncing,
    /// Taking part in rounds.
    Training,
    /// Following rounds (merging peers' deltas, serving state, relaying gossip)
    /// without publishing deltas of its own.
    Paused,
    /// Reached `--rounds`; about to stop.
    Finished,
}

impl NodeState {
    /// Whether `/health` answers 200. A paused node is healthy: it follows the
    /// run and serves its peers, and resumes at once when asked.
    pub fn healthy(self) -> bool {
        matches!(self, NodeState::Training | NodeState::Paused)
    }

    /// Why the node is not ready, for `/health`'s 503.
    pub fn reason(self) -> &'static str {
        match self {
            NodeState::Waiting => "waiting for peers (--wait-peers) before the first round",
            NodeState::Syncing => "fetching the swarm's state from peers",
            NodeState::Training => "training",
            NodeState::Paused => "paused: following the run without training (POST /resume)",
            NodeState::Finished => "reached --rounds; stopping",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            NodeState::Waiting => "waiting",
            NodeState::Syncing => "syncing",
            NodeState::Training => "training",
            NodeState::Paused => "paused",
            NodeState::Finished => "finished",
        };
        f.write_str(name)
    }
}

/// `GET /health`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub state: NodeState,
    pub reason: String,
}

impl Health {
    pub fn of(state: NodeState) -> Self {
        Self { healthy: state.healthy(), state, reason: state.reason().into() }
    }
}

/// One merged round, as the dashboard charts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    /// The round merged.
    pub round: u64,
    /// Seconds since the node started.
    pub at_seconds: f64,
    /// The node's mean training loss of the round; `None` when it did not train it (paused, syncing).
    pub loss: Option<f32>,
    /// Held-out accuracy and loss after the merge (with `--evaluate`).
    pub accuracy: Option<f32>,
    pub eval_loss: Option<f32>,
    pub peers: usize,
    /// Deltas merged.
    pub merged: usize,
    /// Bytes received and sent since the previous point.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `GET /status`'s body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub run_id: String,
    pub run_name: String,
    /// The round the node is in (its state is the result of `round` merges).
    pub round: u64,
    /// The hash chain of the merges that made the node's state: nodes that
    /// merged the same deltas in every round hold the same lineage.
    pub lineage: String,
    pub state: NodeState,
    pub paused: bool,
    /// Loss of the last round trained, accuracy and held-out loss of the last evaluation.
    pub loss: Option<f32>,
    pub accuracy: Option<f32>,
    pub eval_loss: Option<f32>,
    pub peers: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rounds_merged: u64,
    pub deltas_published: u64,
    pub deltas_accepted: u64,
    /// Refused deltas and proofs by reason.
    pub deltas_refused: BTreeMap<String, u64>,
    pub uptime_seconds: f64,
    /// Differential privacy spent, in a run with `[privacy]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyStatus>,
    /// The last [`HISTORY_ROUNDS`] merged rounds, oldest first.
    pub history: Vec<RoundPoint>,
}

/// A private node's budget, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyStatus {
    /// `record` (DP-SGD) or `node` (the whole contribution).
    pub level: starling_protocol::PrivacyLevel,
    /// ε spent so far at `delta`.
    pub epsilon: f64,
    /// The budget the spec allows.
    pub epsilon_budget: f64,
    pub delta: f64,
    /// False once the budget is spent: the node merges and no longer publishes.
    pub contributing: bool,
}

/// How many merged rounds `/status` keeps: enough for a long chart, while the
/// JSON stays around 150 KiB at most.
pub const HISTORY_ROUNDS: usize = 1000;

/// The bounded history of merged rounds.
#[derive(Clone, Debug, Default)]
pub struct History {
    points: VecDeque<RoundPoint>,
    /// Transport totals at the last point, to report bytes per round.
    last_in: u64,
    last_out: u64,
}

impl History {
    /// Records a merged round; `total_in`/`total_out` are the transport's totals now.
    pub fn push(&mut self, mut point: RoundPoint, total_in: u64, total_out: u64) {
        point.bytes_in = total_in.saturating_sub(self.last_in);
        point.bytes_out = total_out.saturating_sub(self.last_out);
        self.last_in = total_in;
        self.last_out = total_out;
        if self.points.len() == HISTORY_ROUNDS {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    pub fn points(&self) -> Vec<RoundPoint> {
        self.points.iter().cloned().collect()
    }

    pub fn last(&self) -> Option<&RoundPoint> {
        self.points.back()
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let figure = |v: Option<f32>, percent: bool| match v {
            Some(v) if percent => format!("{:.2}%", v * 100.0),
            Some(v) => format!("{v:.4}"),
            None => "-".into(),
        };
        let refused: u64 = self.deltas_refused.values().sum();
        writeln!(f, "peer      {}", self.peer_id)?;
        writeln!(f, "run       {} ({})", self.run_name, self.run_id)?;
        writeln!(f, "state     {} at round {} ({} merged here)", self.state, self.round, self.rounds_merged)?;
        writeln!(
            f,
            "loss      {} train, {} held-out; accuracy {}",
            figure(self.loss, false),
            figure(self.eval_loss, false),
            figure(self.accuracy, true)
        )?;
        writeln!(
            f,
            "peers     {}; {} in, {} out",
            self.peers,
            crate::units::human_bytes(self.bytes_in as f64),
            crate::units::human_bytes(self.bytes_out as f64)
        )?;
        write!(
            f,
            "deltas    {} published, {} accepted, {} refused",
            self.deltas_published, self.deltas_accepted, refused
        )?;
        for (reason, count) in &self.deltas_refused {
            write!(f, " ({reason}: {count})")?;
        }
        writeln!(f)?;
        if let Some(p) = &self.privacy {
            writeln!(
                f,
                "privacy   ε {:.2} of {} spent (δ {:e}, {} level){}",
                p.epsilon,
                p.epsilon_budget,
                p.delta,
                p.level,
                if p.contributing { "" } else { "; budget spent: merging only" }
            )?;
        }
        write!(f, "uptime    {:.0} s", self.uptime_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(round: u64) -> RoundPoint {
        RoundPoint {
            round,
            at_seconds: round as f64,
            loss: Some(1.0),
            accuracy: None,
            eval_loss: None,
            peers: 1,
            merged: 2,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn history_reports_bytes_per_round_and_stays_bounded() {
        let mut history = History::default();
        history.push(point(0), 100, 10);
        history.push(point(1), 250, 30);
        let points = history.points();
        assert_eq!((points[1].bytes_in, points[1].bytes_out), (150, 20));
        for round in 2..(HISTORY_ROUNDS as u64 + 10) {
            history.push(point(round), 0, 0);
        }
        let points = history.points();
        assert_eq!(points.len(), HISTORY_ROUNDS);
        assert_eq!(points[0].round, 10, "the oldest rounds go first");
    }

    #[test]
    fn only_training_and_paused_nodes_are_healthy() {
        assert!(Health::of(NodeState::Training).healthy);
        assert!(Health::of(NodeState::Paused).healthy);
        for state in [NodeState::Waiting, NodeState::Syncing, NodeState::Finished] {
            let health = Health::of(state);
            assert!(!health.healthy && !health.reason.is_empty(), "{state}");
        }
        assert_eq!(serde_json::to_string(&NodeState::Paused).unwrap(), "\"paused\"");
    }
}
