//! Mean cross-entropy of logits against class targets, with its gradient by
//! hand: `(softmax(z) − onehot(y)) / n`, recomputed from the logits in the
//! backward pass instead of kept from the forward one.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

pub struct CrossEntropy;

/// `(rows, classes)` of `(n, classes)` logits with `n` targets.
fn dims(logits: &Layout, targets: &Layout) -> Result<(usize, usize)> {
    match (logits.dims(), targets.dims()) {
        (&[n, c], &[m]) if n == m && c > 0 => Ok((n, c)),
        (z, y) => {
            candle_core::bail!("cross-entropy expects logits (n, classes) and n targets, got {z:?} and {y:?}")
        }
    }
}

pub(super) fn u32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = storage else {
        candle_core::bail!("cross-entropy targets: expected u32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("cross-entropy targets: expected a contiguous tensor"),
    }
}

pub(super) fn check_targets(targets: &[u32], classes: usize) -> Result<()> {
    match targets.iter().find(|&&y| y as usize >= classes) {
        Some(y) => candle_core::bail!("cross-entropy target {y} is not below the {classes} classes"),
        None => Ok(()),
    }
}

/// A row's maximum and `ln Σ exp(z − max)`.
pub(super) fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
    (max, row.iter().map(|z| (z - max).exp()).sum::<f32>().ln())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c) = dims(l1, l2)?;
        let (z, y) = (f32_slice(s1, l1, "logits")?, u32_slice(s2, l2)?);
        check_targets(y, c)?;
        let mut losses = vec![0f32; n];
        losses.par_chunks_mut(ROWS_PER_TASK).zip(z.par_chunks(c * ROWS_PER_TASK)).enumerate().for_each(
            |(task, (losses, z))| {
                for (i, (loss, row)) in losses.iter_mut().zip(z.chunks_exact(c)).enumerate() {
                    let (max, lse) = log_sum_exp(row);
                    *loss = max + lse - row[y[task * ROWS_PER_TASK + i] as usize];
                }
            },
        );
        // Summed in row order, so the loss does not depend on the thread count.
        let mean = losses.iter().map(|&l| l as f64).sum::<f64>() / n.max(1) as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c) = dims(logits.layout(), targets.layout())?;
        let scale = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n.max(1) as f32;
        let targets_t = targets.contiguous()?;
        let (storage, layout) = targets_t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("cross-entropy targets: expected a CPU tensor");
        };
        let y = u32_slice(cpu, layout)?;
        let mut dz = vec![0f32; n * c];
        with_f32(logits, "logits", |z| {
            let tasks = dz.par_chunks_mut(c * ROWS_PER_TASK).zip(z.par_chunks(c * ROWS_PER_TASK));
            tasks.enumerate().for_each(|(task, (dz, z))| {
                for (i, (dz, row)) in dz.chunks_exact_mut(c).zip(z.chunks_exact(c)).enumerate() {
                    let (max, lse) = log_sum_exp(row);
                    for (g, &z) in dz.iter_mut().zip(row) {
                        *g = (z - max - lse).exp() * scale;
                    }
                    dz[y[task * ROWS_PER_TASK + i] as usize] -= scale;
                }
            });
            Ok(())
        })?;
        Ok((Some(Tensor::from_vec(dz, logits.shape(), logits.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candles_loss_and_gradient() {
        let (n, c) = (37, 11);
        let z: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.61).sin() * 4.0).collect();
        let z = Var::from_vec(z, (n, c), &Device::Cpu).unwrap();
        let y: Vec<u32> = (0..n as u32).map(|i| (i * 7) % c as u32).collect();
        let y = Tensor::from_vec(y, n, &Device::Cpu).unwrap();
        let run = |fused: bool| {
            let loss = if fused {
                z.as_tensor().apply_op2(&y, CrossEntropy).unwrap()
            } else {
                candle_nn::loss::cross_entropy(z.as_tensor(), &y).unwrap()
            };
            // A factor on the loss reaches the gradient.
            let grads = (&loss * 3.0).unwrap().backward().unwrap();
            let dz: Vec<f32> = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (loss.to_scalar::<f32>().unwrap(), dz)
        };
        let ((loss, dz), (want_loss, want_dz)) = (run(true), run(false));
        assert!((loss - want_loss).abs() < 1e-5, "{loss} vs {want_loss}");
        for (i, (g, w)) in dz.iter().zip(&want_dz).enumerate() {
            assert!((g - w).abs() < 1e-6, "dz[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn a_target_out_of_range_is_refused() {
        let z = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = z.apply_op2(&y, CrossEntropy).unwrap_err();
        assert!(err.to_string().contains("target 3 is not below the 3 classes"), "{err}");
    }
}
