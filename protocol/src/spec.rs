//! `RunSpec`, the genesis of a swarm: everything nodes must agree on before
//! they can train together. Stored as TOML; its hash is the run id.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregationRule;
use crate::codec::Codec;
pub use crate::data_spec::{BadDatasetKind, DatasetKind, Partition};
use crate::keys::PublicKey;
pub use crate::model_spec::{
    CnnSpec, GptSpec, MlpSpec, ModelSpec, TokenizerSpec, TransformerSpec, GPT_PRESETS,
};
pub use crate::outer::{OuterRule, OuterSpec};
pub use crate::privacy::{PrivacyLevel, PrivacySpec};
pub use crate::run_id::RunId;

/// Why a spec could not be read or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("run spec is not valid TOML for a Starling spec: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("run spec field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The genesis of a swarm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// A human name for the run; part of the hash, so two runs can differ by name alone.
    pub name: String,
    /// Seeds the initial weights and the built-in data.
    pub seed: u64,
    pub model: ModelSpec,
    pub dataset: DatasetSpec,
    pub inner: InnerSpec,
    pub outer: OuterSpec,
    pub round: RoundSpec,
    /// How deltas are encoded on the wire.
    pub codec: Codec,
    /// Error feedback of lossy codecs: the share of last round's unsent residual
    /// carried into the next delta (1 = classic error feedback, 0 = none).
    pub feedback_decay: f64,
    /// How a round's deltas are combined.
    pub aggregation: AggregationRule,
    /// A private swarm's members: ed25519 public keys as 64 hex digits (what
    /// `starling` logs as a node's key). Deltas signed by any other key are
    /// refused and connections from other peers closed. Absent: a public run.
    /// Left out of the TOML and of the run id hash when absent, so specs written
    /// before this field keep their run id; the order of the keys is part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_keys: Option<Vec<String>>,
    /// Initial weights from a safetensors file instead of the seeded init; the
    /// file's hash is part of the spec, so every node starts from the same weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
    /// A private network's pre-shared key, by its fingerprint (32 hex digits, as
    /// libp2p's pnet computes it): a node refuses to run this spec without the
    /// key it names. The key itself never goes into the spec. Absent: no key;
    /// left out of the TOML and of the run id hash then, like `allowed_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_key_fingerprint: Option<String>,
    /// Differential privacy of each node's contribution (see [`crate::privacy`]);
    /// absent: no privacy. Left out of the TOML and run id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacySpec>,
}

/// A safetensors file of initial weights and the BLAKE3 hash (hex) of its bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    pub path: String,
    pub blake3: String,
}

/// The data each node trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// `synthetic` (the built-in seeded task), `idx:DIR`, `csv:FILE` or `text:PATH`.
    /// A node's `--dataset` may point at its own local copy instead.
    pub kind: DatasetKind,
    /// Training samples in each node's own shard (for files: at most this many).
    pub samples_per_node: usize,
    /// Held-out evaluation samples, the same for every node.
    pub eval_samples: usize,
    /// How the training data is split across nodes.
    #[serde(default)]
    pub partition: Partition,
}

/// The inner (local) optimizer: AdamW (or SGD with momentum) for `steps` steps per round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InnerSpec {
    /// H, the local steps between two merges.
    pub steps: u32,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// `adamw` (when absent) or `sgd` (heavy-ball momentum, what DP-SGD
    /// trains best with). Left out of the TOML and run id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<InnerOptimizer>,
    /// SGD's momentum, in [0, 1) (0.9 when absent); only with `optimizer = "sgd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
}

/// The rule of the inner optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerOptimizer {
    /// AdamW with candle's defaults (β = 0.9, 0.999; ε = 1e-8).
    #[default]
    Adamw,
    /// SGD with heavy-ball momentum: `m ← μ·m + g`, `θ ← θ − lr·m`.
    Sgd,
}

impl InnerSpec {
    /// SGD's momentum μ (0.9 when the spec leaves it out).
    pub fn sgd_momentum(&self) -> f64 {
        self.momentum.unwrap_or(0.9)
    }
}

/// Round timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSpec {
    /// How long a node waits for peers' deltas after publishing its own.
    pub deadline_ms: u64,
    /// Fraction of recently active nodes (self included) whose deltas close a round early.
    pub quorum: f64,
}

