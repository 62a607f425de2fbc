//! Causal self-attention without a stored `t × t` matrix.
//!
//! Each `(batch, head)` pair is one task. Its queries are taken in blocks of
//! [`QUERY_BLOCK`] rows: the block's scores against the keys it may see
//! (`q_b·kᵀ`, a GEMM), a softmax row by row in place, then `p·v` into the
//! output. The backward pass recomputes the same scores and softmax block by
//! block, so the largest buffer is `QUERY_BLOCK × t` floats per task: with
//! `P = softmax(s)` and `s = q·kᵀ/√d`,
//!
//! - `dv = Pᵀ·do`, `dP = do·vᵀ`,
//! - `ds = P ∘ (dP − rowsum(do ∘ o))` (the softmax's backward: `rowsum(dP ∘ P)`
//!   is `do·o` row by row, so the output stands in for the scores' row sums),
//! - `dq = ds·k/√d`, `dk = dsᵀ·q/√d`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, with_f32};
use crate::fast::matmul::{matmul, View};
use crate::fast::Threads;

/// Queries per block: the block's scores are `QUERY_BLOCK × t` floats.
const QUERY_BLOCK: usize = 64;
/// Added by [`reference`] to the scores of future positions: large enough to
/// zero them after softmax, finite so no NaN appears.
const MASKED: f32 = -1e9;

/// `softmax(q·kᵀ/√d + causal mask)·v` over `(batch, heads, t, d)` tensors.
pub struct CausalAttention;

/// The sizes of one attention call: `heads` counts batch × heads.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> Result<Self> {
        let dims = q.dims();
        if dims.len() != 4 || k.dims() != dims || v.dims() != dims {
            candle_core::bail!(
                "attention expects q, k and v of one shape (batch, heads, t, head_dim), got {:?}, {:?}, {:?}",
                dims,
                k.dims(),
                v.dims()
            );
        }
        Ok(Self { heads: dims[0] * dims[1], t: dims[2], d: dims[3] })
    }

    fn per_head(&self) -> usize {
        self.t * self.d
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of(l1, l2, l3)?;
        let (q, k, v) = (f32_slice(s1, l1, "q")?, f32_slice(s2, l2, "k")?, f32_slice(s3, l3, "v")?);
        let n = dims.per_head();
        let mut out = vec![0f32; dims.heads * n];
        if n > 0 {
            out.par_chunks_mut(n).enumerate().for_each(|(h, out)| {
                let at = h * n..(h + 1) * n;
                forward_head(dims, &q[at.clone()], &k[at.clone()], &v[at], out);
            });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of(q.layout(), k.layout(), v.layout())?;
        let n = dims.per_head();
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; dims.heads * n], vec![0f32; dims.heads * n], vec![0f32; dims.heads * n]);
        with_f32(q, "q", |q| {
            with_f32(k, "k", |k| {
                with_f32(v, "v", |v| {
                    with_f32(out, "attention output", |o| {
                        with_f32(grad_out, "attention gradient", |g| {
                            if n == 0 {
                                return Ok(());
                            }
                            let grads =
                                dq.par_chunks_mut(n).zip(dk.par_chunks_mut(n)).zip(dv.par_chunks_mut(n));
                            grads.enumerate().for_each(|(h, ((dq, dk), dv))| {
                                let at = h * n..(h + 1) * n;
                                let head = Head { q: &q[at.clone()], k: &k[at.clone()], v: &v[at.clone()] };
                                backward_head(dims, head, &o[at.clone()], &g[at], dq, dk, dv);
                            });
                            Ok(())
                        })
                    })
                })
            })
        })?;
        let grad = |data: Vec<f32>| Tensor::from_vec(data, q.shape(), q.device());
        Ok((Some(grad(dq)?), Some(grad(dk)?), Some(grad(dv)?)))
    }
}

/// One head's `(t, d)` queries, keys and values.
#[derive(Clone, Copy)]
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
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
    let q = View::rows(&head.q[first * d..keys * d], rows, d);
    matmul(p, q, View::rows(&head.k[..keys * d], keys, d).t(), false, Threads(1));
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

