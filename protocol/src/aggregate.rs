//! Aggregation rules: how a round's deltas become one pseudo-gradient.
//!
//! Inputs are summed in a canonical order (sorted by sender key), so two nodes
//! that merge the same set of deltas produce bit-identical results. The
//! weighted mean decodes payloads straight into its output; the robust rules
//! (see [`robust`]) decode every delta first, since they compare them.

pub mod robust;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::codec::{Codec, CodecError};
use crate::delta::SignedDelta;
use crate::keys::PublicKey;

/// How a round's deltas are combined, named in the RunSpec as a string:
/// `weighted-mean`, `median`, `trimmed-mean[:TRIM]`, `centered-clip[:RADIUS]`
/// or `geometric-median`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AggregationRule {
    /// Mean of the deltas weighted by their sample counts. Not robust: one
    /// sender can move it anywhere.
    WeightedMean,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise mean after cutting the `trim` fraction (in [0, 0.5)) of
    /// lowest and highest values.
    TrimmedMean { trim: f32 },
    /// Centered clipping from the coordinate-wise median, with radius `radius` ×
    /// the median distance of the inputs to it (see [`robust::centered_clip`]),
    /// after screening out deltas that point against the swarm's outer
    /// momentum (see [`robust::screen`]).
    CenteredClip { radius: f32 },
    /// Geometric median by smoothed Weiszfeld iterations.
    GeometricMedian,
}

impl Default for AggregationRule {
    /// Centered clipping with the radius at the median distance: it costs next
    /// to nothing without attackers and bounds what any minority can do.
    fn default() -> Self {
        AggregationRule::CenteredClip { radius: 1.0 }
    }
}

/// Trim fraction of `trimmed-mean` when none is given.
const DEFAULT_TRIM: f32 = 0.2;

impl AggregationRule {
    /// One of each rule, with default parameters (for tables and tests).
    pub fn examples() -> Vec<AggregationRule> {
        vec![
            AggregationRule::WeightedMean,
            AggregationRule::Median,
            AggregationRule::TrimmedMean { trim: DEFAULT_TRIM },
            AggregationRule::CenteredClip { radius: 1.0 },
            AggregationRule::GeometricMedian,
        ]
    }

    /// Whether the rule bounds what a minority of senders can do.
    pub fn is_robust(self) -> bool {
        self != AggregationRule::WeightedMean
    }
}

impl fmt::Display for AggregationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregationRule::WeightedMean => f.write_str("weighted-mean"),
            AggregationRule::Median => f.write_str("median"),
            AggregationRule::TrimmedMean { trim } => write!(f, "trimmed-mean:{trim}"),
            AggregationRule::CenteredClip { radius } => write!(f, "centered-clip:{radius}"),
            AggregationRule::GeometricMedian => f.write_str("geometric-median"),
        }
    }
}

/// An aggregation rule name that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown aggregation rule `{0}`: expected weighted-mean, median, trimmed-mean[:TRIM] (TRIM in [0, 0.5)), \
     centered-clip[:RADIUS] (RADIUS > 0) or geometric-median"
)]
pub struct UnknownRule(pub String);

impl FromStr for AggregationRule {
    type Err = UnknownRule;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownRule(s.to_string());
        let (name, arg) = match s.split_once(':') {
            Some((name, arg)) => (name, Some(arg.parse::<f32>().map_err(|_| unknown())?)),
            None => (s, None),
        };
        let rule = match (name, arg) {
            ("weighted-mean" | "mean", None) => AggregationRule::WeightedMean,
            ("median", None) => AggregationRule::Median,
            ("geometric-median", None) => AggregationRule::GeometricMedian,
            ("trimmed-mean", trim) => {
                let trim = trim.unwrap_or(DEFAULT_TRIM);
                if !(0.0..0.5).contains(&trim) {
                    return Err(unknown());
                }
                AggregationRule::TrimmedMean { trim }
            }
            ("centered-clip", radius) => {
                let radius = radius.unwrap_or(1.0);
                if !(radius > 0.0 && radius.is_finite()) {
                    return Err(unknown());
                }
                AggregationRule::CenteredClip { radius }
            }
            _ => return Err(unknown()),
        };
        Ok(rule)
    }
}

