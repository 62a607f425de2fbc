//! Causal self-attention without a stored `t × t` matrix, straight from the
//! packed `qkv` projection `(batch, t, 3·d_model)` to the heads' output
//! `(batch, t, d_model)`: no per-head copies of q, k, v or of the output.
//!
//! Each `(batch, head)` pair is one task. Its queries are taken in blocks of
//! [`QUERY_BLOCK`] rows: the block's scores against the keys it may see
//! (`q_b·kᵀ`, a GEMM over strided views of `qkv`), a softmax row by row in
//! place, then `p·v` into the output. The backward pass recomputes the same
//! scores and softmax block by block, so the largest buffer is
//! `QUERY_BLOCK × t` floats per task: with `P = softmax(s)` and `s = q·kᵀ/√d`,
//!
//! - `dv = Pᵀ·do`, `dP = do·vᵀ`,
//! - `ds = P ∘ (dP − rowsum(do ∘ o))` (the softmax's backward: `rowsum(dP ∘ P)`
//!   is `do·o` row by row, so the output stands in for the scores' row sums),
//! - `dq = ds·k/√d`, `dk = dsᵀ·q/√d`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
use crate::fast::matmul::{matmul, View};
use crate::fast::Threads;

/// Queries per block: the block's scores are `QUERY_BLOCK × t` floats.
const QUERY_BLOCK: usize = 64;
/// Added by [`reference`] to the scores of future positions: large enough to
/// zero them after softmax, finite so no NaN appears.
const MASKED: f32 = -1e9;

/// `softmax(q·kᵀ/√d + causal mask)·v` per head, from `qkv` `(batch, t, 3·d_model)`
/// (q, k, v side by side, each `heads` blocks of `d_model / heads`) to `(batch, t, d_model)`.
pub struct CausalAttention {
    pub heads: usize,
}

/// The sizes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    t: usize,
    /// One head's width.
    d: usize,
}

impl Dims {
    fn of(qkv: &Layout, heads: usize) -> Result<Self> {
        match qkv.dims() {
            &[batch, t, width] if heads > 0 && width % (3 * heads) == 0 => {
                Ok(Self { batch, heads, t, d: width / (3 * heads) })
            }
            dims => candle_core::bail!(
                "attention expects qkv of shape (batch, t, 3 × d_model) with d_model a multiple of {heads} heads, got {dims:?}"
            ),
        }
    }

    fn model(&self) -> usize {
        self.heads * self.d
    }

    fn tasks(&self) -> usize {
        self.batch * self.heads
    }

    /// One task's `(t, d)` output block, contiguous.
    fn per_task(&self) -> usize {
        self.t * self.d
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Task `task`'s queries, keys and values within `qkv`.
    fn head<'a>(&self, qkv: &'a [f32], task: usize) -> Head<'a> {
        let (b, h, width) = (task / self.heads, task % self.heads, 3 * self.model());
        let sample = &qkv[b * self.t * width..(b + 1) * self.t * width];
        let at = |part: usize| Strided { data: &sample[part * self.model() + h * self.d..], stride: width };
        Head { q: at(0), k: at(1), v: at(2) }
    }

    /// Task `task`'s rows within a `(batch, t, d_model)` tensor.
    fn rows_of<'a>(&self, data: &'a [f32], task: usize) -> Strided<'a> {
        let (b, h) = (task / self.heads, task % self.heads);
        Strided { data: &data[b * self.t * self.model() + h * self.d..], stride: self.model() }
    }
}

/// Rows of one head's width inside a wider row-major matrix.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    stride: usize,
}

impl<'a> Strided<'a> {
    /// Rows `first..first + rows`, `d` wide.
    fn view(self, first: usize, rows: usize, d: usize) -> View<'a> {
        let data = &self.data[first * self.stride..];
        View::strided(data, rows, d, self.stride)
    }

    fn row(self, i: usize, d: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + d]
    }
}

/// One head's `(t, d)` queries, keys and values.
#[derive(Clone, Copy)]
struct Head<'a> {
    q: Strided<'a>,
    k: Strided<'a>,
    v: Strided<'a>,
}

