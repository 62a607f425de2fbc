//! The hand-written CPU training step: forward, backward and AdamW for the MLP
//! and the CNN over flat `f32` buffers, with GEMMs by the `gemm` crate and no
//! allocation per step. It replaces candle's autograd in the trainer on the CPU
//! where it applies, because candle's per-operation tensors cost more than the
//! arithmetic at these sizes (`bench/torch_vs_candle.sh` measures both).
//!
//! Parameters keep the candle model's flat canonical order, so codecs,
//! aggregation and checkpoints see no difference, and a step computes the same
//! loss and gradient as candle's autograd up to float rounding. A step is
//! deterministic: the same parameters and batch give bit-identical results,
//! whatever the thread count.
//!
//! Set `STARLING_TRAIN_PATH=reference` to train through candle's autograd instead.

pub mod cnn;
pub mod maps;
pub mod matmul;
pub mod mlp;
pub mod ops;
#[cfg(test)]
mod reference_tests;

use crate::optim::InnerRule;
use starling_protocol::ModelSpec;

pub use matmul::Threads;

/// The environment variable that picks the training path: `reference` forces
/// candle's autograd; `auto` (or unset) takes the fast path where it applies.
pub const PATH_VAR: &str = "STARLING_TRAIN_PATH";

/// Which implementation trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainPath {
    /// Candle's autograd and [`crate::optim::FusedOptimizer`].
    Reference,
    /// This module's hand-written step.
    Fast,
}

impl TrainPath {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainPath::Reference => "reference",
            TrainPath::Fast => "fast",
        }
    }
}

/// True unless [`PATH_VAR`] asks for the reference path.
pub fn fast_path_allowed() -> bool {
    match std::env::var(PATH_VAR).as_deref() {
        Ok("reference") => false,
        Ok("auto") | Ok("fast") | Err(_) => true,
        Ok(other) => {
            tracing::warn!(
                "{PATH_VAR}={other} is neither reference nor auto; taking the fast path where it applies"
            );
            true
        }
    }
}

/// A model's forward and backward pass by hand.
pub enum Kernel {
    Mlp(mlp::MlpStep),
    Cnn(cnn::CnnStep),
}

impl Kernel {
    /// The kernel for `spec`, or `None` when the fast path does not cover it
    /// (the transformer; a CNN whose maps have an odd size before a pool).
    pub fn for_spec(spec: &ModelSpec, threads: Threads) -> Option<Self> {
        match spec {
            ModelSpec::Mlp(m) if m.layers.len() >= 2 => {
                Some(Kernel::Mlp(mlp::MlpStep::new(&m.layers, threads)))
            }
            ModelSpec::Cnn(c) if !c.channels.is_empty() => cnn::CnnStep::new(c, threads).map(Kernel::Cnn),
            _ => None,
        }
    }

    pub fn param_count(&self) -> usize {
        match self {
            Kernel::Mlp(k) => k.param_count(),
            Kernel::Cnn(k) => k.param_count(),
        }
    }

    /// Mean cross-entropy of the batch and, into `grad`, its gradient.
    pub fn loss_and_grad(&mut self, params: &[f32], x: &[f32], labels: &[u32], grad: &mut [f32]) -> f32 {
        match self {
            Kernel::Mlp(k) => k.loss_and_grad(params, x, labels, grad),
            Kernel::Cnn(k) => k.loss_and_grad(params, x, labels, grad),
        }
    }
}

/// Parameters, gradient, AdamW moments and the kernel: the whole inner loop's state.
pub struct FastTrainer {
    kernel: Kernel,
    /// The parameters being trained: loaded with [`Self::load`], or lent by
    /// the caller for a round ([`Self::lend`], [`Self::give_back`]) so that
    /// training makes no copy of them.
    params: Vec<f32>,
    /// The last step's gradient: allocated while parameters are loaded or
    /// lent, let go with them, so that between rounds the trainer holds only
    /// the optimizer's moments.
    grad: Vec<f32>,
    optimizer: ops::FlatOptimizer,
    threads: Threads,
}

impl FastTrainer {
    /// A trainer for `spec` with the inner rule `rule`, on the thread count candle uses
    /// (`RAYON_NUM_THREADS`, else every core); `None` where the fast path does not apply.
    pub fn for_spec(spec: &ModelSpec, rule: InnerRule) -> Option<Self> {
        let threads = Threads(candle_core::utils::get_num_threads());
        let kernel = Kernel::for_spec(spec, threads)?;
        let n = kernel.param_count();
        Some(Self {
            kernel,
            params: Vec::new(),
            grad: Vec::new(),
            optimizer: ops::FlatOptimizer::new(n, rule),
            threads,
        })
    }

    /// Replaces the parameters (in canonical order); the moments carry on.
    pub fn load(&mut self, params: &[f32]) {
        self.params.clear();
        self.params.extend_from_slice(params);
        self.grad.resize(self.params.len(), 0.0);
    }

    /// Trains `params` itself from now on: they are moved in, and whatever
    /// the trainer held moves out into `params`. The moments carry on.
    pub fn lend(&mut self, params: &mut Vec<f32>) {
        assert_eq!(params.len(), self.kernel.param_count(), "lent parameters of another model");
        std::mem::swap(&mut self.params, params);
        self.grad.resize(self.params.len(), 0.0);
    }

    /// Hands the trained parameters back into `params` (what [`Self::lend`] left there is dropped).
    pub fn give_back(&mut self, params: &mut Vec<f32>) {
        *params = std::mem::take(&mut self.params);
        self.grad = Vec::new();
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The batch's loss, leaving its gradient ready for [`Self::apply_update`].
    pub fn loss_and_grad(&mut self, x: &[f32], labels: &[u32]) -> f32 {
        self.kernel.loss_and_grad(&self.params, x, labels, &mut self.grad)
    }

    /// Whether [`Self::clipped_grad_sum`] covers the model (the MLP).
    pub fn clips_per_example(&self) -> bool {
        matches!(self.kernel, Kernel::Mlp(_))
    }

    /// DP-SGD's sum of per-example gradients clipped to `clip`, left as the
    /// gradient (to be noised, see [`Self::grad_mut`]); the summed loss.
    /// `None` where the kernel has no per-example clipping.
    pub fn clipped_grad_sum(&mut self, x: &[f32], labels: &[u32], clip: f32) -> Option<f64> {
        match &mut self.kernel {
            Kernel::Mlp(k) => Some(k.clipped_grad_sum(&self.params, x, labels, clip, &mut self.grad)),
            Kernel::Cnn(_) => None,
        }
    }

    /// The gradient the next [`Self::apply_update`] follows.
    pub fn grad_mut(&mut self) -> &mut [f32] {
        &mut self.grad
    }

    /// One step of the inner optimizer along the last gradient.
    pub fn apply_update(&mut self) {
        self.optimizer.step(&mut self.params, &self.grad, self.threads);
    }
}
