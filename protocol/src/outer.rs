//! The outer optimizer: SGD with (Nesterov) momentum applied to the round's
//! averaged pseudo-gradient, as in DiLoCo.
//!
//! Plain Rust over `f32` slices in a fixed order, so every node that applies
//! the same averaged delta to the same state gets bit-identical parameters.

use crate::spec::OuterSpec;

/// Outer SGD with momentum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OuterOptimizer {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
}

impl From<&OuterSpec> for OuterOptimizer {
    fn from(spec: &OuterSpec) -> Self {
        Self { lr: spec.lr as f32, momentum: spec.momentum as f32, nesterov: spec.nesterov }
    }
}

impl OuterOptimizer {
    /// One step: `params -= lr * update`, where the pseudo-gradient `grad` is
    /// θ_r − mean θ_i and `update` is `grad + μ·m` (Nesterov) or `m` (heavy ball),
    /// with `m ← μ·m + grad`.
    pub fn step(&self, params: &mut [f32], momentum: &mut [f32], grad: &[f32]) {
        assert_eq!(params.len(), grad.len(), "pseudo-gradient length must match the model");
        assert_eq!(params.len(), momentum.len(), "momentum length must match the model");
        let (lr, mu) = (self.lr, self.momentum);
        for ((p, m), &g) in params.iter_mut().zip(momentum.iter_mut()).zip(grad) {
            *m = mu * *m + g;
            let update = if self.nesterov { g + mu * *m } else { *m };
            *p -= lr * update;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_one_without_momentum_is_plain_averaging() {
        let opt = OuterOptimizer { lr: 1.0, momentum: 0.0, nesterov: false };
        let mut params = vec![1.0, 2.0];
        let mut m = vec![0.0; 2];
        // mean of local models is [0.5, 2.5]; pseudo-gradient θ − mean = [0.5, −0.5]
        opt.step(&mut params, &mut m, &[0.5, -0.5]);
        assert_eq!(params, vec![0.5, 2.5]);
    }

    #[test]
    fn nesterov_looks_ahead() {
        let opt = OuterOptimizer { lr: 1.0, momentum: 0.5, nesterov: true };
        let mut params = vec![0.0];
        let mut m = vec![0.0];
        opt.step(&mut params, &mut m, &[1.0]);
        assert_eq!(m, vec![1.0]);
        assert_eq!(params, vec![-1.5]);
    }
}
