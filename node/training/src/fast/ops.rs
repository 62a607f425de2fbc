//! The element-wise pieces of the hand-written training step: bias and ReLU,
//! softmax cross-entropy with its gradient in one pass, and the inner
//! optimizer over the flat parameter vector. Each follows the candle operation
//! it replaces.

use crate::optim::InnerRule;
use rayon::prelude::*;

use super::matmul::Threads;

/// Floats per task when the optimizer step runs on several threads.
const UPDATE_CHUNK: usize = 16 * 1024;

/// Adds `bias[j]` to every row's column `j` of the row-major `rows × bias.len()` matrix.
pub fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `out = max(x, 0)`.
pub fn relu(x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.max(0.0);
    }
}

/// Keeps `grad` where the ReLU's input was `>= 0`, as candle's backward does
/// (it lets the gradient through at exactly zero).
pub fn relu_backward(pre: &[f32], grad: &mut [f32]) {
    for (g, z) in grad.iter_mut().zip(pre) {
        if *z < 0.0 {
            *g = 0.0;
        }
    }
}

/// `out[j] = Σ_rows x[row, j]` over the row-major `rows × out.len()` matrix.
pub fn sum_rows(x: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for row in x.chunks_exact(out.len()) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Mean cross-entropy of the `labels.len() × classes` logits, and in place of
/// the logits its gradient `(softmax − onehot) / n`.
pub fn softmax_cross_entropy(logits: &mut [f32], labels: &[u32], classes: usize) -> f32 {
    let n = labels.len();
    let scale = 1.0 / n as f32;
    let mut total = 0f64;
    for (row, &y) in logits.chunks_exact_mut(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Taken before exponentiating: exp(z_y − max) may underflow to 0.
        let shifted_y = row[y as usize] - max;
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        // −log softmax_y = log Σ exp(z − max) − (z_y − max)
        total += (sum.ln() - shifted_y) as f64;
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv * scale;
        }
        row[y as usize] -= scale;
    }
    (total / n as f64) as f32
}

/// One chunk of parameters, first moments and gradient, as zipped.
type UpdateChunk<'a> = ((&'a mut [f32], &'a mut [f32]), &'a [f32]);

/// The inner optimizer over one flat vector: the rule of
/// [`crate::optim::FusedOptimizer`], float for float, so both paths update
/// alike given the same gradient.
pub struct FlatOptimizer {
    rule: InnerRule,
    m: Vec<f32>,
    /// Empty under SGD.
    v: Vec<f32>,
    step_t: i32,
}

impl FlatOptimizer {
    pub fn new(len: usize, rule: InnerRule) -> Self {
        Self { v: rule.second_moments(len), rule, m: vec![0.0; len], step_t: 0 }
    }

    /// One step of `theta` along `grad`; element-wise, so the thread count
    /// cannot change the result.
    pub fn step(&mut self, theta: &mut [f32], grad: &[f32], threads: Threads) {
        assert_eq!(theta.len(), self.m.len(), "parameter count changed");
        self.step_t += 1;
        let step = self.rule.step(self.step_t);
        if threads.0 <= 1 || theta.len() <= UPDATE_CHUNK {
            step.apply(theta, &mut self.m, &mut self.v, grad);
            return;
        }
        let chunks = theta
            .par_chunks_mut(UPDATE_CHUNK)
            .zip(self.m.par_chunks_mut(UPDATE_CHUNK))
            .zip(grad.par_chunks(UPDATE_CHUNK));
        if self.v.is_empty() {
            chunks.for_each(|((theta, m), grad): UpdateChunk| step.apply(theta, m, &mut [], grad));
        } else {
            chunks
                .zip(self.v.par_chunks_mut(UPDATE_CHUNK))
                .for_each(|(((theta, m), grad), v): (UpdateChunk, _)| step.apply(theta, m, v, grad));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn cross_entropy_and_its_gradient_match_candle() {
        let (n, c) = (4, 5);
        let z: Vec<f32> = (0..n * c).map(|i| (i as f32 * 1.3).sin() * 3.0).collect();
        let y = [0u32, 4, 2, 2];
        let var = Var::from_slice(&z, (n, c), &Device::Cpu).unwrap();
        let labels = Tensor::new(&y, &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(var.as_tensor(), &labels).unwrap();
        let grads = loss.backward().unwrap();
        let want: Vec<f32> = grads.get(&var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut got = z.clone();
        let value = softmax_cross_entropy(&mut got, &y, c);
        assert!((value - loss.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn chunked_updates_match_one_pass_for_both_rules_and_sgd_keeps_no_second_moments() {
        let len = 2 * UPDATE_CHUNK + 123;
        let theta0: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let grad: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
        let rules = [
            InnerRule::AdamW(candle_nn::ParamsAdamW { lr: 0.01, ..Default::default() }),
            InnerRule::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.01 },
        ];
        for rule in rules {
            let mut one = FlatOptimizer::new(len, rule.clone());
            let mut chunked = FlatOptimizer::new(len, rule.clone());
            let sgd = matches!(rule, InnerRule::Sgd { .. });
            assert_eq!(one.v.is_empty(), sgd, "{rule:?}");
            let (mut a, mut b) = (theta0.clone(), theta0.clone());
            for _ in 0..3 {
                one.step(&mut a, &grad, Threads(1));
                chunked.step(&mut b, &grad, Threads(2));
            }
            assert_eq!(a, b, "{rule:?}");
            assert_ne!(a, theta0, "{rule:?} moved nothing");
        }
    }

    #[test]
    fn a_confidently_wrong_logit_gives_a_large_finite_loss_not_inf() {
        // exp(−200) underflows in f32: the loss must come from the logits, not ln(0).
        let mut z = vec![200.0f32, 0.0];
        let loss = softmax_cross_entropy(&mut z, &[1], 2);
        assert!((loss - 200.0).abs() < 1e-3, "{loss}");
        assert!(z.iter().all(|g| g.is_finite()));
    }
}
