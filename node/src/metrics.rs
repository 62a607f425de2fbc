//! Node metrics: the Prometheus registry that libp2p's bandwidth counters and
//! Starling's own counters live in, and the figures read back from it.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Starling's metrics, registered beside libp2p's.
pub struct NodeMetrics {
    pub registry: Registry,
    pub round: Gauge,
    pub deltas_accepted: Counter,
    pub deltas_refused: Family<ReasonLabel, Counter>,
    pub deltas_ignored: Family<ReasonLabel, Counter>,
    pub merges: Counter,
    pub state_syncs: Counter,
    /// ε this node has spent, in a run with `[privacy]` (0 otherwise).
    pub privacy_epsilon: Gauge<f64, AtomicU64>,
    /// The refusals of every reason together (not exported: the family is).
    refused_sum: Counter,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let round = Gauge::default();
        let deltas_accepted = Counter::default();
        let deltas_refused = Family::<ReasonLabel, Counter>::default();
        let deltas_ignored = Family::<ReasonLabel, Counter>::default();
        let merges = Counter::default();
        let state_syncs = Counter::default();
        let privacy_epsilon = Gauge::<f64, AtomicU64>::default();
        let starling = registry.sub_registry_with_prefix("starling");
        starling.register("round", "Round the node is collecting", round.clone());
        starling.register("deltas_accepted", "Peer deltas accepted", deltas_accepted.clone());
        starling.register("deltas_refused", "Peer deltas refused, by reason", deltas_refused.clone());
        starling.register(
            "deltas_ignored",
            "Peer deltas ignored (duplicate, stale), by reason",
            deltas_ignored.clone(),
        );
        starling.register("merges", "Rounds merged", merges.clone());
        starling.register("state_syncs", "States installed from peers", state_syncs.clone());
        starling.register(
            "privacy_epsilon",
            "Differential privacy spent by this node: epsilon at the run's delta",
            privacy_epsilon.clone(),
        );
        Self {
            registry,
            round,
            deltas_accepted,
            deltas_refused,
            deltas_ignored,
            merges,
            state_syncs,
            privacy_epsilon,
            refused_sum: Counter::default(),
        }
    }
}

impl NodeMetrics {
    /// Counts a refused delta.
    pub fn refused(&self, reason: &str) {
        self.deltas_refused.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
        self.refused_sum.inc();
    }

    /// Counts an ignored delta.
    pub fn ignored(&self, reason: &str) {
        self.deltas_ignored.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// Bytes received and sent on every connection, as counted by libp2p's
    /// bandwidth transport (protocol overhead and gossip duplicates included).
    pub fn transport_bytes(&self) -> Traffic {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            return Traffic::default();
        }
        let mut traffic = Traffic::default();
        for line in text.lines().filter(|l| l.starts_with("libp2p_bandwidth_bytes_total{")) {
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
            if line.contains("direction=\"Inbound\"") {
                traffic.received += value as u64;
            } else if line.contains("direction=\"Outbound\"") {
                traffic.sent += value as u64;
            }
        }
        traffic
    }

    /// Total refused deltas, all reasons.
    pub fn refused_total(&self) -> u64 {
        self.refused_sum.get()
    }
}

/// Bytes through the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
}
