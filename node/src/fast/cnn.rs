//! Forward and backward pass of the CNN (Conv3x3-ReLU-MaxPool2 blocks, then a
//! linear head) by hand, over the flat parameter vector in the model's
//! name-sorted order (`conv00.bias`, `conv00.weight`, ..., `head.bias`, `head.weight`).
//!
//! A convolution is one GEMM over the whole batch: im2col lays the batch's
//! 3×3 patches out as a `cin·9 × batch·h·w` matrix, so activations between
//! blocks are kept channel-major (`[c][b][y][x]`); only the last block's pooled
//! output is written sample-major (`[b][c][y][x]`), the order the head's
//! weight expects. The backward pass mirrors candle's: the ReLU passes its
//! gradient where its input is `>= 0`, and max-pool gives each element equal to
//! its window's maximum the window's gradient times (ties / 4), as candle's
//! `MaxPool2D` backward does.

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
            if h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
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
            let hw = block.h * block.w;
            let (input, layout): (&[f32], Layout) = if l == 0 {
                (x, Layout::SampleMajor { channels: block.cin })
            } else {
                (&self.pooled[l - 1], Layout::ChannelMajor { batch: n })
            };
            im2col(input, layout, block, n, &mut self.cols[l]);
            let weight = &params[block.weight_at..block.weight_at + block.cout * block.k()];
            let pre = &mut self.pre[l];
            matmul(
                pre,
                View::rows(weight, block.cout, block.k()),
                View::rows(&self.cols[l], block.k(), n * hw),
                false,
                threads,
            );
            for (row, b) in
                pre.chunks_exact_mut(n * hw).zip(&params[block.bias_at..block.bias_at + block.cout])
            {
                for v in row {
                    *v += b;
                }
            }
            let out_layout = if l == last {
                Layout::SampleMajor { channels: block.cout }
            } else {
                Layout::ChannelMajor { batch: n }
            };
            relu_max_pool(pre, block, n, out_layout, &mut self.pooled[l]);
        }

        let (f, c) = (self.features, self.classes);
        let head_weight = &params[self.head_weight_at..self.head_weight_at + c * f];
        let flat = &self.pooled[last];
        matmul(&mut self.logits, View::rows(flat, n, f), View::rows(head_weight, c, f).t(), false, threads);
        add_bias_rows(&mut self.logits, &params[self.head_bias_at..self.head_bias_at + c]);
        let loss = softmax_cross_entropy(&mut self.logits, labels, c);
        let dlogits = View::rows(&self.logits, n, c);
        matmul(
            &mut grad[self.head_weight_at..self.head_weight_at + c * f],
            dlogits.t(),
            View::rows(flat, n, f),
            false,
            threads,
        );
        sum_rows(&self.logits, &mut grad[self.head_bias_at..self.head_bias_at + c]);
        matmul(&mut self.grad_pooled[last], dlogits, View::rows(head_weight, c, f), false, threads);

        for (l, block) in self.blocks.iter().enumerate().rev() {
            let maps = n * block.h * block.w;
            let out_layout = if l == last {
                Layout::SampleMajor { channels: block.cout }
            } else {
                Layout::ChannelMajor { batch: n }
            };
            let grad_pre = &mut self.grad_pre[..block.cout * maps];
            relu_max_pool_backward(&self.pre[l], &self.grad_pooled[l], block, n, out_layout, grad_pre);
            let dz = View::rows(grad_pre, block.cout, maps);
            let weight_at = block.weight_at;
            let k = block.k();
            matmul(
                &mut grad[weight_at..weight_at + block.cout * k],
                dz,
                View::rows(&self.cols[l], k, maps).t(),
                false,
                threads,
            );
            for (g, row) in
                grad[block.bias_at..block.bias_at + block.cout].iter_mut().zip(grad_pre.chunks_exact(maps))
            {
                *g = row.iter().sum();
            }
            if l > 0 {
                let grad_cols = &mut self.grad_cols[..k * maps];
                let weight = View::rows(&params[weight_at..weight_at + block.cout * k], block.cout, k);
                matmul(grad_cols, weight.t(), dz, false, threads);
                col2im(grad_cols, block, n, &mut self.grad_pooled[l - 1]);
            }
        }
        loss
    }
}

/// How a stack of feature maps of one size lies in memory.
#[derive(Clone, Copy)]
enum Layout {
    /// `[b][c][y][x]`, with `channels` channels.
    SampleMajor { channels: usize },
    /// `[c][b][y][x]`, with `batch` samples.
    ChannelMajor { batch: usize },
}

impl Layout {
    /// Where map `(c, b)` of `hw` floats starts.
    fn map_at(self, c: usize, b: usize, hw: usize) -> usize {
        match self {
            Layout::SampleMajor { channels } => (b * channels + c) * hw,
            Layout::ChannelMajor { batch } => (c * batch + b) * hw,
        }
    }
}

