//! A linear layer, `y = x·wᵀ + b`, as one operation. candle's `Linear` is a
//! matmul and then a bias add, and autograd keeps both outputs; here only `y`
//! is kept. Backward: `dx = dy·w`, `dw = dyᵀ·x`, `db = Σ dy` over the rows.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{f32_slice, rows_of, with_f32};
use crate::fast::matmul::{matmul, View};
use crate::fast::Threads;

pub struct Linear;

/// `(rows, in, out)` of an input `(.., in)`, a weight `(out, in)` and a bias `(out)`.
fn dims(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    let (rows, d_in) = rows_of(x)?;
    match (w.dims(), b.dims()) {
        (&[d_out, wi], &[bo]) if wi == d_in && bo == d_out => Ok((rows, d_in, d_out)),
        (wd, bd) => candle_core::bail!(
            "a linear layer over {d_in} inputs got a weight {wd:?} and a bias {bd:?} (expected (out, {d_in}) and (out))"
        ),
    }
}

fn threads() -> Threads {
    Threads(rayon::current_num_threads())
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear"
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
        let (rows, d_in, d_out) = dims(l1, l2, l3)?;
        let (x, w, b) = (f32_slice(s1, l1, "x")?, f32_slice(s2, l2, "weight")?, f32_slice(s3, l3, "bias")?);
        let mut y: Vec<f32> = b.iter().copied().cycle().take(rows * d_out).collect();
        matmul(&mut y, View::rows(x, rows, d_in), View::rows(w, d_out, d_in).t(), true, threads());
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rows_of checked the rank") = d_out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, d_in, d_out) = dims(x.layout(), w.layout(), b.layout())?;
        let (mut dx, mut dw, mut db) = (vec![0f32; rows * d_in], vec![0f32; d_out * d_in], vec![0f32; d_out]);
        with_f32(x, "x", |x| {
            with_f32(w, "weight", |w| {
                with_f32(grad_y, "linear gradient", |dy| {
                    let dy_rows = View::rows(dy, rows, d_out);
                    matmul(&mut dx, dy_rows, View::rows(w, d_out, d_in), false, threads());
                    matmul(&mut dw, dy_rows.t(), View::rows(x, rows, d_in), false, threads());
                    // In row order on one thread, so the sums do not depend on the thread count.
                    for row in dy.chunks_exact(d_out) {
                        db.iter_mut().zip(row).for_each(|(s, g)| *s += g);
                    }
                    Ok(())
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    fn random(shape: &[usize], seed: f32) -> Var {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.513).sin()).collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_candles_linear_with_gradients() {
        let (x, w, b) = (random(&[2, 9, 6], 0.0), random(&[5, 6], 1.0), random(&[5], 2.0));
        let weights = random(&[2, 9, 5], 3.0);
        let run = |fused: bool| {
            let y = if fused {
                x.as_tensor().apply_op3(w.as_tensor(), b.as_tensor(), Linear).unwrap()
            } else {
                candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))
                    .forward(&x)
                    .unwrap()
            };
            let grads = (&y * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all: Vec<Vec<f32>> = vec![y.flatten_all().unwrap().to_vec1().unwrap()];
            for v in [&x, &w, &b] {
                all.push(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap());
            }
            all
        };
        for (what, (got, want)) in ["y", "dx", "dw", "db"].iter().zip(run(true).iter().zip(run(false))) {
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_weight_of_the_wrong_width_is_refused() {
        let (x, w, b) = (random(&[3, 6], 0.0), random(&[5, 7], 0.0), random(&[5], 0.0));
        let err = x.as_tensor().apply_op3(w.as_tensor(), b.as_tensor(), Linear).unwrap_err();
        assert!(err.to_string().contains("over 6 inputs"), "{err}");
    }
}