impl TryFrom<String> for AggregationRule {
    type Error = UnknownRule;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AggregationRule> for String {
    fn from(rule: AggregationRule) -> String {
        rule.to_string()
    }
}

/// One decoded delta as input to aggregation.
#[derive(Clone, Debug)]
pub struct Contribution {
    pub sender: PublicKey,
    pub samples: u64,
    pub values: Vec<f32>,
}

/// Why a set of contributions could not be aggregated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AggregateError {
    #[error("no contributions to aggregate")]
    Empty,
    #[error("contribution from {sender} has {got} values, expected {expected}")]
    Length { sender: String, got: usize, expected: usize },
    #[error("two contributions from the same sender {0}")]
    DuplicateSender(String),
    #[error("delta from {sender} does not decode: {source}")]
    Payload { sender: String, source: CodecError },
}

impl AggregationRule {
    /// Aggregates a round's deltas straight from their payloads, in sender order.
    /// The weighted mean decodes each payload directly into the result (one pass
    /// per payload, sparse payloads touching only their coordinates), so a round
    /// densifies nothing but its one output vector.
    pub fn aggregate_deltas(
        self,
        deltas: &[SignedDelta],
        codec: Codec,
        params: usize,
    ) -> Result<Vec<f32>, AggregateError> {
        let mut out = vec![0.0f32; params];
        self.aggregate_deltas_into(deltas, codec, &mut out)?;
        Ok(out)
    }

    /// [`AggregationRule::aggregate_deltas`] into a buffer the caller keeps from
    /// round to round (it is overwritten): a fresh multi-megabyte vector every
    /// round costs a page fault per 4 KiB touched, which for sparse payloads is
    /// most of the merge.
    pub fn aggregate_deltas_into(
        self,
        deltas: &[SignedDelta],
        codec: Codec,
        out: &mut [f32],
    ) -> Result<(), AggregateError> {
        self.aggregate_deltas_with(deltas, codec, None, out)
    }

    /// [`Self::aggregate_deltas_into`] with the node's outer momentum as the
    /// reference direction of centered clipping's screening. Nodes that agree
    /// hold the same momentum, so they still merge bit-identically.
    pub fn aggregate_deltas_with(
        self,
        deltas: &[SignedDelta],
        codec: Codec,
        reference: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), AggregateError> {
        if deltas.is_empty() {
            return Err(AggregateError::Empty);
        }
        let params = out.len();
        let mut sorted: Vec<&SignedDelta> = deltas.iter().collect();
        sorted.sort_by_key(|d| d.header.sender);
        for pair in sorted.windows(2) {
            if pair[0].header.sender == pair[1].header.sender {
                return Err(AggregateError::DuplicateSender(pair[0].header.sender.short()));
            }
        }
        let weighted = |weight: &dyn Fn(&SignedDelta) -> f32, out: &mut [f32]| {
            let inputs: Vec<(&[u8], f32)> = sorted.iter().map(|d| (&d.payload[..], weight(d))).collect();
            codec.weighted_sum(&inputs, params, out).map_err(|(i, source)| AggregateError::Payload {
                sender: sorted[i].header.sender.short(),
                source,
            })
        };
        if self == AggregationRule::WeightedMean {
            let total: f64 = sorted.iter().map(|d| d.header.samples as f64).sum();
            return weighted(&|d| (d.header.samples as f64 / total) as f32, out);
        }
        if sorted.len() <= 2 {
            // Every robust rule of one or two inputs is their plain mean (the
            // median, the trimmed mean and centered clipping of two points are
            // their midpoint, and Weiszfeld started there stays), so decode
            // straight into the output instead of densifying each delta.
            let weight = 1.0 / sorted.len() as f32;
            return weighted(&|_| weight, out);
        }
        out.fill(0.0);
        let inputs = sorted
            .iter()
            .map(|d| {
                let values = codec
                    .decode(&d.payload, params)
                    .map_err(|source| AggregateError::Payload { sender: d.header.sender.short(), source })?;
                Ok(Contribution { sender: d.header.sender, samples: d.header.samples, values })
            })
            .collect::<Result<Vec<_>, AggregateError>>()?;
        match (self, reference) {
            (AggregationRule::CenteredClip { .. }, Some(reference)) => {
                let kept = robust::screen(inputs, reference);
                self.apply(&kept, out);
            }
            _ => self.apply(&inputs, out),
        }
        Ok(())
    }

