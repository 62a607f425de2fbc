//! Layer norm over the last dimension, with its backward pass by hand.
//!
//! For a row `x` of `d` values, `x̂ = (x − mean)/√(var + eps)` (the population
//! variance) and `y = x̂ ∘ w + b`. The backward pass recomputes the row's mean
//! and variance, then with `g = dy ∘ w`:
//! `dx = (g − mean(g) − x̂ · mean(g ∘ x̂)) / √(var + eps)`, `dw = Σ dy ∘ x̂`,
//! `db = Σ dy` over the rows.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32_slice, rows_of, with_f32};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

pub struct LayerNorm {
    pub eps: f64,
}

/// A row's mean and `1/√(var + eps)`.
fn moments(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps as f32).sqrt())
}

fn check(d: usize, w: &[f32], b: &[f32]) -> Result<()> {
    if w.len() != d || b.len() != d {
        candle_core::bail!(
            "layer norm over {d} values got a weight of {} and a bias of {}",
            w.len(),
            b.len()
        );
    }
    Ok(())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let (_, d) = rows_of(l1)?;
        let (x, w, b) = (f32_slice(s1, l1, "x")?, f32_slice(s2, l2, "weight")?, f32_slice(s3, l3, "bias")?);
        check(d, w, b)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (mean, rstd) = moments(x, self.eps);
                for i in 0..d {
                    y[i] = (x[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, d) = rows_of(x.layout())?;
        let mut dx = vec![0f32; x.elem_count()];
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        with_f32(x, "x", |x| {
            with_f32(w, "weight", |w| {
                with_f32(grad_y, "layer norm gradient", |dy| {
                    let tasks = dx.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK));
                    tasks.zip(dy.par_chunks(d * ROWS_PER_TASK)).for_each(|((dx, x), dy)| {
                        for ((dx, x), dy) in
                            dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d))
                        {
                            let (mean, rstd) = moments(x, self.eps);
                            let (mut g_mean, mut gx_mean) = (0f32, 0f32);
                            for i in 0..d {
                                let g = dy[i] * w[i];
                                g_mean += g;
                                gx_mean += g * (x[i] - mean) * rstd;
                            }
                            let (g_mean, gx_mean) = (g_mean / d as f32, gx_mean / d as f32);
                            for i in 0..d {
                                let xhat = (x[i] - mean) * rstd;
                                dx[i] = (dy[i] * w[i] - g_mean - xhat * gx_mean) * rstd;
                            }
                        }
                    });
                    // In row order on one thread, so the sums are the same whatever the thread count.
                    for (x, dy) in x.chunks_exact(d).zip(dy.chunks_exact(d)) {
                        let (mean, rstd) = moments(x, self.eps);
                        for i in 0..d {
                            dw[i] += dy[i] * (x[i] - mean) * rstd;
                            db[i] += dy[i];
                        }
                    }
                    Ok(())
                })
            })
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        let db = Tensor::from_vec(db, w.shape(), w.device())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The same norm in candle's operations, for devices the kernel does not serve.
pub fn reference(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_sub(&mean)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    x.broadcast_mul(weight)?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: f32) -> Var {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.377).sin() * 2.0 + 0.3).collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_candles_operations_with_gradients() {
        let (x, w, b) = (random(&[3, 70, 24], 0.0), random(&[24], 1.0), random(&[24], 2.0));
        let weights = random(&[3, 70, 24], 3.0);
        let run = |fused: bool| {
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let y = if fused {
                xt.apply_op3(wt, bt, LayerNorm { eps: 1e-5 }).unwrap()
            } else {
                reference(xt, wt, bt, 1e-5).unwrap()
            };
            let grads = (&y * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all: Vec<Vec<f32>> = vec![y.flatten_all().unwrap().to_vec1().unwrap()];
            for v in [&x, &w, &b] {
                all.push(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap());
            }
            all
        };
        for (what, (got, want)) in ["y", "dx", "dw", "db"].iter().zip(run(true).iter().zip(run(false))) {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_weight_of_the_wrong_size_is_refused() {
        let (x, w) = (random(&[2, 8], 0.0), random(&[7], 0.0));
        let err = x.as_tensor().apply_op3(w.as_tensor(), w.as_tensor(), LayerNorm { eps: 1e-5 }).unwrap_err();
        assert!(err.to_string().contains("over 8 values"), "{err}");
    }
}
