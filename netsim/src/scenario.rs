//! Scenario files: what a simulation runs, in TOML.
//!
//! A scenario names the swarm (nodes, rounds, seed), the workload each node
//! trains, the protocol settings, the link model (latency distribution,
//! bandwidth, loss, gossip mesh degree), compute speed and stragglers, churn,
//! a schedule of events (partitions, heals, crashes, joins) and the attack
//! hook. Every field but `name`, `nodes` and `rounds` has a default, and
//! unknown fields are refused, so a typo is an error rather than a silent
//! default. See `netsim/scenarios/` for examples.

use std::path::Path;

use serde::{Deserialize, Serialize};
use starling_protocol::{spec::OuterSpec, AggregationRule, Codec, OuterRule};

pub use crate::attack::{Attack, AttackBehaviour};

/// A whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "one")]
    pub seed: u64,
    pub nodes: usize,
    pub rounds: u64,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub protocol: ProtocolSettings,
    #[serde(default)]
    pub link: Link,
    #[serde(default)]
    pub compute: Compute,
    #[serde(default)]
    pub churn: Churn,
    #[serde(default)]
    pub events: Vec<ScheduledEvent>,
    #[serde(default)]
    pub attack: Attack,
}

fn one() -> u64 {
    1
}

/// Virtual time and simulated links, or real node stacks in one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Virtual,
    Live,
}

/// What each node trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    /// Noisy least squares with a known optimum: node i minimises
    /// ½‖θ − θ*ᵢ‖² where θ*ᵢ = θ* + spread·ξᵢ, with gradient noise; the swarm
    /// should find θ* (the mean of the θ*ᵢ). Cheap enough for 10,000 nodes.
    Quadratic {
        #[serde(default = "default_dim")]
        dim: usize,
        /// How far apart the nodes' own optima are (data heterogeneity).
        #[serde(default = "default_spread")]
        spread: f32,
        /// Standard deviation of the gradient noise per coordinate.
        #[serde(default = "default_noise")]
        noise: f32,
        #[serde(default = "default_quadratic_steps")]
        inner_steps: u32,
        #[serde(default = "default_quadratic_lr")]
        inner_lr: f32,
    },
    /// The node's real candle model on the built-in task (the same code as
    /// `starling swarm`), with optional overrides of the built-in spec.
    Candle {
        #[serde(default)]
        samples_per_node: Option<usize>,
        #[serde(default)]
        eval_samples: Option<usize>,
        #[serde(default)]
        inner_steps: Option<u32>,
        /// Nodes evaluated each round (a fixed, seeded subset), to bound the cost.
        #[serde(default = "default_eval_nodes")]
        eval_nodes: usize,
    },
}

fn default_dim() -> usize {
    32
}
fn default_spread() -> f32 {
    1.0
}
fn default_noise() -> f32 {
    0.5
}
fn default_quadratic_steps() -> u32 {
    10
}
fn default_quadratic_lr() -> f32 {
    0.05
}
fn default_eval_nodes() -> usize {
    16
}

impl Default for Workload {
    fn default() -> Self {
        Workload::Quadratic {
            dim: default_dim(),
            spread: default_spread(),
            noise: default_noise(),
            inner_steps: default_quadratic_steps(),
            inner_lr: default_quadratic_lr(),
        }
    }
}

/// Protocol settings that a RunSpec would carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolSettings {
    #[serde(default = "default_codec")]
    pub codec: Codec,
    #[serde(default = "default_decay")]
    pub feedback_decay: f32,
    /// Outer step; by default the one that suits the codec.
    #[serde(default)]
    pub outer_lr: Option<f32>,
    #[serde(default)]
    pub outer_momentum: Option<f32>,
    /// The outer rule, `momentum` or `sparseloco` (a spec's `outer.rule`); by
    /// default the codec's. `sparseloco` has no outer momentum.
    #[serde(default)]
    pub outer_rule: Option<OuterRule>,
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    #[serde(default = "default_quorum")]
    pub quorum: f64,
    /// Aggregate in rotating groups of this size (0: every node with every
    /// node). Grouped rounds average the members' trained models rather than
    /// their pseudo-gradients (see `engine`).
    #[serde(default)]
    pub group_size: usize,
    #[serde(default)]
    pub aggregation: AggregationRule,
}

