//! Forward and backward pass of the CNN (Conv3x3-ReLU-MaxPool2 blocks, then a
//! linear head) by hand, over the flat parameter vector in the model's
//! name-sorted order (`conv00.bias`, `conv00.weight`, ..., `head.bias`, `head.weight`).
//!
//! A convolution is one GEMM over the whole batch: im2col lays the batch's
//! 3×3 patches out as a `cin·9 × batch·h·w` matrix, so activations between
//! blocks are kept channel-major (`[c][b][y][x]`); only the last block's pooled
//! output is copied sample-major (`[b][c][y][x]`), the order the head's
//! weight expects. The passes over maps live in [`super::maps`]. The backward pass mirrors candle's: the ReLU passes its
//! gradient where its input is `>= 0`, and max-pool gives each element equal to
//! its window's maximum the window's gradient times (ties / 4), as candle's
//! `MaxPool2D` backward does.

use super::maps::{
    bias_relu_pool, col2im, im2col, relu_pool_backward, row_sums, to_channel_major, to_sample_major, Layout,
    Maps,
};
use super::matmul::{matmul, Threads, View};
use super::ops::{add_bias_rows, softmax_cross_entropy, sum_rows};
use starling_protocol::spec::CnnSpec;

struct Block {
    cin: usize,
    cout: usize,
    /// Spatial size of the block's input and of its convolution's output.
    h: usize,
    w: usize,
    weight_at: usize,
    bias_at: usize,
}

impl Block {
    fn k(&self) -> usize {
        self.cin * 9
    }
}

/// The CNN's training step and its workspaces for one batch size.
pub struct CnnStep {
    blocks: Vec<Block>,
    features: usize,
    classes: usize,
    head_weight_at: usize,
    head_bias_at: usize,
    param_count: usize,
    threads: Threads,
    batch: usize,
    /// Per block: its im2col matrix, its convolution's output before the ReLU,
    /// its pooled output and that output's gradient.
    cols: Vec<Vec<f32>>,
    pre: Vec<Vec<f32>>,
    pooled: Vec<Vec<f32>>,
    grad_pooled: Vec<Vec<f32>>,
    /// The last block's pooled output sample-major (the head's input), and its gradient.
    flat: Vec<f32>,
    grad_flat: Vec<f32>,
    logits: Vec<f32>,
    grad_pre: Vec<f32>,
    grad_cols: Vec<f32>,
}

impl CnnStep {
    /// `None` unless every block's input has an even height and width, the
    /// case where max-pool covers the whole map (and the only one the fast
    /// path takes).
    pub fn new(spec: &CnnSpec, threads: Threads) -> Option<Self> {
        let [mut c, mut h, mut w] = spec.input;
        let mut sizes: Vec<(String, usize)> = Vec::new();
        let mut blocks = Vec::new();
        for (i, &out) in spec.channels.iter().enumerate() {
            if !h.is_multiple_of(2) || !w.is_multiple_of(2) || h == 0 || w == 0 {
                return None;
            }
            sizes.push((format!("conv{i:02}.bias"), out));
            sizes.push((format!("conv{i:02}.weight"), out * c * 9));
            blocks.push(Block { cin: c, cout: out, h, w, weight_at: 0, bias_at: 0 });
            (c, h, w) = (out, h / 2, w / 2);
        }
        let features = c * h * w;
        sizes.push(("head.bias".into(), spec.classes));
        sizes.push(("head.weight".into(), spec.classes * features));
        sizes.sort();
        let mut offsets = std::collections::HashMap::new();
        let mut at = 0;
        for (name, len) in &sizes {
            offsets.insert(name.clone(), at);
            at += len;
        }
        for (i, block) in blocks.iter_mut().enumerate() {
            block.weight_at = offsets[&format!("conv{i:02}.weight")];
            block.bias_at = offsets[&format!("conv{i:02}.bias")];
        }
        Some(Self {
            blocks,
            features,
            classes: spec.classes,
            head_weight_at: offsets["head.weight"],
            head_bias_at: offsets["head.bias"],
            param_count: at,
            threads,
            batch: 0,
            cols: Vec::new(),
            pre: Vec::new(),
            pooled: Vec::new(),
            grad_pooled: Vec::new(),
            flat: Vec::new(),
            grad_flat: Vec::new(),
            logits: Vec::new(),
            grad_pre: Vec::new(),
            grad_cols: Vec::new(),
        })
    }

    pub fn param_count(&self) -> usize {
        self.param_count
    }

    fn input_dim(&self) -> usize {
        let first = &self.blocks[0];
        first.cin * first.h * first.w
    }

