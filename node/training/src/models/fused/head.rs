//! The output head and the loss in one operation: mean cross-entropy of
//! `h·wᵀ` (the final states times the tied token embedding) against the next
//! tokens, without ever holding the `tokens × vocab` logits.
//!
//! The rows go in blocks of at most [`BLOCK_FLOATS`] logits. For each block
//! the forward pass computes the logits (a GEMM), each row's loss, and, in the
//! same buffer, the logits' gradient `(softmax − onehot)/n`, which it turns at
//! once into the block's share of `dh = dz·w` and `dw = dzᵀ·h`. The backward
//! pass only scales those by the loss's incoming gradient: the gradient is
//! computed while the logits are at hand, as Liger-Kernel's fused linear
//! cross-entropy does, instead of keeping them or computing them twice.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::loss::{check_targets, log_sum_exp, u32_slice};
use super::{f32_slice, rows_of};
use crate::fast::matmul::{matmul, View};
use crate::fast::Threads;

/// The most logits one block holds (32 MiB of `f32`).
const BLOCK_FLOATS: usize = 8 << 20;

/// Mean cross-entropy of `h (n, d) · w (vocab, d)ᵀ` against targets `(n)` u32,
/// with the gradients of `h` and `w` prepared in the forward pass.
pub struct TiedHeadCrossEntropy {
    /// The most logits one block holds.
    block_floats: usize,
    /// `(dh, dw)` for an incoming gradient of 1, taken by the backward pass.
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl Default for TiedHeadCrossEntropy {
    fn default() -> Self {
        Self::with_block_floats(BLOCK_FLOATS)
    }
}

impl TiedHeadCrossEntropy {
    fn with_block_floats(block_floats: usize) -> Self {
        Self { block_floats, grads: Mutex::new(None) }
    }
}

impl CustomOp3 for TiedHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "tied-head-cross-entropy"
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
        let ((n, d), (vocab, wd)) = (rows_of(l1)?, rows_of(l2)?);
        if l1.dims().len() != 2 || l2.dims().len() != 2 || wd != d || l3.dims() != [n] {
            candle_core::bail!(
                "the tied head expects states (n, d), a table (vocab, d) and n targets, got {:?}, {:?}, {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (h, w, y) = (f32_slice(s1, l1, "states")?, f32_slice(s2, l2, "table")?, u32_slice(s3, l3)?);
        check_targets(y, vocab)?;
        let threads = Threads(rayon::current_num_threads());
        let block = (self.block_floats / vocab).clamp(1, n.max(1));
        let mut z = vec![0f32; block * vocab];
        let (mut dh, mut dw) = (vec![0f32; n * d], vec![0f32; vocab * d]);
        let mut loss_sum = 0f64;
        let scale = 1.0 / n.max(1) as f32;
        let table = View::rows(w, vocab, d);
        for first in (0..n).step_by(block) {
            let rows = block.min(n - first);
            let (z, hb) = (&mut z[..rows * vocab], View::rows(&h[first * d..(first + rows) * d], rows, d));
            matmul(z, hb, table.t(), false, threads);
            let targets = &y[first..first + rows];
            let mut losses = vec![0f32; rows];
            z.par_chunks_mut(vocab).zip(losses.par_iter_mut()).zip(targets).for_each(
                |((row, loss), &target)| {
                    let (max, lse) = log_sum_exp(row);
                    *loss = max + lse - row[target as usize];
                    for x in row.iter_mut() {
                        *x = (*x - max - lse).exp() * scale;
                    }
                    row[target as usize] -= scale;
                },
            );
            // Summed in row order, so the loss does not depend on the thread count.
            loss_sum += losses.iter().map(|&l| l as f64).sum::<f64>();
            let dz = View::rows(z, rows, vocab);
            matmul(&mut dh[first * d..(first + rows) * d], dz, table, false, threads);
            matmul(&mut dw, dz.t(), hb, first > 0, threads);
        }
        *self.grads.lock().expect("the head's gradients are not poisoned") = Some((dh, dw));
        Ok((CpuStorage::F32(vec![(loss_sum / n.max(1) as f64) as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((mut dh, mut dw)) = self.grads.lock().expect("the head's gradients are not poisoned").take()
        else {
            candle_core::bail!(
                "the tied head's gradient was already taken: one backward pass per forward pass"
            );
        };
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if g != 1.0 {
            dh.iter_mut().chain(dw.iter_mut()).for_each(|x| *x *= g);
        }
        let dh = Tensor::from_vec(dh, h.shape(), h.device())?;
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((Some(dh), Some(dw), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize), seed: f32) -> Var {
        let data: Vec<f32> = (0..shape.0 * shape.1).map(|i| ((i as f32 + seed) * 0.917).sin()).collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Loss and both gradients against candle's matmul and cross-entropy, with
    /// more rows than one block holds and a factor on the loss.
    #[test]
    fn matches_the_head_and_loss_in_candles_operations() {
        let (n, d, vocab) = (50, 12, 37);
        let (h, w) = (random((n, d), 0.0), random((vocab, d), 5.0));
        let y: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let y = Tensor::from_vec(y, n, &Device::Cpu).unwrap();
        let run = |fused: bool| {
            let loss = if fused {
                let op = TiedHeadCrossEntropy::with_block_floats(16 * vocab);
                h.as_tensor().apply_op3(w.as_tensor(), &y, op).unwrap()
            } else {
                let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                candle_nn::loss::cross_entropy(&logits, &y).unwrap()
            };
            let grads = (&loss * 0.5).unwrap().backward().unwrap();
            let grad = |v: &Var| -> Vec<f32> {
                grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            };
            (loss.to_scalar::<f32>().unwrap(), grad(&h), grad(&w))
        };
        let (got, want) = (run(true), run(false));
        assert!((got.0 - want.0).abs() < 1e-4, "loss {} vs {}", got.0, want.0);
        for (what, g, w) in [("dh", &got.1, &want.1), ("dw", &got.2, &want.2)] {
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert!((g - w).abs() <= 1e-6 + 1e-4 * w.abs(), "{what}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_table_of_another_width_is_refused() {
        let (h, w) = (random((4, 8), 0.0), random((10, 7), 0.0));
        let y = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu).unwrap();
        let err = h.as_tensor().apply_op3(w.as_tensor(), &y, TiedHeadCrossEntropy::default()).unwrap_err();
        assert!(err.to_string().contains("[10, 7]"), "{err}");
    }
}