/// The error feedback's decay β of the built-in spec: tuned on the built-in
/// task with top-k codecs (dense ignores it). With `sparse:16/4096+2bit`
/// there, 0.8 reaches 75.2 % after 20 rounds and 0.5 69.3 %.
pub const DEFAULT_FEEDBACK_DECAY: f64 = 0.8;

/// The feedback decay that suits `codec` on `model`. A language model under
/// the chunked sparse codec and SparseLoCo's rule keeps less of what waits:
/// on `lm-small` (`sparse:32/4096+2bit`, lr 5, 8 rounds, seeds 1, 2 and 3,
/// `bench/lm_sweep.py`) β 0.5 ends 1.25, 2.71 and 1.77 % above dense's
/// held-out loss, β 0.8 3.9, 3.38 and 2.70 %. Under `lowrank` it keeps almost
/// everything: over 20 rounds on `lm-small` (`lowrank:8+4bit` at lr 1, seed 1,
/// every matrix at rank 8) β 0.9 ends 1.45 % above dense, 0.95 1.13 % and 0.99
/// 0.88 %: what the nodes share adds up round after round until it is among
/// each node's top directions, where a faster decay lets it fade first.
pub fn suited_feedback_decay(codec: Codec, model: &ModelSpec) -> f64 {
    match codec {
        Codec::Sparse { .. } if model.is_language_model() => 0.5,
        Codec::LowRank { .. } if model.is_language_model() => 0.99,
        _ => DEFAULT_FEEDBACK_DECAY,
    }
}

impl RunSpec {
    /// The default public run on the built-in task.
    pub fn builtin() -> Self {
        Self {
            name: "starling-builtin".into(),
            seed: 7,
            model: ModelSpec::mlp(vec![32, 128, 128, 10]),
            dataset: DatasetSpec {
                kind: DatasetKind::Synthetic,
                samples_per_node: 4096,
                eval_samples: 4096,
                partition: Partition::Iid,
            },
            inner: InnerSpec {
                steps: 50,
                batch_size: 64,
                lr: 2e-3,
                weight_decay: 0.0,
                optimizer: None,
                momentum: None,
            },
            outer: OuterSpec::for_codec(Codec::Dense),
            round: RoundSpec { deadline_ms: 30_000, quorum: 1.0 },
            codec: Codec::Dense,
            feedback_decay: DEFAULT_FEEDBACK_DECAY,
            aggregation: AggregationRule::default(),
            allowed_keys: None,
            init: None,
            swarm_key_fingerprint: None,
            privacy: None,
        }
    }

    /// The built-in run with another codec, and the outer step that suits it.
    pub fn builtin_with_codec(codec: Codec) -> Self {
        Self::builtin().with_codec(codec)
    }

    /// This spec with another codec and the outer step and feedback decay
    /// that suit it on this spec's model (what `starling spec new --codec`
    /// writes).
    pub fn with_codec(self, codec: Codec) -> Self {
        let feedback_decay = suited_feedback_decay(codec, &self.model);
        Self { codec, outer: OuterSpec::for_codec(codec), feedback_decay, ..self }
    }