    fn resize(&mut self, batch: usize) {
        if self.batch == batch {
            return;
        }
        self.batch = batch;
        let maps = |b: &Block| batch * b.h * b.w;
        self.cols = self.blocks.iter().map(|b| vec![0.0; b.k() * maps(b)]).collect();
        self.pre = self.blocks.iter().map(|b| vec![0.0; b.cout * maps(b)]).collect();
        self.pooled = self.blocks.iter().map(|b| vec![0.0; b.cout * maps(b) / 4]).collect();
        self.grad_pooled = self.pooled.clone();
        self.flat = vec![0.0; batch * self.features];
        self.grad_flat = vec![0.0; batch * self.features];
        self.logits = vec![0.0; batch * self.classes];
        self.grad_pre = vec![0.0; self.blocks.iter().map(|b| b.cout * maps(b)).max().unwrap_or(0)];
        self.grad_cols = vec![0.0; self.blocks.iter().map(|b| b.k() * maps(b)).max().unwrap_or(0)];
    }

    /// Mean cross-entropy of the batch `x` (`labels.len()` flat images) and,
    /// into `grad`, its gradient with respect to `params`.
    pub fn loss_and_grad(&mut self, params: &[f32], x: &[f32], labels: &[u32], grad: &mut [f32]) -> f32 {
        let n = labels.len();
        assert_eq!(params.len(), self.param_count);
        assert_eq!(grad.len(), params.len());
        assert_eq!(x.len(), n * self.input_dim(), "the batch does not have the model's input size");
        self.resize(n);
        let threads = self.threads;
        let last = self.blocks.len() - 1;

        for (l, block) in self.blocks.iter().enumerate() {
            let maps = Maps { batch: n, h: block.h, w: block.w };
            let (input, layout): (&[f32], Layout) = if l == 0 {
                (x, Layout::SampleMajor { channels: block.cin })
            } else {
                (&self.pooled[l - 1], Layout::ChannelMajor { batch: n })
            };
            im2col(input, layout, maps, &mut self.cols[l], threads);
            let weight = &params[block.weight_at..block.weight_at + block.cout * block.k()];
            let columns = n * block.h * block.w;
            let pre = &mut self.pre[l];
            matmul(
                pre,
                View::rows(weight, block.cout, block.k()),
                View::rows(&self.cols[l], block.k(), columns),
                false,
                threads,
            );
            let bias = &params[block.bias_at..block.bias_at + block.cout];
            bias_relu_pool(pre, bias, maps, &mut self.pooled[l], threads);
        }

        let (f, c) = (self.features, self.classes);
        let top = &self.blocks[last];
        let pooled_size = top.h / 2 * (top.w / 2);
        to_sample_major(&self.pooled[last], top.cout, n, pooled_size, &mut self.flat);
        let head_weight = &params[self.head_weight_at..self.head_weight_at + c * f];
        let flat = View::rows(&self.flat, n, f);
        matmul(&mut self.logits, flat, View::rows(head_weight, c, f).t(), false, threads);
        add_bias_rows(&mut self.logits, &params[self.head_bias_at..self.head_bias_at + c]);
        let loss = softmax_cross_entropy(&mut self.logits, labels, c);
        let dlogits = View::rows(&self.logits, n, c);
        matmul(
            &mut grad[self.head_weight_at..self.head_weight_at + c * f],
            dlogits.t(),
            flat,
            false,
            threads,
        );
        sum_rows(&self.logits, &mut grad[self.head_bias_at..self.head_bias_at + c]);
        matmul(&mut self.grad_flat, dlogits, View::rows(head_weight, c, f), false, threads);
        to_channel_major(&self.grad_flat, top.cout, n, pooled_size, &mut self.grad_pooled[last]);

        for (l, block) in self.blocks.iter().enumerate().rev() {
            let maps = Maps { batch: n, h: block.h, w: block.w };
            let columns = n * block.h * block.w;
            let grad_pre = &mut self.grad_pre[..block.cout * columns];
            relu_pool_backward(&self.pre[l], &self.grad_pooled[l], maps, grad_pre, threads);
            let dz = View::rows(grad_pre, block.cout, columns);
            let (weight_at, k) = (block.weight_at, block.k());
            matmul(
                &mut grad[weight_at..weight_at + block.cout * k],
                dz,
                View::rows(&self.cols[l], k, columns).t(),
                false,
                threads,
            );
            row_sums(grad_pre, &mut grad[block.bias_at..block.bias_at + block.cout]);
            if l > 0 {
                let grad_cols = &mut self.grad_cols[..k * columns];
                let weight = View::rows(&params[weight_at..weight_at + block.cout * k], block.cout, k);
                matmul(grad_cols, weight.t(), dz, false, threads);
                col2im(grad_cols, maps, &mut self.grad_pooled[l - 1], threads);
            }
        }
        loss
    }
}