    /// Runs the rule over validated inputs sorted by sender.
    fn apply(self, inputs: &[Contribution], out: &mut [f32]) {
        match self {
            AggregationRule::WeightedMean => out.copy_from_slice(&weighted_mean(inputs, out.len())),
            AggregationRule::Median => robust::median(inputs, out),
            AggregationRule::TrimmedMean { trim } => robust::trimmed_mean(inputs, trim, out),
            AggregationRule::CenteredClip { radius } => robust::centered_clip(inputs, radius, out),
            AggregationRule::GeometricMedian => robust::geometric_median(inputs, out),
        }
    }

    /// Aggregates contributions for a model of `params` parameters.
    pub fn aggregate(self, inputs: &mut [Contribution], params: usize) -> Result<Vec<f32>, AggregateError> {
        if inputs.is_empty() {
            return Err(AggregateError::Empty);
        }
        inputs.sort_by_key(|c| c.sender);
        for pair in inputs.windows(2) {
            if pair[0].sender == pair[1].sender {
                return Err(AggregateError::DuplicateSender(pair[0].sender.short()));
            }
        }
        for c in inputs.iter() {
            if c.values.len() != params {
                return Err(AggregateError::Length {
                    sender: c.sender.short(),
                    got: c.values.len(),
                    expected: params,
                });
            }
        }
        let mut out = vec![0.0f32; params];
        self.apply(inputs, &mut out);
        Ok(out)
    }
}

