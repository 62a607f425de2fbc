//! AdamW with the update fused into one pass per variable over plain `f32`
//! slices. The same rule as candle-nn's `AdamW`, whose dozen tensor operations
//! per variable (each a fresh buffer) were about a third of an MLP step
//! (profiled with `starling bench train`).

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};

/// The coefficients of one AdamW step (the `t`-th, from 1), applied
/// element-wise: the one rule both the fused candle optimizer and the fast
/// CPU step use, so the two paths train alike.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    b1: f32,
    b2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    lr: f32,
    eps: f32,
}

impl AdamWStep {
    pub fn new(p: &ParamsAdamW, t: i32) -> Self {
        Self {
            b1: p.beta1 as f32,
            b2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(t))) as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            lr: p.lr as f32,
            eps: p.eps as f32,
        }
    }

    /// Updates `theta` and its moments `m`, `v` along the gradient `grad`.
    pub fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32]) {
        let Self { b1, b2, scale_m, scale_v, decay, lr, eps } = *self;
        for (((t, m), v), g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(grad) {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let (m_hat, v_hat) = (*m * scale_m, *v * scale_v);
            *t = *t * decay - lr * (m_hat / (v_hat.sqrt() + eps));
        }
    }
}

struct Moments {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW (decoupled weight decay, bias-corrected moments), moments kept in Rust.
pub struct FusedAdamW {
    vars: Vec<Moments>,
    params: ParamsAdamW,
    step_t: i32,
}

impl Optimizer for FusedAdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|var| var.dtype().is_float())
            .map(|var| {
                let n = var.elem_count();
                Moments { var, m: vec![0.0; n], v: vec![0.0; n] }
            })
            .collect();
        Ok(Self { vars, params, step_t: 0 })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let step = AdamWStep::new(&self.params, self.step_t);
        for slot in self.vars.iter_mut() {
            let Some(g) = grads.get(&slot.var) else { continue };
            let g = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let mut theta = slot.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            step.apply(&mut theta, &mut slot.m, &mut slot.v, &g);
            slot.var.set(&Tensor::from_vec(theta, slot.var.shape(), slot.var.device())?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use candle_nn::AdamW;

    #[test]
    fn matches_candles_adamw_to_rounding() {
        let params = ParamsAdamW { lr: 0.01, weight_decay: 0.1, ..Default::default() };
        let init: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin()).collect();
        let target =
            Tensor::from_vec((0..50).map(|i| (i as f32 * 0.3).cos()).collect::<Vec<f32>>(), 50, &Device::Cpu)
                .unwrap();
        let run = |fused: bool| -> Vec<f32> {
            let x = Var::from_slice(&init, 50, &Device::Cpu).unwrap();
            let mut a = AdamW::new(vec![x.clone()], params.clone()).unwrap();
            let mut b = FusedAdamW::new(vec![x.clone()], params.clone()).unwrap();
            for _ in 0..20 {
                let loss = (x.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
                if fused {
                    b.backward_step(&loss).unwrap()
                } else {
                    a.backward_step(&loss).unwrap()
                }
            }
            x.as_tensor().to_vec1().unwrap()
        };
        for (f, c) in run(true).iter().zip(run(false)) {
            assert!((f - c).abs() < 1e-5, "{f} vs {c}");
        }
    }
}
