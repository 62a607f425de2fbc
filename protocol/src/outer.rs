//! The outer optimizer: how the round's aggregated pseudo-gradient moves the
//! shared parameters. Two rules, named in the spec as `outer.rule`:
//! `momentum`, SGD with (Nesterov) momentum as in DiLoCo, and `sparseloco`,
//! where each node's error feedback takes the place of outer momentum, as in
//! SparseLoCo (Templar).
//!
//! Under `sparseloco` a node keeps an accumulator `e` (the codec's residual):
//! `e ← β·e + Δ`, it sends the compressed top of `e`, subtracts exactly what it
//! sent (the decoded payload), and every node steps by the aggregate of what
//! was sent: `θ ← θ − lr·mean(sent)`, with no momentum. The first three steps
//! are [`crate::Codec::encode_with_feedback`] with β = the spec's
//! `feedback_decay`; the last is [`OuterOptimizer::step`].
//!
//! Plain Rust over `f32` slices in a fixed order, so every node that applies
//! the same averaged delta to the same state gets bit-identical parameters.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;

/// The outer optimizer as a spec names it: SGD with (Nesterov) momentum on
/// the aggregated pseudo-gradient, or the SparseLoCo rule, in which error
/// feedback (decay `feedback_decay`) takes the place of momentum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterSpec {
    /// `momentum` (when absent) or `sparseloco`. Left out of the TOML and of
    /// the run id when it is `momentum`, so specs written before it keep their id.
    #[serde(default, skip_serializing_if = "OuterRule::is_default")]
    pub rule: OuterRule,
    pub lr: f64,
    /// The momentum rule's μ, in [0, 1); 0 under `sparseloco` (which may leave it out).
    #[serde(default)]
    pub momentum: f64,
    /// Nesterov momentum; false under `sparseloco` (which may leave it out).
    #[serde(default)]
    pub nesterov: bool,
}

impl OuterSpec {
    /// The outer step that suits deltas of `codec` on the built-in task (measured
    /// with `starling bench codecs`): Nesterov 0.7 / 0.9 for dense and quantized
    /// deltas; for top-k, a larger step with less momentum. A top-k delta with
    /// error feedback moves each coordinate in rare bursts, and the feedback
    /// decay lets part of what waits fade, so less of the pseudo-gradient arrives
    /// per round than with dense deltas; the residual already delays and smooths
    /// like momentum, and outer momentum on top of it overshoots. Chunked sparse
    /// deltas take the SparseLoCo rule, with no outer momentum at all and a
    /// larger step: on the built-in task it reached the same accuracy as top-k's
    /// step at a lower held-out loss.
    ///
    /// Low-rank deltas carry most of each matrix's change every round, as
    /// dense ones do, and take SparseLoCo's rule at lr 1 (plain averaging of
    /// what was sent): on `lm-small`, rank 4 with β 0.5 ended 2.5 % above
    /// dense's held-out loss at lr 1.5 and 1.0 % at lr 1 (a trial build that
    /// sent the factors as `f32`).
    pub fn for_codec(codec: Codec) -> Self {
        match codec {
            Codec::TopK { .. } => {
                OuterSpec { rule: OuterRule::Momentum, lr: 3.0, momentum: 0.5, nesterov: true }
            }
            Codec::Sparse { .. } => {
                OuterSpec { rule: OuterRule::Sparseloco, lr: 5.0, momentum: 0.0, nesterov: false }
            }
            Codec::LowRank { .. } => {
                OuterSpec { rule: OuterRule::Sparseloco, lr: 1.0, momentum: 0.0, nesterov: false }
            }
            Codec::Dense | Codec::F16 | Codec::Int8 => {
                OuterSpec { rule: OuterRule::Momentum, lr: 0.7, momentum: 0.9, nesterov: true }
            }
        }
    }
}

/// How the outer step uses the aggregated pseudo-gradient (`outer.rule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OuterRule {
    /// SGD with momentum `outer.momentum`, Nesterov when `outer.nesterov`.
    #[default]
    Momentum,
    /// No outer momentum: `θ ← θ − lr·aggregate`. The decayed error feedback of
    /// each node's codec (the spec's `feedback_decay`, β) does what momentum
    /// would: what a round did not send waits in the accumulator and is sent
    /// later, while stale directions fade by β per round.
    Sparseloco,
}

impl OuterRule {
    /// Whether this is the default rule (left out of the TOML and of the run id).
    pub fn is_default(&self) -> bool {
        *self == OuterRule::default()
    }
}

impl fmt::Display for OuterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OuterRule::Momentum => "momentum",
            OuterRule::Sparseloco => "sparseloco",
        })
    }
}

/// Under [`OuterRule::Sparseloco`], the decay of the running sum of outer
/// steps kept in the state's momentum buffer. The step never reads it; it is
/// the swarm's direction so far, which centered clipping screens deltas
/// against ([`crate::aggregate::robust::screen`]), so robust aggregation
/// works the same under either rule.
pub const SCREEN_REFERENCE_DECAY: f32 = 0.9;

/// The outer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OuterOptimizer {
    pub rule: OuterRule,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
}

impl From<&OuterSpec> for OuterOptimizer {
    fn from(spec: &OuterSpec) -> Self {
        Self { rule: spec.rule, lr: spec.lr as f32, momentum: spec.momentum as f32, nesterov: spec.nesterov }
    }
}

