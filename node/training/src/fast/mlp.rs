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
    /// Per layer, the gradient at its output (DP-SGD keeps them all).
    dz: Vec<Vec<f32>>,
    /// Per example, its squared gradient norm, then its clip factor.
    per_example: Vec<f32>,
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
            dz: Vec::new(),
            per_example: Vec::new(),
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
        self.dz.clear();
    }

    fn check_batch(&self, params: &[f32], x: &[f32], n: usize, grad: &[f32]) {
        assert_eq!(params.len(), self.param_count());
        assert_eq!(grad.len(), params.len());
        assert_eq!(x.len(), n * self.layers[0], "the batch does not have the model's input width");
    }

    /// Where each layer's weight and bias start in the flat parameters.
    fn offsets(&self) -> Vec<(usize, usize)> {
        let mut offsets = Vec::with_capacity(self.layers.len() - 1);
        let mut at = 0;
        for w in self.layers.windows(2) {
            offsets.push((at, at + w[0] * w[1]));
            at += w[0] * w[1] + w[1];
        }
        offsets
    }

    /// The forward pass of `n` examples into `pre` and `post`.
    fn forward(&mut self, params: &[f32], x: &[f32], n: usize, offsets: &[(usize, usize)]) {
        let depth = self.layers.len() - 1;
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
    }

    /// The forward pass alone over a batch: its summed cross-entropy and how many
    /// examples' largest logit is their label (the first largest on a tie).
    /// No gradient is computed and `params` is only read, so evaluation needs
    /// no copy of the parameters.
    pub fn loss_sum_and_correct(&mut self, params: &[f32], x: &[f32], labels: &[u32]) -> (f64, usize) {
        let n = labels.len();
        assert_eq!(params.len(), self.param_count());
        assert_eq!(x.len(), n * self.layers[0], "the batch does not have the model's input width");
        if n == 0 {
            return (0.0, 0);
        }
        self.resize(n);
        let offsets = self.offsets();
        self.forward(params, x, n, &offsets);
        let depth = self.layers.len() - 1;
        let classes = self.layers[depth];
        let logits = &mut self.pre[depth - 1];
        let correct = logits
            .chunks_exact(classes)
            .zip(labels)
            .filter(|(row, &y)| {
                let best =
                    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
                best == y as usize
            })
            .count();
        let mean = softmax_cross_entropy(logits, labels, classes);
        (mean as f64 * n as f64, correct)
    }

    /// DP-SGD's clipped gradient sum by ghost clipping (see
    /// [`crate::privacy::dpsgd`]): each example's gradient of its own loss,
    /// clipped to L2 norm `clip`, summed into `grad`; returns the summed loss.
    /// The products are those of a plain step; the per-example norms
    /// `Σ_layers (‖aᵢ‖² + 1)·‖δᵢ‖²` cost one pass over activations and deltas.
    pub fn clipped_grad_sum(
        &mut self,
        params: &[f32],
        x: &[f32],
        labels: &[u32],
        clip: f32,
        grad: &mut [f32],
    ) -> f64 {
        let n = labels.len();
        self.check_batch(params, x, n, grad);
        if n == 0 {
            grad.fill(0.0);
            return 0.0;
        }
        self.resize(n);
        let depth = self.layers.len() - 1;
        if self.dz.len() != depth {
            self.dz = self.layers[1..].iter().map(|&w| vec![0.0; n * w]).collect();
        }
        let offsets = self.offsets();
        self.forward(params, x, n, &offsets);

        let classes = self.layers[depth];
        let top = &mut self.dz[depth - 1];
        top.copy_from_slice(&self.pre[depth - 1]);
        // The mean loss's gradient is each example's own divided by n.
        let loss_sum = softmax_cross_entropy(top, labels, classes) as f64 * n as f64;
        top.iter_mut().for_each(|g| *g *= n as f32);
        for i in (1..depth).rev() {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let (w_at, b_at) = offsets[i];
            let (below, above) = self.dz.split_at_mut(i);
            let weight = View::rows(&params[w_at..b_at], fan_out, fan_in);
            let da = &mut below[i - 1];
            matmul(da, View::rows(&above[0], n, fan_out), weight, false, self.threads);
            relu_backward(&self.pre[i - 1], da);
        }

        let norms = &mut self.per_example;
        norms.clear();
        norms.resize(n, 0.0);
        for i in 0..depth {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let input = if i == 0 { x } else { &self.post[i - 1] };
            let rows = input.chunks_exact(fan_in).zip(self.dz[i].chunks_exact(fan_out));
            for (norm, (a, d)) in norms.iter_mut().zip(rows) {
                let a2: f32 = a.iter().map(|v| v * v).sum();
                let d2: f32 = d.iter().map(|v| v * v).sum();
                *norm += (a2 + 1.0) * d2;
            }
        }
        for norm in norms.iter_mut() {
            *norm = (clip / norm.sqrt().max(1e-12)).min(1.0);
        }
        for (i, &(w_at, b_at)) in offsets.iter().enumerate() {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let dz = &mut self.dz[i];
            for (row, &factor) in dz.chunks_exact_mut(fan_out).zip(norms.iter()) {
                row.iter_mut().for_each(|g| *g *= factor);
            }
            let input = if i == 0 { x } else { &self.post[i - 1] };
            layer_grad(&mut grad[w_at..b_at + fan_out], dz, input, (n, fan_in, fan_out), self.threads);
        }
        loss_sum
    }

    /// Mean cross-entropy of the batch `x` (`labels.len() × input`) and, into
    /// `grad`, its gradient with respect to `params`.
    pub fn loss_and_grad(&mut self, params: &[f32], x: &[f32], labels: &[u32], grad: &mut [f32]) -> f32 {
        let n = labels.len();
        self.check_batch(params, x, n, grad);
        self.resize(n);
        let depth = self.layers.len() - 1;
        let offsets = self.offsets();
        self.forward(params, x, n, &offsets);

        let classes = self.layers[depth];
        let grad_out = &mut self.grad_out[..n * classes];
        grad_out.copy_from_slice(&self.pre[depth - 1]);
        let loss = softmax_cross_entropy(grad_out, labels, classes);

        for i in (0..depth).rev() {
            let (fan_in, fan_out) = (self.layers[i], self.layers[i + 1]);
            let (w_at, b_at) = offsets[i];
            let dz = &self.grad_out[..n * fan_out];
            let input = if i == 0 { x } else { &self.post[i - 1] };
            layer_grad(&mut grad[w_at..b_at + fan_out], dz, input, (n, fan_in, fan_out), self.threads);
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

/// One layer's weight gradient `dzᵀ·input` and bias gradient (the column sums
/// of `dz`) into `grad`, its `out × in` weight followed by its bias;
/// `(n, fan_in, fan_out)` are the batch size and the layer's widths.
fn layer_grad(
    grad: &mut [f32],
    dz: &[f32],
    input: &[f32],
    (n, fan_in, fan_out): (usize, usize, usize),
    threads: Threads,
) {
    let (weight, bias) = grad.split_at_mut(fan_in * fan_out);
    matmul(weight, View::rows(dz, n, fan_out).t(), View::rows(input, n, fan_in), false, threads);
    sum_rows(dz, bias);
}
