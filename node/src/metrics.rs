//! Node metrics: the Prometheus registry that libp2p's own metrics (bandwidth,
//! connections, gossipsub, identify, Kademlia, ping) and Starling's live in,
//! and the figures read back from it. `GET /metrics` serves it (see `crate::http`).

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` or `out`.
    pub direction: &'static str,
}

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
    /// Mean training loss of the node's last round.
    pub train_loss: Gauge<f64, AtomicU64>,
    /// Held-out accuracy and loss after the last merge (with `--evaluate`).
    pub eval_accuracy: Gauge<f64, AtomicU64>,
    pub eval_loss: Gauge<f64, AtomicU64>,
    /// Connected peers of the run.
    pub peers: Gauge,
    /// 1 while training is paused (the node still follows the run), else 0.
    pub paused: Gauge,
    pub deltas_published: Counter,
    /// Bytes through the transport, refreshed from libp2p's bandwidth counters.
    pub network_bytes: Family<DirectionLabel, Counter>,
    /// Time to train one round's inner steps, and to merge a round.
    pub train_seconds: Histogram,
    pub merge_seconds: Histogram,
    /// libp2p's recorders of swarm, gossipsub, identify, Kademlia and ping events.
    pub p2p: libp2p::metrics::Metrics,
    /// ε this node has spent, in a run with `[privacy]` (0 otherwise).
    pub privacy_epsilon: Gauge<f64, AtomicU64>,
    /// State sync requests of peers answered `Unavailable` because the peer
    /// asked over its rate limit, by kind (`offer`, `chunk`).
    pub sync_requests_limited: Family<ReasonLabel, Counter>,
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
        let train_loss = Gauge::<f64, AtomicU64>::default();
        let eval_accuracy = Gauge::<f64, AtomicU64>::default();
        let eval_loss = Gauge::<f64, AtomicU64>::default();
        let peers = Gauge::default();
        let paused = Gauge::default();
        let deltas_published = Counter::default();
        let network_bytes = Family::<DirectionLabel, Counter>::default();
        let train_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let merge_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        starling.register("train_loss", "Mean training loss of the node's last round", train_loss.clone());
        starling.register(
            "eval_accuracy",
            "Held-out accuracy after the last merge (0 to 1; with --evaluate)",
            eval_accuracy.clone(),
        );
        starling.register(
            "eval_loss",
            "Held-out loss after the last merge (with --evaluate)",
            eval_loss.clone(),
        );
        starling.register("peers", "Connected peers of the run", peers.clone());
        starling.register(
            "paused",
            "1 while training is paused (the node still follows the run)",
            paused.clone(),
        );
        starling.register("deltas_published", "Deltas of this node published", deltas_published.clone());
        starling.register_with_unit(
            "network",
            "Bytes through the transport, gossip duplicates and protocol overhead included",
            Unit::Bytes,
            network_bytes.clone(),
        );
        starling.register_with_unit(
            "train",
            "Time to train one round's inner steps",
            Unit::Seconds,
            train_seconds.clone(),
        );
        starling.register_with_unit(
            "merge",
            "Time to aggregate a round's deltas and take the outer step",
            Unit::Seconds,
            merge_seconds.clone(),
        );
        starling.register(
            "privacy_epsilon",
            "Differential privacy spent by this node: epsilon at the run's delta",
            privacy_epsilon.clone(),
        );
        let sync_requests_limited = Family::<ReasonLabel, Counter>::default();
        starling.register(
            "sync_requests_limited",
            "State sync requests of peers refused for going over their rate limit, by kind",
            sync_requests_limited.clone(),
        );
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        Self {
            registry,
            round,
            deltas_accepted,
            deltas_refused,
            deltas_ignored,
            merges,
            state_syncs,
            train_loss,
            eval_accuracy,
            eval_loss,
            peers,
            paused,
            deltas_published,
            network_bytes,
            train_seconds,
            merge_seconds,
            p2p,
            privacy_epsilon,
            sync_requests_limited,
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

    /// The whole registry in Prometheus text format, with the network byte
    /// counters first brought up to date with libp2p's.
    pub fn render(&self) -> String {
        let traffic = self.transport_bytes();
        for (direction, total) in [("in", traffic.received), ("out", traffic.sent)] {
            let counter = self.network_bytes.get_or_create(&DirectionLabel { direction });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
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
