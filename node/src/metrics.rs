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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A `select!` arm of the event loop, or a kind of heavy work.
    pub kind: &'static str,
}

/// Histograms of seconds, labelled by kind.
type Timings = Family<KindLabel, Histogram, fn() -> Histogram>;

/// 100 µs to about 26 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
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
    /// Payload bytes of announced deltas fetched from peers (see `--pull-above`).
    pub payload_bytes_pulled: Counter,
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
    /// Time the event loop spent in one handler, by `select!` arm.
    pub event_loop_busy: Timings,
    /// How late the event loop's watchdog tick came.
    pub event_loop_lag: Histogram,
    /// Time of one piece of heavy work (merge, encode, verify, checkpoint, ...), by kind.
    pub work_seconds: Timings,
    /// Jobs waiting or running on the node's workers, by kind.
    pub work_queued: Family<KindLabel, Gauge>,
    /// Jobs dropped because their queue was full, by kind.
    pub work_dropped: Family<KindLabel, Counter>,
    /// Merges that found the state still held by a reader and copied it.
    pub state_copies: Counter,
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
        let payload_bytes_pulled = Counter::default();
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
            "payload_pulled",
            "Payload bytes of announced deltas fetched from peers",
            Unit::Bytes,
            payload_bytes_pulled.clone(),
        );
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
        let event_loop_busy = Timings::new_with_constructor(seconds_histogram);
        let event_loop_lag = seconds_histogram();
        let work_seconds = Timings::new_with_constructor(seconds_histogram);
        starling.register_with_unit(
            "event_loop_busy",
            "Time the event loop spent in one handler, by select! arm: how long it did not answer the swarm",
            Unit::Seconds,
            event_loop_busy.clone(),
        );
        starling.register_with_unit(
            "event_loop_lag",
            "How late the event loop's 10 ms watchdog tick came",
            Unit::Seconds,
            event_loop_lag.clone(),
        );
        starling.register_with_unit(
            "work",
            "Time of one piece of heavy work, by kind",
            Unit::Seconds,
            work_seconds.clone(),
        );
        let work_queued = Family::<KindLabel, Gauge>::default();
        let work_dropped = Family::<KindLabel, Counter>::default();
        let state_copies = Counter::default();
        starling.register(
            "work_queued",
            "Jobs waiting or running on the node's workers, by kind",
            work_queued.clone(),
        );
        starling.register(
            "work_dropped",
            "Jobs dropped because their queue was full, by kind",
            work_dropped.clone(),
        );
        starling.register(
            "state_copies",
            "Merges that found the model state still held by a reader (snapshot, evaluation) and copied it",
            state_copies.clone(),
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
            payload_bytes_pulled,
            network_bytes,
            train_seconds,
            merge_seconds,
            p2p,
            privacy_epsilon,
            sync_requests_limited,
            event_loop_busy,
            event_loop_lag,
            work_seconds,
            work_queued,
            work_dropped,
            state_copies,
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

    /// One handler of the event loop's arm `kind` took `seconds`.
    pub fn loop_busy(&self, kind: &'static str, seconds: f64) {
        self.event_loop_busy.get_or_create(&KindLabel { kind }).observe(seconds);
    }

    /// One piece of heavy work of `kind` took `seconds`.
    pub fn work_done(&self, kind: &'static str, seconds: f64) {
        self.work_seconds.get_or_create(&KindLabel { kind }).observe(seconds);
    }

    /// Jobs of `kind` waiting or running.
    pub fn work_pending(&self, kind: &'static str, jobs: usize) {
        self.work_queued.get_or_create(&KindLabel { kind }).set(jobs as i64);
    }

    /// Counts a job of `kind` dropped from a full queue.
    pub fn work_dropped(&self, kind: &'static str) {
        self.work_dropped.get_or_create(&KindLabel { kind }).inc();
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
