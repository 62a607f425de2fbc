//! Forward and backward pass of the MLP (Linear-ReLU-...-Linear) by hand, over
//! the flat parameter vector in the MLP's canonical order (per layer its
//! `out × in` weight, then its bias), into a gradient vector of the same layout.
//!
//! Weights stay row-major `out × in` as candle holds them: the forward pass
//! multiplies by a transposed view of them and the weight gradient is
//! `dzᵀ·input`, so no transpose is ever copied. The input's gradient is not
//! computed. Buffers are reused from step to step.

use super::matmul::{matmul, Threads, View};
use super::ops::{add_bias_rows, relu, relu_backward, softmax_cross_entropy, sum_rows};

/// The MLP's training step and its workspaces for one batch size.
pub struct MlpStep {
    layers: Vec<usize>,
    threads: Threads,
    batch: usize,
    /// Per layer, its output before the ReLU: `batch × layers[i + 1]`.
    pre: Vec<Vec<f32>>,
    /// Per hidden layer, its output after the ReLU.
    post: Vec<Vec<f32>>,
    grad_out: Vec<f32>,
    grad_in: Vec<f32>,
}

impl MlpStep {
    /// A step for widths `layers` (input, hidden..., classes); at least two widths.
    pub fn new(layers: &[usize], threads: Threads) -> Self {
        assert!(layers.len() >= 2, "an MLP needs an input and an output width");
        Self {
            layers: layers.to_vec(),
            threads,
            batch: 0,
            pre: Vec::new(),
            post: Vec::new(),
            grad_out: Vec::new(),
            grad_in: Vec::new(),
        }
    }

    pub fn param_count(&self) -> usize {
        self.layers.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    fn resize(&mut self, batch: usize) {
        if self.batch == batch {
            return;
        }
        self.batch = batch;
        let outs = &self.layers[1..];
        self.pre = outs.iter().map(|&w| vec![0.0; batch * w]).collect();
        self.post = outs[..outs.len() - 1].iter().map(|&w| vec![0.0; batch * w]).collect();
        let widest = self.layers.iter().copied().max().unwrap_or(0);
        self.grad_out = vec![0.0; batch * widest];
        self.grad_in = vec![0.0; batch * widest];
    }

    /// Mean cross-entropy of the batch `x` (`labels.len() × input`) and, into
    /// `grad`, its gradient with respect to `params`.
    pub fn loss_and_grad(&mut self, params: &[f32], x: &[f32], labels: &[u32], grad: &mut [f32]) -> f32 {
        let n = labels.len();
        assert_eq!(params.len(), self.param_count());
        assert_eq!(grad.len(), params.len());
        assert_eq!(x.len(), n * self.layers[0], "the batch does not have the model's input width");
        self.resize(n);
        let depth = self.layers.len() - 1;
        let mut offsets = Vec::with_capacity(depth);
        let mut at = 0;
        for w in self.layers.windows(2) {
            offsets.push((at, at + w[0] * w[1]));
            at += w[0] * w[1] + w[1];
        }

        for i in 0..depth {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let (w_at, b_at) = offsets[i];
            let weight = View::rows(&params[w_at..b_at], fan_out, fan_in);
            let (before, after) = self.post.split_at_mut(i);
            let input: &[f32] = if i == 0 { x } else { &before[i - 1] };
            let out = &mut self.pre[i];
            matmul(out, View::rows(input, n, fan_in), weight.t(), false, self.threads);
            add_bias_rows(out, &params[b_at..b_at + fan_out]);
            if i + 1 < depth {
                relu(out, &mut after[0]);
            }
        }

        let classes = self.layers[depth];
        let grad_out = &mut self.grad_out[..n * classes];
        grad_out.copy_from_slice(&self.pre[depth - 1]);
        let loss = softmax_cross_entropy(grad_out, labels, classes);

        for i in (0..depth).rev() {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let (w_at, b_at) = offsets[i];
            let dz = &self.grad_out[..n * fan_out];
            let input = if i == 0 { x } else { &self.post[i - 1] };
            matmul(
                &mut grad[w_at..b_at],
                View::rows(dz, n, fan_out).t(),
                View::rows(input, n, fan_in),
                false,
                self.threads,
            );
            sum_rows(dz, &mut grad[b_at..b_at + fan_out]);
            if i > 0 {
                let da = &mut self.grad_in[..n * fan_in];
                let weight = View::rows(&params[w_at..b_at], fan_out, fan_in);
                matmul(da, View::rows(dz, n, fan_out), weight, false, self.threads);
                relu_backward(&self.pre[i - 1], da);
                std::mem::swap(&mut self.grad_out, &mut self.grad_in);
            }
        }
        loss
    }
}