fn default_codec() -> Codec {
    Codec::Dense
}
fn default_decay() -> f32 {
    0.8
}
fn default_deadline() -> u64 {
    10_000
}
fn default_quorum() -> f64 {
    1.0
}

impl Default for ProtocolSettings {
    fn default() -> Self {
        Self {
            codec: default_codec(),
            feedback_decay: default_decay(),
            outer_lr: None,
            outer_momentum: None,
            outer_rule: None,
            deadline_ms: default_deadline(),
            quorum: default_quorum(),
            group_size: 0,
            aggregation: AggregationRule::default(),
        }
    }
}

impl ProtocolSettings {
    /// The outer optimizer: the scenario's values, else the codec's defaults.
    pub fn outer(&self) -> starling_protocol::OuterOptimizer {
        starling_protocol::OuterOptimizer::from(&self.outer_spec())
    }

    /// The outer step as a spec's `[outer]` section (what live mode runs).
    pub fn outer_spec(&self) -> OuterSpec {
        let default = OuterSpec::for_codec(self.codec);
        let rule = self.outer_rule.unwrap_or(default.rule);
        let lr = self.outer_lr.map_or(default.lr, f64::from);
        if rule == OuterRule::Sparseloco {
            return OuterSpec { rule, lr, momentum: 0.0, nesterov: false };
        }
        let same_rule = rule == default.rule;
        OuterSpec {
            rule,
            lr,
            momentum: self.outer_momentum.map_or(if same_rule { default.momentum } else { 0.9 }, f64::from),
            nesterov: !same_rule || default.nesterov,
        }
    }
}

/// One-way latency of a message on a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Latency {
    Fixed {
        ms: f64,
    },
    Uniform {
        min_ms: f64,
        max_ms: f64,
    },
    /// Normal around `mean_ms` with standard deviation `jitter_ms`, cut at 0.
    Normal {
        mean_ms: f64,
        jitter_ms: f64,
    },
    /// Log-normal with this median and log-space standard deviation (heavy tail).
    Lognormal {
        median_ms: f64,
        sigma: f64,
    },
}

/// The network between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    #[serde(default = "default_latency")]
    pub latency: Latency,
    /// Probability that one message on one link is lost.
    #[serde(default)]
    pub loss: f64,
    /// Per-node upload and download bandwidth, in Mbit/s (0: unlimited).
    #[serde(default)]
    pub uplink_mbps: f64,
    #[serde(default)]
    pub downlink_mbps: f64,
    /// Gossip mesh peers per node (gossipsub's D); 0 connects every pair.
    #[serde(default = "default_mesh")]
    pub mesh_degree: usize,
    /// Whether a node is connected only to its mesh peers, and knows the
    /// others through their relayed deltas alone (as in a swarm larger than
    /// a node's connections); by default every pair is connected and only
    /// gossip goes through the mesh.
    #[serde(default)]
    pub mesh_connections: bool,
    /// What a partition does to the messages sent across it. 0 (the default):
    /// they are lost. Otherwise they are held, as TCP holds the unacknowledged
    /// data of a connection whose link went down, and each connection
    /// delivers what it held, in order, at a random time up to this many
    /// milliseconds after the heal (TCP's backed-off retransmission timer).
    /// After a heal, deltas of rounds long closed then arrive late, at
    /// different times at different nodes.
    #[serde(default)]
    pub heal_retransmit_ms: u64,
    /// Whether a partition closes the connections across it: each side's
    /// nodes see the other side's leave, and connect to them again at the
    /// heal (what live mode's cut does, and a real cut once keepalives give
    /// up). By default connections stay up and only what crosses is lost, so
    /// rounds wait for the other side until it stops counting as active.
    #[serde(default)]
    pub partition_disconnects: bool,
}

fn default_latency() -> Latency {
    Latency::Uniform { min_ms: 5.0, max_ms: 50.0 }
}
fn default_mesh() -> usize {
    8
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency: default_latency(),
            loss: 0.0,
            uplink_mbps: 0.0,
            downlink_mbps: 0.0,
            mesh_degree: 8,
            mesh_connections: false,
            heal_retransmit_ms: 0,
            partition_disconnects: false,
        }
    }
}

/// How long local training takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// Virtual time of one round of local training on a node of speed 1.
    #[serde(default = "default_round_ms")]
    pub round_ms: u64,
    /// Random variation of each round's compute time (fraction, uniform ±).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// This fraction of nodes trains `straggler_slowdown` times slower.
    #[serde(default)]
    pub straggler_fraction: f64,
    #[serde(default = "default_slowdown")]
    pub straggler_slowdown: f64,
}

