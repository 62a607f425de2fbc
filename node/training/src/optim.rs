//! The inner optimizer's update rules, AdamW and SGD with momentum, each
//! fused into one pass per variable over plain `f32` slices. AdamW is the rule
//! of candle-nn's `AdamW`, whose dozen tensor operations per variable (each a
//! fresh buffer) were about a third of an MLP step (profiled with `starling
//! bench train`). SGD with heavy-ball momentum is what DP-SGD trains best with:
//! AdamW divides each coordinate by its own running scale, so where the noise
//! dominates the signal it takes full-size steps along the noise.
//!
//! Both the fused candle optimizer ([`FusedOptimizer`]) and the fast CPU step
//! apply the same [`RuleStep`], so the two paths train alike.

use std::cell::RefCell;

use candle_core::{backprop::GradStore, CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};
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
        assert_eq!(v.len(), theta.len(), "AdamW needs a second moment per parameter");
        let Self { b1, b2, scale_m, scale_v, decay, lr, eps } = *self;
        for (((t, m), v), g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(grad) {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let (m_hat, v_hat) = (*m * scale_m, *v * scale_v);
            *t = *t * decay - lr * (m_hat / (v_hat.sqrt() + eps));
        }
    }
}

/// The coefficients of one SGD step with heavy-ball momentum and decoupled
/// weight decay: `m ← μ·m + g`, `θ ← θ·(1 − lr·wd) − lr·m`.
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    momentum: f32,
    decay: f32,
    lr: f32,
}

impl SgdStep {
    /// Updates `theta` and its momentum buffer `m` along `grad`.
    pub fn apply(&self, theta: &mut [f32], m: &mut [f32], grad: &[f32]) {
        let Self { momentum, decay, lr } = *self;
        for ((t, m), g) in theta.iter_mut().zip(m.iter_mut()).zip(grad) {
            *m = *m * momentum + g;
            *t = *t * decay - lr * *m;
        }
    }
}

/// Which rule the inner optimizer follows, with its hyperparameters.
#[derive(Clone, Debug)]
pub enum InnerRule {
    AdamW(ParamsAdamW),
    Sgd { lr: f64, momentum: f64, weight_decay: f64 },
}

impl InnerRule {
    /// The rule a run's `[inner]` section names.
    pub fn from_spec(inner: &starling_protocol::spec::InnerSpec) -> Self {
        match inner.optimizer.unwrap_or_default() {
            starling_protocol::spec::InnerOptimizer::Adamw => Self::AdamW(ParamsAdamW {
                lr: inner.lr,
                weight_decay: inner.weight_decay,
                ..ParamsAdamW::default()
            }),
            starling_protocol::spec::InnerOptimizer::Sgd => {
                Self::Sgd { lr: inner.lr, momentum: inner.sgd_momentum(), weight_decay: inner.weight_decay }
            }
        }
    }

    /// Second-moment buffers for `len` parameters: one each under AdamW,
    /// none under SGD, which keeps only momentum.
    pub fn second_moments(&self, len: usize) -> Vec<f32> {
        match self {
            Self::AdamW(_) => vec![0.0; len],
            Self::Sgd { .. } => Vec::new(),
        }
    }

    /// The coefficients of the `t`-th step (from 1).
    pub fn step(&self, t: i32) -> RuleStep {
        match self {
            Self::AdamW(p) => RuleStep::AdamW(AdamWStep::new(p, t)),
            Self::Sgd { lr, momentum, weight_decay } => RuleStep::Sgd(SgdStep {
                momentum: *momentum as f32,
                decay: (1.0 - lr * weight_decay) as f32,
                lr: *lr as f32,
            }),
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            Self::AdamW(p) => p.lr,
            Self::Sgd { lr, .. } => *lr,
        }
    }

    fn set_lr(&mut self, new: f64) {
        match self {
            Self::AdamW(p) => p.lr = new,
            Self::Sgd { lr, .. } => *lr = new,
        }
    }
}

/// One step of either rule, element-wise over slices.
#[derive(Clone, Copy, Debug)]
pub enum RuleStep {
    AdamW(AdamWStep),
    Sgd(SgdStep),
}

impl RuleStep {
    /// Updates `theta` with first moments (momentum) `m` and second moments `v`
    /// (as [`InnerRule::second_moments`] makes them: empty under SGD) along `grad`.
    pub fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32]) {
        match self {
            Self::AdamW(step) => step.apply(theta, m, v, grad),
            Self::Sgd(step) => step.apply(theta, m, grad),
        }
    }
}

struct Moments {
    var: Var,
    m: Vec<f32>,
    /// Empty under SGD.
    v: Vec<f32>,
}

/// The inner optimizer over candle variables, its moments kept in Rust.
pub struct FusedOptimizer {
    vars: Vec<Moments>,
    rule: InnerRule,
    step_t: i32,
}

impl Optimizer for FusedOptimizer {
    type Config = InnerRule;

    fn new(vars: Vec<Var>, rule: InnerRule) -> Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|var| var.dtype().is_float())
            .map(|var| {
                let n = var.elem_count();
                Moments { var, m: vec![0.0; n], v: rule.second_moments(n) }
            })
            .collect();
        Ok(Self { vars, rule, step_t: 0 })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let step = self.rule.step(self.step_t);
        for slot in self.vars.iter_mut() {
            let Some(g) = grads.get(&slot.var) else { continue };
            if slot.var.device().is_cpu() && slot.var.dtype() == candle_core::DType::F32 {
                // In the variable's own storage: no copy of it, nor of its gradient.
                let update =
                    UpdateInPlace { step, m: RefCell::new(&mut slot.m), v: RefCell::new(&mut slot.v) };
                slot.var.as_tensor().inplace_op2(&g.contiguous()?, &update)?;
                continue;
            }
            let g = g.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let mut theta = slot.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            step.apply(&mut theta, &mut slot.m, &mut slot.v, &g);
            slot.var.set(&Tensor::from_vec(theta, slot.var.shape(), slot.var.device())?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.rule.lr()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.rule.set_lr(lr)
    }
}

/// One variable's update applied to its CPU storage in place, with its moments.
struct UpdateInPlace<'a> {
    step: RuleStep,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
}

impl InplaceOp2 for UpdateInPlace<'_> {
    fn name(&self) -> &'static str {
        "inner-update"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            candle_core::bail!("the inner update expects f32 parameters and gradients");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("the inner update expects contiguous parameters and gradients");
        };
        if t1 - t0 != g1 - g0 {
            candle_core::bail!("{} parameters but {} gradients", t1 - t0, g1 - g0);
        }
        self.step.apply(
            &mut theta[t0..t1],
            &mut self.m.borrow_mut(),
            &mut self.v.borrow_mut(),
            &grad[g0..g1],
        );
        Ok(())
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
            let mut b = FusedOptimizer::new(vec![x.clone()], InnerRule::AdamW(params.clone())).unwrap();
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

    #[test]
    fn sgd_with_momentum_is_heavy_ball() {
        let rule = InnerRule::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
        let x = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut opt = FusedOptimizer::new(vec![x.clone()], rule).unwrap();
        let (mut theta, mut m) = ([1.0f32, -2.0], [0f32; 2]);
        for _ in 0..3 {
            // d/dx of sum(x²) is 2x.
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 2.0 * theta[i];
                theta[i] -= 0.1 * m[i];
            }
        }
        let got: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        for (g, want) in got.iter().zip(theta) {
            assert!((g - want).abs() < 1e-6, "{g} vs {want}");
        }
    }
}