impl OuterOptimizer {
    /// One step on the aggregated pseudo-gradient `grad` (θ_r − mean θ_i, or
    /// the aggregate of what the nodes sent).
    ///
    /// `momentum`: `params -= lr * update`, where `update` is `grad + μ·m`
    /// (Nesterov) or `m` (heavy ball), with `m ← μ·m + grad`.
    ///
    /// `sparseloco`: `params -= lr * grad`; `m ← 0.9·m + grad` is only kept as
    /// the screening reference ([`SCREEN_REFERENCE_DECAY`]).
    pub fn step(&self, params: &mut [f32], momentum: &mut [f32], grad: &[f32]) {
        assert_eq!(params.len(), grad.len(), "pseudo-gradient length must match the model");
        assert_eq!(params.len(), momentum.len(), "momentum length must match the model");
        let lr = self.lr;
        match self.rule {
            OuterRule::Momentum => {
                let mu = self.momentum;
                for ((p, m), &g) in params.iter_mut().zip(momentum.iter_mut()).zip(grad) {
                    *m = mu * *m + g;
                    let update = if self.nesterov { g + mu * *m } else { *m };
                    *p -= lr * update;
                }
            }
            OuterRule::Sparseloco => {
                for ((p, m), &g) in params.iter_mut().zip(momentum.iter_mut()).zip(grad) {
                    *m = SCREEN_REFERENCE_DECAY * *m + g;
                    *p -= lr * g;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_one_without_momentum_is_plain_averaging() {
        let opt = OuterOptimizer { rule: OuterRule::Momentum, lr: 1.0, momentum: 0.0, nesterov: false };
        let mut params = vec![1.0, 2.0];
        let mut m = vec![0.0; 2];
        // mean of local models is [0.5, 2.5]; pseudo-gradient θ − mean = [0.5, −0.5]
        opt.step(&mut params, &mut m, &[0.5, -0.5]);
        assert_eq!(params, vec![0.5, 2.5]);
    }

    #[test]
    fn nesterov_looks_ahead() {
        let opt = OuterOptimizer { rule: OuterRule::Momentum, lr: 1.0, momentum: 0.5, nesterov: true };
        let mut params = vec![0.0];
        let mut m = vec![0.0];
        opt.step(&mut params, &mut m, &[1.0]);
        assert_eq!(m, vec![1.0]);
        assert_eq!(params, vec![-1.5]);
    }

    #[test]
    fn sparseloco_steps_by_the_aggregate_alone_with_no_momentum() {
        let opt = OuterOptimizer { rule: OuterRule::Sparseloco, lr: 2.0, momentum: 0.0, nesterov: false };
        let mut params = vec![1.0, 1.0];
        let mut m = vec![0.0; 2];
        opt.step(&mut params, &mut m, &[0.5, -0.25]);
        assert_eq!(params, vec![0.0, 1.5]);
        // A round that brings nothing moves nothing: no momentum carries on.
        opt.step(&mut params, &mut m, &[0.0, 0.0]);
        assert_eq!(params, vec![0.0, 1.5]);
        // The momentum buffer still tracks the swarm's direction for screening.
        assert_eq!(m, vec![0.5 * SCREEN_REFERENCE_DECAY, -0.25 * SCREEN_REFERENCE_DECAY]);
    }

    /// One SparseLoCo round on two nodes, with a lossy codec: each sends the
    /// top of its accumulator, keeps exactly the rest, and the parameters move
    /// by lr × the mean of what was sent.
    #[test]
    fn a_sparseloco_round_sends_the_top_of_the_accumulator_and_keeps_the_rest() {
        use crate::codec::Codec;
        let n = 64;
        let beta = 0.95f32;
        let lr = 1.5f32;
        let opt = OuterOptimizer { rule: OuterRule::Sparseloco, lr, momentum: 0.0, nesterov: false };
        let wave = |seed: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect() };
        for codec in [Codec::Sparse { k: 4, chunk: 16, bits: 2 }, Codec::TopK { ppm: 100_000, int8: true }] {
            let deltas = [wave(1.0), wave(2.0)];
            let mut residuals = [wave(3.0), wave(4.0)];
            let before = residuals.clone();
            let mut sent = Vec::new();
            for ((delta, residual), old) in deltas.iter().zip(&mut residuals).zip(&before) {
                let payload = codec.encode_with_feedback(delta, residual, beta);
                let decoded = codec.decode(&payload, n).unwrap();
                assert!(decoded.iter().filter(|v| **v != 0.0).count() <= n / 4, "{codec}: a sparse payload");
                for i in 0..n {
                    let accumulator = beta * old[i] + delta[i];
                    assert!(
                        (residual[i] + decoded[i] - accumulator).abs() <= 1e-6,
                        "{codec}: the accumulator keeps exactly what was not sent, at {i}"
                    );
                }
                sent.push(decoded);
            }
            let mean: Vec<f32> = (0..n).map(|i| 0.5 * (sent[0][i] + sent[1][i])).collect();
            let theta: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let (mut params, mut m) = (theta.clone(), vec![0.0; n]);
            opt.step(&mut params, &mut m, &mean);
            for i in 0..n {
                assert_eq!(params[i], theta[i] - lr * mean[i], "{codec}: coordinate {i}");
            }
        }
    }
}