fn default_round_ms() -> u64 {
    2_000
}
fn default_jitter() -> f64 {
    0.1
}
fn default_slowdown() -> f64 {
    4.0
}

impl Default for Compute {
    fn default() -> Self {
        Self {
            round_ms: default_round_ms(),
            jitter: default_jitter(),
            straggler_fraction: 0.0,
            straggler_slowdown: default_slowdown(),
        }
    }
}

/// Random churn: nodes crash and come back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Probability that a given node crashes during a given round.
    #[serde(default)]
    pub crash_per_round: f64,
    /// How long a crashed node stays down before it restarts from its checkpoint.
    #[serde(default)]
    pub restart_after_ms: u64,
}

/// Something that happens when the swarm's leading node reaches `at_round`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    pub at_round: u64,
    #[serde(flatten)]
    pub what: EventKind,
}

/// What a scheduled event does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum EventKind {
    /// Splits the nodes into sides that cannot reach each other, by fractions
    /// of the node list (e.g. `[0.5, 0.5]`).
    Partition { sides: Vec<f64> },
    /// Every side can reach every other again.
    Heal,
    /// This many nodes (the lowest indices still up) crash; they restart after
    /// `restart_after_ms` (never when 0).
    Crash { count: usize, restart_after_ms: u64 },
    /// This many nodes leave for good; `graceful` ones gossip a signed leave
    /// notice first, as `starling run` does on SIGTERM (the others vanish, as
    /// after a kill).
    Leave {
        count: usize,
        #[serde(default)]
        graceful: bool,
    },
    /// This many new nodes join, starting from nothing and syncing state.
    Join { count: usize },
}

/// The report's marker for a partition into `sides` (`partition 0.6/0.4`),
/// in both modes.
pub fn partition_label(sides: &[f64]) -> String {
    format!("partition {}", sides.iter().map(|f| format!("{f}")).collect::<Vec<_>>().join("/"))
}

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}")]
    Read { path: String, source: std::io::Error },
    #[error("scenario {path} is not valid")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("scenario field `{field}`: {problem}")]
    Invalid { field: &'static str, problem: String },
}