/// Writes the `cin·9 × batch·h·w` patch matrix of `input` (zero padding 1):
/// row `ci·9 + ky·3 + kx`, column `(b·h + y)·w + x` holds `input[ci, b, y+ky−1, x+kx−1]`.
fn im2col(input: &[f32], layout: Layout, block: &Block, batch: usize, cols: &mut [f32]) {
    let (h, w) = (block.h, block.w);
    let maps = batch * h * w;
    for (row, out) in cols.chunks_exact_mut(maps).enumerate() {
        let (ci, ky, kx) = (row / 9, row % 9 / 3, row % 3);
        for b in 0..batch {
            let map = &input[layout.map_at(ci, b, h * w)..][..h * w];
            for y in 0..h {
                let dst = &mut out[(b * h + y) * w..][..w];
                let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else {
                    dst.fill(0.0);
                    continue;
                };
                let src = &map[iy * w..][..w];
                match kx {
                    0 => {
                        dst[0] = 0.0;
                        dst[1..].copy_from_slice(&src[..w - 1]);
                    }
                    1 => dst.copy_from_slice(src),
                    _ => {
                        dst[..w - 1].copy_from_slice(&src[1..]);
                        dst[w - 1] = 0.0;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: sums the patch matrix's gradient back onto the
/// channel-major input maps.
fn col2im(grad_cols: &[f32], block: &Block, batch: usize, grad_input: &mut [f32]) {
    let (h, w) = (block.h, block.w);
    let maps = batch * h * w;
    let layout = Layout::ChannelMajor { batch };
    grad_input.fill(0.0);
    for (row, src_rows) in grad_cols.chunks_exact(maps).enumerate() {
        let (ci, ky, kx) = (row / 9, row % 9 / 3, row % 3);
        for b in 0..batch {
            let at = layout.map_at(ci, b, h * w);
            let map = &mut grad_input[at..at + h * w];
            for y in 0..h {
                let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else { continue };
                let src = &src_rows[(b * h + y) * w..][..w];
                let dst = &mut map[iy * w..][..w];
                match kx {
                    0 => dst[..w - 1].iter_mut().zip(&src[1..]).for_each(|(d, s)| *d += s),
                    1 => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
                    _ => dst[1..].iter_mut().zip(&src[..w - 1]).for_each(|(d, s)| *d += s),
                }
            }
        }
    }
}

/// 2×2 max-pool of `relu(pre)` (`pre` is `cout × batch·h·w`), into `out` laid as `layout`.
fn relu_max_pool(pre: &[f32], block: &Block, batch: usize, layout: Layout, out: &mut [f32]) {
    let (h, w) = (block.h, block.w);
    let (ph, pw) = (h / 2, w / 2);
    for c in 0..block.cout {
        for b in 0..batch {
            let map = &pre[(c * batch + b) * h * w..][..h * w];
            let dst = &mut out[layout.map_at(c, b, ph * pw)..][..ph * pw];
            for py in 0..ph {
                let (top, bottom) = (&map[2 * py * w..][..w], &map[(2 * py + 1) * w..][..w]);
                for px in 0..pw {
                    let m = top[2 * px].max(top[2 * px + 1]).max(bottom[2 * px]).max(bottom[2 * px + 1]);
                    dst[py * pw + px] = m.max(0.0);
                }
            }
        }
    }
}

/// Gradient of [`relu_max_pool`] with respect to `pre`, as candle computes it.
fn relu_max_pool_backward(
    pre: &[f32],
    grad_out: &[f32],
    block: &Block,
    batch: usize,
    layout: Layout,
    grad_pre: &mut [f32],
) {
    let (h, w) = (block.h, block.w);
    let (ph, pw) = (h / 2, w / 2);
    for c in 0..block.cout {
        for b in 0..batch {
            let at = (c * batch + b) * h * w;
            let map = &pre[at..at + h * w];
            let dmap = &mut grad_pre[at..at + h * w];
            let g = &grad_out[layout.map_at(c, b, ph * pw)..][..ph * pw];
            for py in 0..ph {
                for px in 0..pw {
                    let cells = [
                        2 * py * w + 2 * px,
                        2 * py * w + 2 * px + 1,
                        (2 * py + 1) * w + 2 * px,
                        (2 * py + 1) * w + 2 * px + 1,
                    ];
                    let relu = cells.map(|i| map[i].max(0.0));
                    let m = relu[0].max(relu[1]).max(relu[2]).max(relu[3]);
                    let ties = relu.iter().filter(|&&r| r == m).count();
                    let share = g[py * pw + px] * (ties as f32 * 0.25);
                    for (&i, &r) in cells.iter().zip(&relu) {
                        dmap[i] = if r == m && map[i] >= 0.0 { share } else { 0.0 };
                    }
                }
            }
        }
    }
}