    /// Parses and validates a spec from TOML.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunSpec always serializes to TOML")
    }

    /// The run id: a domain-separated BLAKE3 hash of the spec's canonical bincode
    /// encoding (not of its TOML, whose formatting is free).
    pub fn run_id(&self) -> RunId {
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 run spec v1");
        h.update(&crate::wire::primitives::encode(self));
        RunId(*h.finalize().as_bytes())
    }

    /// What every delta of this run must satisfy ([`crate::SignedDelta::validate`]):
    /// this run, its codec and model, and at most `inner.steps × inner.batch_size`
    /// samples, all one node can train in a round.
    pub fn delta_rules(&self) -> crate::delta::DeltaRules {
        let max_samples = u64::from(self.inner.steps).saturating_mul(self.inner.batch_size as u64);
        crate::delta::DeltaRules::new(self.run_id(), self.codec, self.param_count())
            .with_max_samples(max_samples)
    }

    /// The keys of a private swarm, parsed; `None` for a public run.
    pub fn allowed(&self) -> Option<BTreeSet<PublicKey>> {
        let keys = self.allowed_keys.as_ref()?;
        Some(keys.iter().filter_map(|k| PublicKey::from_hex(k).ok()).collect())
    }

    /// Whether `key` may take part: any key in a public run, a listed key in a private one.
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.allowed_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| PublicKey::from_hex(k).as_ref() == Ok(key)))
    }

    /// Number of parameters of the model (weights and biases of every layer).
    pub fn param_count(&self) -> usize {
        self.model.param_count()
    }

    /// The largest encoded delta a node accepts in this run, with room for the header.
    pub fn max_delta_bytes(&self) -> usize {
        self.codec.max_payload_len(self.param_count()) + 1024
    }

    /// The largest encoded model state, with room for the header.
    pub fn max_state_bytes(&self) -> usize {
        self.param_count() * 8 + crate::state_file::MAX_HEADER_BYTES
    }

    /// The largest sync reply: a state and the deltas of one round.
    pub fn max_sync_reply_bytes(&self) -> usize {
        self.max_state_bytes() + crate::snapshot::MAX_SYNC_DELTAS * self.max_delta_bytes()
    }

    /// Checks every field; the error names the field to fix.
    pub fn validate(&self) -> Result<(), SpecError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), SpecError> {
            Err(SpecError::Invalid { field, reason: reason.into() })
        }
        if let Err((field, reason)) = self.model.validate() {
            return bad(field, reason);
        }
        if let Partition::Dirichlet(alpha) = self.dataset.partition {
            if !(alpha.is_finite() && alpha > 0.0) {
                return bad("dataset.partition", "dirichlet α must be a positive number");
            }
        }
        if let Some(init) = &self.init {
            if init.blake3.len() != 64 || !init.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("init.blake3", "must be the 64 hex digits of the file's BLAKE3 hash");
            }
        }
        if self.dataset.samples_per_node == 0 {
            return bad("dataset.samples_per_node", "must be at least 1");
        }
        if self.dataset.eval_samples == 0 {
            return bad("dataset.eval_samples", "must be at least 1");
        }
        if self.inner.steps == 0 {
            return bad("inner.steps", "must be at least 1");
        }
        if self.inner.batch_size == 0 {
            return bad("inner.batch_size", "must be at least 1");
        }
        if !(self.inner.lr.is_finite() && self.inner.lr > 0.0) {
            return bad("inner.lr", "must be a positive number");
        }
        if !(self.inner.weight_decay.is_finite() && self.inner.weight_decay >= 0.0) {
            return bad("inner.weight_decay", "must be zero or positive");
        }
        match (self.inner.optimizer.unwrap_or_default(), self.inner.momentum) {
            (InnerOptimizer::Adamw, Some(_)) => {
                return bad("inner.momentum", "is SGD's; set inner.optimizer = \"sgd\" or remove it");
            }
            (InnerOptimizer::Sgd, Some(m)) if !(0.0..1.0).contains(&m) => {
                return bad("inner.momentum", "must be in [0, 1)");
            }
            _ => {}
        }
        if !(self.outer.lr.is_finite() && self.outer.lr > 0.0) {
            return bad("outer.lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.outer.momentum) {
            return bad("outer.momentum", "must be in [0, 1)");
        }
        if self.outer.rule == OuterRule::Sparseloco {
            if self.outer.momentum != 0.0 {
                return bad(
                    "outer.momentum",
                    "must be 0 with rule = \"sparseloco\" (error feedback takes the place of outer \
                     momentum; its decay is feedback_decay): remove it, or use rule = \"momentum\"",
                );
            }
            if self.outer.nesterov {
                return bad(
                    "outer.nesterov",
                    "must be false with rule = \"sparseloco\", which has no outer momentum: remove it",
                );
            }
        }
        if !(0.0..=1.0).contains(&self.feedback_decay) {
            return bad("feedback_decay", "must be in [0, 1]");
        }
        if self.round.deadline_ms == 0 {
            return bad("round.deadline_ms", "must be at least 1");
        }
        if !(self.round.quorum > 0.0 && self.round.quorum <= 1.0) {
            return bad("round.quorum", "must be in (0, 1]");
        }
        if let Some(privacy) = &self.privacy {
            if let Err((field, reason)) = privacy.validate() {
                return bad(field, reason);
            }
        }
        if let Some(keys) = &self.allowed_keys {
            if keys.is_empty() {
                return bad("allowed_keys", "lists no key; remove it for a public run");
            }
            for key in keys {
                if let Err(reason) = PublicKey::from_hex(key) {
                    return bad("allowed_keys", reason);
                }
            }
        }
        if let Some(fingerprint) = &self.swarm_key_fingerprint {
            if fingerprint.len() != 32 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(
                    "swarm_key_fingerprint",
                    format!(
                        "{fingerprint:?} is not 32 hex digits (write it with `starling spec new --private`)"
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_lowrank_codecs_on_a_language_model_get_their_own_feedback_decay() {
        let sparse: Codec = "sparse:32/4096+2bit".parse().unwrap();
        let topk: Codec = "topk:0.01+int8".parse().unwrap();
        assert_eq!(RunSpec::builtin_with_codec(sparse).feedback_decay, DEFAULT_FEEDBACK_DECAY);
        let lm =
            RunSpec { model: ModelSpec::Gpt(GptSpec::preset("lm-small").unwrap()), ..RunSpec::builtin() };
        assert_eq!(lm.clone().with_codec(sparse).feedback_decay, 0.5);
        assert_eq!(lm.clone().with_codec(sparse).with_codec(topk).feedback_decay, DEFAULT_FEEDBACK_DECAY);
        let lowrank: Codec = "lowrank:4".parse().unwrap();
        let spec = lm.with_codec(lowrank);
        assert_eq!((spec.feedback_decay, spec.outer.rule, spec.outer.lr), (0.99, OuterRule::Sparseloco, 1.0));
        assert_eq!(RunSpec::builtin_with_codec(lowrank).feedback_decay, DEFAULT_FEEDBACK_DECAY);
    }

    #[test]
    fn builtin_spec_round_trips_through_toml_with_the_same_id() {
        let spec = RunSpec::builtin();
        let back = RunSpec::from_toml(&spec.to_toml()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.run_id(), spec.run_id());
    }

    #[test]
    fn any_change_changes_the_run_id() {
        let a = RunSpec::builtin();
        let mut b = a.clone();
        b.seed += 1;
        assert_ne!(a.run_id(), b.run_id());
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut spec = RunSpec::builtin();
        spec.round.quorum = 0.0;
        let err = RunSpec::from_toml(&spec.to_toml()).unwrap_err().to_string();
        assert!(err.contains("round.quorum"), "{err}");
    }

    #[test]
    fn the_inner_optimizer_is_adamw_unless_named_and_momentum_is_sgds() {
        let adamw = RunSpec::builtin();
        assert!(!adamw.to_toml().contains("optimizer"), "left out when absent");
        let text = adamw.to_toml().replace("[inner]\n", "[inner]\noptimizer = \"sgd\"\nmomentum = 0.5\n");
        let sgd = RunSpec::from_toml(&text).unwrap();
        assert_eq!((sgd.inner.optimizer, sgd.inner.sgd_momentum()), (Some(InnerOptimizer::Sgd), 0.5));
        assert_ne!(sgd.run_id(), adamw.run_id());
        let err = RunSpec::from_toml(&text.replace("optimizer = \"sgd\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("inner.momentum") && err.contains("sgd"), "{err}");
        let err =
            RunSpec::from_toml(&text.replace("momentum = 0.5", "momentum = 1.0")).unwrap_err().to_string();
        assert!(err.contains("inner.momentum"), "{err}");
    }

    #[test]
    fn the_sparseloco_rule_is_named_in_the_outer_section_and_checked() {
        let momentum = RunSpec::builtin();
        assert!(!momentum.to_toml().contains("rule"), "the default rule is left out");
        let text = momentum.to_toml().replace(
            "[outer]\nlr = 0.7\nmomentum = 0.9\nnesterov = true\n",
            "[outer]\nrule = \"sparseloco\"\nlr = 1.0\n",
        );
        let spec = RunSpec::from_toml(&text).unwrap();
        assert_eq!(
            spec.outer,
            OuterSpec { rule: OuterRule::Sparseloco, lr: 1.0, momentum: 0.0, nesterov: false }
        );
        assert_ne!(spec.run_id(), momentum.run_id());
        let back = RunSpec::from_toml(&spec.to_toml()).unwrap();
        assert_eq!((back.run_id(), back.outer.rule), (spec.run_id(), OuterRule::Sparseloco));
        let err = RunSpec::from_toml(&text.replace("lr = 1.0\n", "lr = 1.0\nmomentum = 0.5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outer.momentum") && err.contains("sparseloco"), "{err}");
        let err = RunSpec::from_toml(&text.replace("lr = 1.0\n", "lr = 1.0\nnesterov = true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outer.nesterov"), "{err}");
        let err = RunSpec::from_toml(&text.replace("sparseloco", "adam")).unwrap_err().to_string();
        assert!(err.contains("momentum") && err.contains("sparseloco"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = RunSpec::builtin().to_toml() + "\nsurprise = 1\n";
        assert!(RunSpec::from_toml(&text).is_err());
    }

    #[test]
    fn allowed_keys_make_a_private_run_and_old_specs_keep_their_id() {
        let public = RunSpec::builtin();
        assert!(!public.to_toml().contains("allowed_keys"));
        let key = PublicKey::of(&ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let mut private = public.clone();
        private.allowed_keys = Some(vec![key.to_string()]);
        let back = RunSpec::from_toml(&private.to_toml()).unwrap();
        assert_eq!(back, private);
        assert_ne!(back.run_id(), public.run_id());
        assert!(back.allows(&key) && public.allows(&key));
        assert!(!back.allows(&PublicKey::of(&ed25519_dalek::SigningKey::from_bytes(&[4; 32]))));
        // The id of a public spec is the hash it had before the field existed.
        let mut h = blake3::Hasher::new_derive_key("starling 2026-11 run spec v1");
        h.update(&crate::wire::primitives::encode(&(
            &public.name,
            public.seed,
            &public.model,
            &public.dataset,
            &public.inner,
            &public.outer,
            &public.round,
            public.codec,
            public.feedback_decay,
            &public.aggregation,
        )));
        assert_eq!(public.run_id(), RunId(*h.finalize().as_bytes()));
        private.allowed_keys = Some(vec!["abc".into()]);
        let err = RunSpec::from_toml(&private.to_toml()).unwrap_err().to_string();
        assert!(err.contains("allowed_keys") && err.contains("abc"), "{err}");
    }

    #[test]
    fn a_swarm_key_fingerprint_changes_the_run_id_and_is_checked() {
        let public = RunSpec::builtin();
        assert!(!public.to_toml().contains("swarm_key"));
        let mut private = public.clone();
        private.swarm_key_fingerprint = Some("0123456789abcdef0123456789abcdef".into());
        let back = RunSpec::from_toml(&private.to_toml()).unwrap();
        assert_eq!(back, private);
        assert_ne!(back.run_id(), public.run_id());
        private.swarm_key_fingerprint = Some("xyz".into());
        let err = RunSpec::from_toml(&private.to_toml()).unwrap_err().to_string();
        assert!(err.contains("swarm_key_fingerprint") && err.contains("xyz"), "{err}");
    }

    #[test]
    fn param_count_matches_the_mlp() {
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::mlp(vec![2, 3, 4]);
        assert_eq!(spec.param_count(), 2 * 3 + 3 + 3 * 4 + 4);
    }

    #[test]
    fn older_specs_without_kind_or_partition_still_parse() {
        let text = RunSpec::builtin().to_toml();
        assert!(text.contains("kind = \"mlp\""), "{text}");
        let old = text.replace("kind = \"mlp\"\n", "").replace("partition = \"iid\"\n", "");
        assert_eq!(RunSpec::from_toml(&old).unwrap(), RunSpec::builtin());
    }

    #[test]
    fn partitions_and_data_sources_round_trip() {
        let mut spec = RunSpec::builtin();
        spec.dataset.partition = Partition::Dirichlet(0.1);
        spec.dataset.kind = "idx:/data/glyphs".parse().unwrap();
        let back = RunSpec::from_toml(&spec.to_toml()).unwrap();
        assert_eq!(back, spec);
        spec.dataset.partition = Partition::Dirichlet(0.0);
        assert!(spec.validate().unwrap_err().to_string().contains("dataset.partition"));
    }
}