impl Scenario {
    /// Reads and checks a scenario file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: name.clone(), source })?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| ScenarioError::Parse { path: name, source: Box::new(e) })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks ranges that the types cannot.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |field, problem: &str| Err(ScenarioError::Invalid { field, problem: problem.to_string() });
        if self.nodes == 0 {
            return bad("nodes", "must be at least 1");
        }
        if self.rounds == 0 {
            return bad("rounds", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.link.loss) {
            return bad("link.loss", "must be in [0, 1)");
        }
        if self.link.uplink_mbps < 0.0 || self.link.downlink_mbps < 0.0 {
            return bad("link.uplink_mbps / link.downlink_mbps", "must not be negative");
        }
        match self.link.latency {
            Latency::Fixed { ms } if ms < 0.0 => return bad("link.latency.ms", "must not be negative"),
            Latency::Uniform { min_ms, max_ms } if min_ms < 0.0 || max_ms < min_ms => {
                return bad("link.latency", "needs 0 <= min_ms <= max_ms")
            }
            Latency::Normal { mean_ms, jitter_ms } if mean_ms < 0.0 || jitter_ms < 0.0 => {
                return bad("link.latency", "needs mean_ms >= 0 and jitter_ms >= 0")
            }
            Latency::Lognormal { median_ms, sigma } if median_ms <= 0.0 || sigma < 0.0 => {
                return bad("link.latency", "needs median_ms > 0 and sigma >= 0")
            }
            _ => {}
        }
        if !(0.0..=1.0).contains(&self.compute.straggler_fraction) || self.compute.straggler_slowdown < 1.0 {
            return bad("compute", "straggler_fraction must be in [0, 1] and straggler_slowdown >= 1");
        }
        if !(0.0..1.0).contains(&self.compute.jitter) {
            return bad("compute.jitter", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.churn.crash_per_round) {
            return bad("churn.crash_per_round", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.attack.fraction) {
            return bad("attack.fraction", "must be in [0, 1)");
        }
        if self.attack.replay_age < 4 {
            return bad(
                "attack.replay_age",
                "must be at least 4 (younger replays are plain gossip duplicates)",
            );
        }
        if !(self.attack.scale.is_finite() && self.attack.noise >= 0.0 && self.attack.ipm_epsilon.is_finite())
        {
            return bad("attack", "scale and ipm_epsilon must be finite and noise at least 0");
        }
        if self.protocol.group_size >= 2 && self.attack.behaviour != AttackBehaviour::None {
            return bad(
                "attack.behaviour",
                "attacks are simulated for all-to-all rounds; set protocol.group_size = 0",
            );
        }
        if !(self.protocol.quorum > 0.0 && self.protocol.quorum <= 1.0) {
            return bad("protocol.quorum", "must be in (0, 1]");
        }
        if self.protocol.group_size >= 2 && self.protocol.codec.is_sparse() {
            return bad(
                "protocol.codec",
                "grouped rounds exchange whole models, which top-k and sparse codecs cannot carry; use dense, f16 or int8",
            );
        }
        if self.protocol.outer_spec().rule == OuterRule::Sparseloco && self.protocol.outer_momentum.is_some()
        {
            return bad(
                "protocol.outer_momentum",
                "the sparseloco rule has no outer momentum (error feedback, feedback_decay, takes its place): remove it",
            );
        }
        if self.protocol.group_size == 1 {
            return bad("protocol.group_size", "a group needs at least 2 nodes (0 turns grouping off)");
        }
        for e in &self.events {
            if let EventKind::Partition { sides } = &e.what {
                if sides.len() < 2 || sides.iter().any(|f| *f <= 0.0) {
                    return bad("events.sides", "a partition needs at least two positive fractions");
                }
            }
        }
        if let Workload::Quadratic { dim, .. } = self.workload {
            if dim == 0 {
                return bad("workload.dim", "must be at least 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_scenario_gets_defaults_and_typos_are_refused() {
        let s: Scenario = toml::from_str("name = \"x\"\nnodes = 3\nrounds = 2\n").unwrap();
        assert_eq!(s.mode, Mode::Virtual);
        assert!(matches!(s.workload, Workload::Quadratic { dim: 32, .. }));
        s.validate().unwrap();
        let typo = toml::from_str::<Scenario>("name = \"x\"\nnodes = 3\nrounds = 2\n[link]\nlos = 0.1\n");
        assert!(typo.unwrap_err().to_string().contains("los"));
    }

    #[test]
    fn events_and_latency_parse() {
        let s: Scenario = toml::from_str(
            r#"
name = "p"
nodes = 10
rounds = 30
[link]
latency = { kind = "normal", mean_ms = 100, jitter_ms = 20 }
[[events]]
at_round = 10
kind = "partition"
sides = [0.5, 0.5]
[[events]]
at_round = 20
kind = "heal"
"#,
        )
        .unwrap();
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.events[1].what, EventKind::Heal);
        assert!(matches!(s.link.latency, Latency::Normal { .. }));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let mut s: Scenario = toml::from_str("name = \"x\"\nnodes = 3\nrounds = 2\n").unwrap();
        s.link.loss = 1.5;
        assert!(s.validate().unwrap_err().to_string().contains("link.loss"));
    }

    #[test]
    fn the_outer_rule_is_the_codecs_unless_named() {
        let text = "name = \"x\"\nnodes = 3\nrounds = 2\n[protocol]\ncodec = \"sparse:64/4096+2bit\"\n";
        let s: Scenario = toml::from_str(text).unwrap();
        assert_eq!(s.protocol.outer_spec(), OuterSpec::for_codec(s.protocol.codec));
        let named: Scenario =
            toml::from_str(&format!("{text}outer_rule = \"sparseloco\"\nouter_lr = 2.0\n")).unwrap();
        named.validate().unwrap();
        let outer = named.protocol.outer();
        assert_eq!((outer.rule, outer.lr, outer.momentum), (OuterRule::Sparseloco, 2.0, 0.0));
        let both: Scenario =
            toml::from_str(&format!("{text}outer_rule = \"sparseloco\"\nouter_momentum = 0.5\n")).unwrap();
        assert!(both.validate().unwrap_err().to_string().contains("protocol.outer_momentum"));
        let dense: Scenario =
            toml::from_str("name = \"x\"\nnodes = 3\nrounds = 2\n[protocol]\nouter_rule = \"momentum\"\n")
                .unwrap();
        assert_eq!(dense.protocol.outer_spec(), OuterSpec::for_codec(Codec::Dense));
    }
}
