//! Bookkeeping of a run: what happened in each round, turned into [`RoundRow`]s.

use std::collections::BTreeMap;

use starling_protocol::consensus_distance;

use crate::{report::RoundRow, workload::Score};

/// One node's merge of one round.
pub struct NodeMerge {
    pub node: usize,
    pub merged: usize,
    pub deadline: bool,
    /// When the node is among those evaluated.
    pub score: Option<Score>,
    pub params: Vec<f32>,
    /// Attackers' merges are left out of accuracy, loss, consensus and
    /// deadline closes: the figures are the honest nodes'.
    pub honest: bool,
}

#[derive(Default)]
struct RoundAcc {
    merges: Vec<NodeMerge>,
    owed: u64,
    first_deliveries: u64,
    latencies_us: Vec<u64>,
    sent: u64,
    received: u64,
    syncs: usize,
}

/// Counters per round and over the run.
#[derive(Default)]
pub struct RoundLedger {
    rounds: u64,
    open: BTreeMap<u64, RoundAcc>,
    rows: Vec<RoundRow>,
    next: u64,
    /// Messages refused, by reason (validation labels, `stale`,
    /// `equivocation`, `banned`, `full`, `oversized`, `malformed`).
    pub refused: BTreeMap<String, u64>,
    /// Deltas signed by forging or equivocating attackers that honest nodes merged.
    pub attack_deltas_merged: u64,
    /// States forged by sync attackers that honest nodes installed.
    pub forged_states_installed: u64,
    /// Times an honest node signed a second, different delta for a round it
    /// had signed (peers would ban it; the target is zero).
    pub honest_equivocations: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    owed: u64,
    first_deliveries: u64,
}

impl RoundLedger {
    pub fn new(rounds: u64) -> Self {
        Self { rounds, ..Self::default() }
    }

    fn at(&mut self, round: u64) -> Option<&mut RoundAcc> {
        (round >= self.next && round < self.rounds).then(|| self.open.entry(round).or_default())
    }

    pub fn published(&mut self, round: u64, owed: usize) {
        self.owed += owed as u64;
        if let Some(a) = self.at(round) {
            a.owed += owed as u64;
        }
    }

    pub fn sent(&mut self, round: u64, bytes: u64) {
        if let Some(a) = self.at(round) {
            a.sent += bytes;
        }
    }

    pub fn lost(&mut self) {
        self.messages_lost += 1;
    }

    pub fn received(&mut self, round: u64, bytes: u64) {
        self.messages_delivered += 1;
        if let Some(a) = self.at(round) {
            a.received += bytes;
        }
    }

    pub fn first_delivery(&mut self, round: u64, latency_us: u64) {
        self.first_deliveries += 1;
        if let Some(a) = self.at(round) {
            a.first_deliveries += 1;
            a.latencies_us.push(latency_us);
        }
    }

    pub fn refused(&mut self, reason: &str) {
        *self.refused.entry(reason.to_string()).or_default() += 1;
    }

    pub fn sync(&mut self, round: u64, bytes: u64) {
        // A node that goes back to an older state (the faster side of a
        // healed partition) installs a round whose row may be closed: the
        // sync counts in the oldest row still open.
        if let Some(a) = self.at(round.max(self.next)) {
            a.syncs += 1;
            a.sent += bytes;
            a.received += bytes;
        }
    }

    /// State-sync bytes (offers, chunks) that crossed a link, without counting a sync.
    pub fn sync_bytes(&mut self, round: u64, bytes: u64) {
        if let Some(a) = self.at(round) {
            a.sent += bytes;
            a.received += bytes;
        }
    }

    /// A node merged `round`. A node that merges a round again (it went back
    /// to an older state, the majority's) counts with its last merge.
    pub fn merged(&mut self, round: u64, merge: NodeMerge) {
        if let Some(a) = self.at(round) {
            a.merges.retain(|m| m.node != merge.node);
            a.merges.push(merge);
        }
    }

    /// Closes every round below `below` (all live nodes are past it); returns rows done.
    pub fn finalize_ready(&mut self, below: u64) -> u64 {
        while self.next < below.min(self.rounds) {
            let acc = self.open.remove(&self.next).unwrap_or_default();
            self.rows.push(row(self.next, acc));
            self.next += 1;
        }
        self.next
    }

    /// Closes whatever is left (the end of the run).
    pub fn finalize_all(&mut self) {
        self.finalize_ready(self.rounds);
    }

    pub fn rows(&self) -> &[RoundRow] {
        &self.rows
    }

    /// First deliveries over owed deliveries, over the whole run.
    pub fn delivered_fraction(&self) -> f64 {
        if self.owed == 0 {
            1.0
        } else {
            self.first_deliveries as f64 / self.owed as f64
        }
    }
}

fn row(round: u64, mut acc: RoundAcc) -> RoundRow {
    let active = acc.merges.len();
    let honest: Vec<&NodeMerge> = acc.merges.iter().filter(|m| m.honest).collect();
    let scores: Vec<Score> = honest.iter().filter_map(|m| m.score).collect();
    let accuracies: Vec<f64> = scores.iter().filter_map(|s| s.accuracy).collect();
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let losses: Vec<f64> = scores.iter().map(|s| s.loss).collect();
    let params: Vec<&[f32]> = honest.iter().map(|m| m.params.as_slice()).collect();
    acc.latencies_us.sort_unstable();
    let pct = |p: f64| {
        if acc.latencies_us.is_empty() {
            0.0
        } else {
            let i = ((acc.latencies_us.len() - 1) as f64 * p).round() as usize;
            acc.latencies_us[i] as f64 / 1000.0
        }
    };
    let per_node = |b: u64| if active == 0 { 0.0 } else { b as f64 / active as f64 };
    RoundRow {
        round,
        active_nodes: active,
        mean_accuracy: (!accuracies.is_empty()).then(|| mean(&accuracies)),
        min_accuracy: accuracies.iter().copied().reduce(f64::min),
        mean_loss: mean(&losses),
        max_loss: losses.iter().copied().reduce(f64::max).unwrap_or(f64::NAN),
        consensus_distance: if params.len() >= 2 { consensus_distance(&params) } else { 0.0 },
        delivered_fraction: if acc.owed == 0 { 1.0 } else { acc.first_deliveries as f64 / acc.owed as f64 },
        p50_latency_ms: pct(0.5),
        p99_latency_ms: pct(0.99),
        bytes_sent_per_node: per_node(acc.sent),
        bytes_received_per_node: per_node(acc.received),
        deadline_closes: acc.merges.iter().filter(|m| m.deadline && m.honest).count(),
        state_syncs: acc.syncs,
    }
}