/// Σ wᵢ·xᵢ with wᵢ = samplesᵢ / Σ samples, accumulated in input order.
fn weighted_mean(inputs: &[Contribution], params: usize) -> Vec<f32> {
    let total: f64 = inputs.iter().map(|c| c.samples as f64).sum();
    let mut out = vec![0.0f32; params];
    for c in inputs {
        let w = (c.samples as f64 / total) as f32;
        for (o, &x) in out.iter_mut().zip(&c.values) {
            *o += w * x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: u8, samples: u64, values: Vec<f32>) -> Contribution {
        Contribution { sender: PublicKey([id; 32]), samples, values }
    }

    #[test]
    fn weights_by_samples() {
        let mut inputs = vec![c(1, 1, vec![0.0, 4.0]), c(2, 3, vec![4.0, 0.0])];
        let out = AggregationRule::WeightedMean.aggregate(&mut inputs, 2).unwrap();
        assert_eq!(out, vec![3.0, 1.0]);
    }

    #[test]
    fn refuses_duplicates_and_wrong_lengths() {
        let mut dup = vec![c(1, 1, vec![0.0]), c(1, 1, vec![1.0])];
        assert!(matches!(
            AggregationRule::WeightedMean.aggregate(&mut dup, 1),
            Err(AggregateError::DuplicateSender(_))
        ));
        let mut short = vec![c(1, 1, vec![0.0])];
        assert!(matches!(
            AggregationRule::WeightedMean.aggregate(&mut short, 2),
            Err(AggregateError::Length { .. })
        ));
        assert_eq!(AggregationRule::WeightedMean.aggregate(&mut [], 2), Err(AggregateError::Empty));
    }

    #[test]
    fn aggregating_payloads_matches_aggregating_decoded_values() {
        use crate::run_id::RunId;
        use ed25519_dalek::SigningKey;
        let rows = [(3u64, vec![1.0f32, -2.0, 0.5]), (1, vec![0.0, 4.0, -1.0]), (4, vec![2.0, 2.0, 2.0])];
        for codec in Codec::examples() {
            let deltas: Vec<SignedDelta> = rows
                .iter()
                .enumerate()
                .map(|(i, (s, v))| {
                    let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
                    SignedDelta::sign(&key, RunId([0; 32]), 0, [0; 32], *s, codec, codec.encode(v))
                })
                .collect();
            let fused = AggregationRule::WeightedMean.aggregate_deltas(&deltas, codec, 3).unwrap();
            let mut inputs: Vec<Contribution> = deltas
                .iter()
                .map(|d| Contribution {
                    sender: d.header.sender,
                    samples: d.header.samples,
                    values: codec.decode(&d.payload, 3).unwrap(),
                })
                .collect();
            let plain = AggregationRule::WeightedMean.aggregate(&mut inputs, 3).unwrap();
            // Same values; int8 may round differently ((w·s)·q against w·(s·q)).
            assert!(
                fused.iter().zip(&plain).all(|(a, b)| (a - b).abs() <= 1e-5),
                "{codec}: {fused:?} {plain:?}"
            );
        }
    }

    #[test]
    fn rule_names_round_trip_and_bad_ones_are_refused() {
        for rule in AggregationRule::examples() {
            assert_eq!(rule.to_string().parse::<AggregationRule>(), Ok(rule));
        }
        assert_eq!("mean".parse(), Ok(AggregationRule::WeightedMean));
        assert_eq!("trimmed-mean:0.1".parse(), Ok(AggregationRule::TrimmedMean { trim: 0.1 }));
        for bad in ["krum", "trimmed-mean:0.5", "centered-clip:0", "centered-clip:x", "median:1"] {
            let err = bad.parse::<AggregationRule>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("centered-clip"), "{err}");
        }
    }

    /// Dense deltas of `rows`, each signed by its own key, with 10 samples.
    fn signed_dense(rows: &[Vec<f32>]) -> Vec<SignedDelta> {
        use crate::run_id::RunId;
        use ed25519_dalek::SigningKey;
        rows.iter()
            .enumerate()
            .map(|(i, v)| {
                let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
                SignedDelta::sign(&key, RunId([0; 32]), 0, [0; 32], 10, Codec::Dense, Codec::Dense.encode(v))
            })
            .collect()
    }

    /// The same deltas decoded, as inputs of the dense path.
    fn decoded(deltas: &[SignedDelta], params: usize) -> Vec<Contribution> {
        deltas
            .iter()
            .map(|d| Contribution {
                sender: d.header.sender,
                samples: d.header.samples,
                values: Codec::Dense.decode(&d.payload, params).unwrap(),
            })
            .collect()
    }

    #[test]
    fn robust_rules_aggregate_payloads_like_decoded_values() {
        let deltas = signed_dense(&[
            vec![1.0, -2.0, 0.5],
            vec![0.0, 4.0, -1.0],
            vec![2.0, 2.0, 2.0],
            vec![90.0, -90.0, 9.0],
        ]);
        for rule in AggregationRule::examples() {
            let fused = rule.aggregate_deltas(&deltas, Codec::Dense, 3).unwrap();
            assert_eq!(fused, rule.aggregate(&mut decoded(&deltas, 3), 3).unwrap(), "{rule}");
        }
    }

    #[test]
    fn robust_rules_of_two_deltas_are_their_mean() {
        let deltas = signed_dense(&[vec![1.0, -2.0, 0.5], vec![3.0, 4.0, -1.0]]);
        for rule in AggregationRule::examples() {
            let mut out = [0.0f32; 3];
            rule.aggregate_deltas_with(&deltas, Codec::Dense, Some(&[1.0, 1.0, 1.0]), &mut out).unwrap();
            let dense = rule.aggregate(&mut decoded(&deltas, 3), 3).unwrap();
            assert!(
                out.iter().zip(&dense).all(|(a, b)| (a - b).abs() <= 1e-6),
                "{rule}: {out:?} vs {dense:?}"
            );
            assert_eq!(out, [2.0, 1.0, -0.25], "{rule}");
        }
    }

    proptest! {
        #[test]
        fn result_does_not_depend_on_arrival_order(
            rows in prop::collection::vec((1u64..1000, prop::collection::vec(-100f32..100.0, 8)), 1..8),
            seed in any::<u64>(),
        ) {
            let mut a: Vec<_> = rows.iter().enumerate().map(|(i, (s, v))| c(i as u8, *s, v.clone())).collect();
            let mut b = a.clone();
            // A deterministic shuffle of the second copy.
            let n = b.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                b.swap(i, j);
            }
            for rule in AggregationRule::examples() {
                let x = rule.aggregate(&mut a, 8).unwrap();
                let y = rule.aggregate(&mut b, 8).unwrap();
                prop_assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
        }

        #[test]
        fn the_mean_lies_within_the_inputs(rows in prop::collection::vec((1u64..1000, -100f32..100.0), 1..8)) {
            let mut inputs: Vec<_> = rows.iter().enumerate().map(|(i, (s, v))| c(i as u8, *s, vec![*v])).collect();
            let lo = rows.iter().map(|r| r.1).fold(f32::INFINITY, f32::min);
            let hi = rows.iter().map(|r| r.1).fold(f32::NEG_INFINITY, f32::max);
            let out = AggregationRule::WeightedMean.aggregate(&mut inputs, 1).unwrap()[0];
            prop_assert!(out >= lo - 1e-3 && out <= hi + 1e-3, "{out} not in [{lo}, {hi}]");
        }
    }
}