fn forward_head(dims: Dims, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let head = Head { q, k, v };
    let d = dims.d;
    let mut p = vec![0f32; QUERY_BLOCK.min(dims.t) * dims.t];
    for (first, rows) in blocks(dims.t) {
        let keys = first + rows;
        let p = &mut p[..rows * keys];
        block_probabilities(dims, head, first, rows, p);
        let o = &mut out[first * d..keys * d];
        matmul(o, View::rows(p, rows, keys), View::rows(&v[..keys * d], keys, d), false, Threads(1));
    }
}

fn backward_head(
    dims: Dims,
    head: Head,
    out: &[f32],
    grad_out: &[f32],
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
        let g = &grad_out[first * d..keys * d];
        let probs = View::rows(p, rows, keys);
        matmul(&mut dv[..keys * d], probs.t(), View::rows(g, rows, d), true, Threads(1));
        matmul(ds, View::rows(g, rows, d), View::rows(&head.v[..keys * d], keys, d).t(), false, Threads(1));
        for i in 0..rows {
            let row = (first + i) * d..(first + i + 1) * d;
            let dot: f32 = grad_out[row.clone()].iter().zip(&out[row]).map(|(a, b)| a * b).sum();
            let (p_row, ds_row) = (&p[i * keys..(i + 1) * keys], &mut ds[i * keys..(i + 1) * keys]);
            for (s, &p) in ds_row.iter_mut().zip(p_row) {
                *s = p * (*s - dot) * scale;
            }
        }
        let scores_grad = View::rows(ds, rows, keys);
        let q_block = &head.q[first * d..keys * d];
        matmul(
            &mut dq[first * d..keys * d],
            scores_grad,
            View::rows(&head.k[..keys * d], keys, d),
            false,
            Threads(1),
        );
        matmul(&mut dk[..keys * d], scores_grad.t(), View::rows(q_block, rows, d), true, Threads(1));
    }
}

/// The same attention in candle's operations, for devices the kernel does not serve.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (t, d) = (q.dim(2)?, q.dim(3)?);
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { MASKED } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, t), q.device())?.to_dtype(q.dtype())?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    let weights = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
    weights.matmul(&v.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize, usize, usize), seed: f32) -> Var {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
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

    /// Output and all three gradients against candle's operations, at lengths
    /// below, at and across the query block.
    #[test]
    fn matches_candles_operations_with_gradients() {
        for t in [1, 5, QUERY_BLOCK, QUERY_BLOCK * 2 + 7] {
            let shape = (2, 3, t, 8);
            let (q, k, v) = (random(shape, 0.0), random(shape, 1.0), random(shape, 2.0));
            let weights = random(shape, 3.0);
            let run = |fused: bool| {
                let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
                let out = if fused {
                    qt.apply_op3(kt, vt, CausalAttention).unwrap()
                } else {
                    reference(qt, kt, vt).unwrap()
                };
                let loss = (&out * weights.as_tensor()).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let grad = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
                (out, grad(&q), grad(&k), grad(&v))
            };
            let fused = run(true);
            let want = run(false);
            close(&fused.0, &want.0, &format!("t={t} output"));
            close(&fused.1, &want.1, &format!("t={t} dq"));
            close(&fused.2, &want.2, &format!("t={t} dk"));
            close(&fused.3, &want.3, &format!("t={t} dv"));
        }
    }

    #[test]
    fn is_bit_identical_whatever_the_thread_count() {
        let shape = (1, 4, 70, 16);
        let (q, k, v) = (random(shape, 0.5), random(shape, 1.5), random(shape, 2.5));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let out = q.as_tensor().apply_op3(k.as_tensor(), v.as_tensor(), CausalAttention).unwrap();
                let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let mut all: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
                for x in [&q, &k, &v] {
                    all.extend(
                        grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    );
                }
                all
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn mismatched_shapes_are_refused_with_the_shapes() {
        let q = random((1, 2, 4, 8), 0.0);
        let k = random((1, 2, 5, 8), 0.0);
        let err = q.as_tensor().apply_op3(k.as_tensor(), q.as_tensor(), CausalAttention).unwrap_err();
        assert!(err.to_string().contains("[1, 2, 5, 8]"), "{err}");
    }
}