/// Copies per-task `(t, d)` blocks into a `(batch, t, parts · d_model)`
/// tensor, each task's block at part `part`.
fn scatter(dims: Dims, blocks: &[f32], out: &mut [f32], parts: usize, part: usize) {
    let (width, n) = (parts * dims.model(), dims.per_task());
    for (task, block) in blocks.chunks_exact(n).enumerate() {
        let (b, h) = (task / dims.heads, task % dims.heads);
        let sample = &mut out[b * dims.t * width..(b + 1) * dims.t * width];
        for (i, row) in block.chunks_exact(dims.d).enumerate() {
            let at = i * width + part * dims.model() + h * dims.d;
            sample[at..at + dims.d].copy_from_slice(row);
        }
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of(layout, self.heads)?;
        let qkv = f32_slice(storage, layout, "qkv")?;
        let n = dims.per_task();
        let mut blocks = vec![0f32; dims.tasks() * n];
        if n > 0 {
            blocks
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(task, out)| forward_head(dims, dims.head(qkv, task), out));
        }
        let mut out = vec![0f32; dims.batch * dims.t * dims.model()];
        scatter(dims, &blocks, &mut out, 1, 0);
        Ok((CpuStorage::F32(out), Shape::from((dims.batch, dims.t, dims.model()))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        let dims = Dims::of(qkv.layout(), self.heads)?;
        let n = dims.per_task();
        let mut grads =
            [vec![0f32; dims.tasks() * n], vec![0f32; dims.tasks() * n], vec![0f32; dims.tasks() * n]];
        with_f32(qkv, "qkv", |qkv| {
            with_f32(out, "attention output", |o| {
                with_f32(grad_out, "attention gradient", |g| {
                    if n == 0 {
                        return Ok(());
                    }
                    let [dq, dk, dv] = &mut grads;
                    let tasks = dq.par_chunks_mut(n).zip(dk.par_chunks_mut(n)).zip(dv.par_chunks_mut(n));
                    tasks.enumerate().for_each(|(task, ((dq, dk), dv))| {
                        let (o, g) = (dims.rows_of(o, task), dims.rows_of(g, task));
                        backward_head(dims, dims.head(qkv, task), o, g, dq, dk, dv);
                    });
                    Ok(())
                })
            })
        })?;
        let mut dqkv = vec![0f32; dims.batch * dims.t * 3 * dims.model()];
        for (part, blocks) in grads.iter().enumerate() {
            scatter(dims, blocks, &mut dqkv, 3, part);
        }
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}

/// The query blocks of a sequence of `t`: `(first row, rows)`; a block's queries
/// see keys `0..first + rows`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(QUERY_BLOCK).map(move |r0| (r0, QUERY_BLOCK.min(t - r0)))
}

/// The softmax probabilities of a block of queries, `rows × keys` row-major in
/// `p`: row `i` sees keys `0..=first + i`, and the rest of it is zero.
fn block_probabilities(dims: Dims, head: Head, first: usize, rows: usize, p: &mut [f32]) {
    let (d, keys) = (dims.d, first + rows);
    matmul(p, head.q.view(first, rows, d), head.k.view(0, keys, d).t(), false, Threads(1));
    let scale = dims.scale();
    for (i, row) in p.chunks_exact_mut(keys).enumerate() {
        let (live, future) = row.split_at_mut(first + i + 1);
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in live.iter_mut() {
            *x = ((*x - max) * scale).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|x| *x *= inv);
        future.fill(0.0);
    }
}

/// One head's output into `out`, `(t, d)` contiguous.
fn forward_head(dims: Dims, head: Head, out: &mut [f32]) {
    let d = dims.d;
    let mut p = vec![0f32; QUERY_BLOCK.min(dims.t) * dims.t];
    for (first, rows) in blocks(dims.t) {
        let keys = first + rows;
        let p = &mut p[..rows * keys];
        block_probabilities(dims, head, first, rows, p);
        let o = &mut out[first * d..keys * d];
        matmul(o, View::rows(p, rows, keys), head.v.view(0, keys, d), false, Threads(1));
    }
}

/// One head's gradients into `dq`, `dk`, `dv`, each `(t, d)` contiguous.
fn backward_head(
    dims: Dims,
    head: Head,
    out: Strided,
    grad_out: Strided,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (d, scale) = (dims.d, dims.scale());
    let block = QUERY_BLOCK.min(dims.t) * dims.t;
    let (mut p, mut ds) = (vec![0f32; block], vec![0f32; block]);
    for (first, rows) in blocks(dims.t) {
        let keys = first + rows;
        let (p, ds) = (&mut p[..rows * keys], &mut ds[..rows * keys]);
        block_probabilities(dims, head, first, rows, p);
        let g = grad_out.view(first, rows, d);
        let probs = View::rows(p, rows, keys);
        matmul(&mut dv[..keys * d], probs.t(), g, true, Threads(1));
        matmul(ds, g, head.v.view(0, keys, d).t(), false, Threads(1));
        for i in 0..rows {
            let dot: f32 =
                grad_out.row(first + i, d).iter().zip(out.row(first + i, d)).map(|(a, b)| a * b).sum();
            let (p_row, ds_row) = (&p[i * keys..(i + 1) * keys], &mut ds[i * keys..(i + 1) * keys]);
            for (s, &p) in ds_row.iter_mut().zip(p_row) {
                *s = p * (*s - dot) * scale;
            }
        }
        let scores_grad = View::rows(ds, rows, keys);
        matmul(&mut dq[first * d..keys * d], scores_grad, head.k.view(0, keys, d), false, Threads(1));
        matmul(&mut dk[..keys * d], scores_grad.t(), head.q.view(first, rows, d), true, Threads(1));
    }
}

/// The same attention in candle's operations, for devices the kernel does not serve.
pub fn reference(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, width) = qkv.dims3()?;
    let (d_model, d) = (width / 3, width / 3 / heads);
    let split = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i * d_model, d_model)?.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    // Built where the scores are: a (t, t) mask from the host would cross to
    // the device in every block of every step.
    let device = qkv.device();
    let position = Tensor::arange(0u32, t as u32, device)?;
    let future = position.reshape((1, t))?.broadcast_gt(&position.reshape((t, 1))?)?;
    let mask = future.where_cond(
        &Tensor::full(MASKED, (t, t), device)?.to_dtype(qkv.dtype())?,
        &Tensor::zeros((t, t), qkv.dtype(), device)?,
    )?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    let weights = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
    weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d_model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize, usize), seed: f32) -> Var {
        let n = shape.0 * shape.1 * shape.2;
        let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.731).sin() * 1.5).collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn close(got: &Tensor, want: &Tensor, what: &str) {
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// Output and the gradient of `qkv` against candle's operations, at
    /// lengths below, at and across the query block.
    #[test]
    fn matches_candles_operations_with_gradients() {
        let heads = 3;
        for t in [1, 5, QUERY_BLOCK, QUERY_BLOCK * 2 + 7] {
            let shape = (2, t, 3 * heads * 8);
            let (qkv, weights) = (random(shape, 0.0), random((2, t, heads * 8), 3.0));
            let run = |fused: bool| {
                let out = if fused {
                    qkv.as_tensor().apply_op1(CausalAttention { heads }).unwrap()
                } else {
                    reference(qkv.as_tensor(), heads).unwrap()
                };
                let grads = (&out * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                (out, grads.get(qkv.as_tensor()).unwrap().clone())
            };
            let (fused, want) = (run(true), run(false));
            close(&fused.0, &want.0, &format!("t={t} output"));
            close(&fused.1, &want.1, &format!("t={t} dqkv"));
        }
    }

    #[test]
    fn is_bit_identical_whatever_the_thread_count() {
        let qkv = random((2, 70, 3 * 4 * 16), 0.5);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let out = qkv.as_tensor().apply_op1(CausalAttention { heads: 4 }).unwrap();
                let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let mut all: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
                all.extend(
                    grads.get(qkv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                all
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn a_width_that_does_not_split_into_heads_is_refused() {
        let qkv = random((1, 4, 20), 0.0);
        let err = qkv.as_tensor().apply_op1(CausalAttention { heads: 3 }).unwrap_err();
        assert!(err.to_string().contains("[1, 4, 20]"), "{err}");
    }
}
