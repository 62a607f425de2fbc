//! DP-SGD for local training (Abadi et al. 2016): Poisson-sampled batches,
//! per-example gradients clipped to L2 norm C, their sum noised with
//! `N(0, (σ·C)²)` and divided by the expected batch size, then the inner
//! optimizer's step (post-processing of the noised gradient; `inner.optimizer =
//! "sgd"` trains far better under the noise than AdamW).
//!
//! Per-example gradient norms of the MLP come from **ghost clipping**: for a
//! dense layer `z = a·Wᵀ + b`, example i's weight gradient is `δᵢ aᵢᵀ` (δ the
//! gradient of the summed loss at z), whose squared norm is `‖aᵢ‖²‖δᵢ‖²`, plus
//! `‖δᵢ‖²` for the bias. One backward pass gives every δ; the clipped sum is then
//! `Δᵀ·diag(c)·A`, one matmul per layer, with `cᵢ = min(1, C/‖gᵢ‖)`. No
//! per-example gradient is ever materialised. Other models (the CNN) fall back
//! to one backward pass per example: correct, but about batch-size times slower.
//!
//! Sampling is Poisson: each record of the shard joins a step's batch with
//! probability `q = batch_size / shard size`, independently, as the RDP analysis
//! of the subsampled Gaussian assumes; the batch size varies around `batch_size`.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var, D};
use candle_nn::Optimizer;
use starling_protocol::ModelSpec;

use super::NoiseRng;
use crate::data::Dataset;
use crate::datasets::TrainData;
use crate::error::TrainError;
use crate::fast::FastTrainer;
use crate::models::{Batch, Model};
use crate::optim::FusedOptimizer;

/// Keeps the norm of an all-zero gradient away from a division by zero.
const NORM_FLOOR: f64 = 1e-12;

/// The DP-SGD settings and generator of one node's trainer.
pub struct DpSgd {
    clip: f64,
    sigma: f64,
    rate: f64,
    expected_batch: f64,
    rng: NoiseRng,
}

/// One step's clipped, summed per-example gradients (one tensor per variable)
/// and the summed loss of the batch.
pub struct ClippedSum {
    pub grads: Vec<Tensor>,
    pub loss_sum: f64,
}

impl DpSgd {
    /// DP-SGD with clip norm `clip`, noise multiplier `sigma`, batches of
    /// `batch_size` records expected from a shard of `shard_len`.
    pub fn new(clip: f64, sigma: f64, batch_size: usize, shard_len: usize, rng: NoiseRng) -> Self {
        let rate = (batch_size as f64 / shard_len.max(1) as f64).min(1.0);
        Self { clip, sigma, rate, expected_batch: rate * shard_len as f64, rng }
    }

    /// q, the Poisson sampling rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// σ, the noise multiplier.
    pub fn noise_multiplier(&self) -> f64 {
        self.sigma
    }

    /// Runs `steps` DP-SGD steps on `model` from its current parameters; returns
    /// the mean loss per sampled record (for the node's own log only: it is not
    /// private and is never published).
    pub(crate) fn run_steps(
        &mut self,
        model: &Model,
        data: &TrainData,
        optimizer: &mut FusedOptimizer,
        steps: u64,
        steps_done: &mut u64,
    ) -> Result<f32, TrainError> {
        let TrainData::Labelled(data) = data else {
            return Err(TrainError::DataMismatch(
                "record-level privacy needs labelled data (idx, csv, synthetic); remove [privacy] for text"
                    .into(),
            ));
        };
        let vars = model.vars();
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            self.poisson_batch(data, &mut xs, &mut ys);
            let n = ys.len();
            let sum = if n == 0 {
                ClippedSum { grads: zeros_like(&vars)?, loss_sum: 0.0 }
            } else {
                let x = Tensor::from_slice(&xs, (n, data.dim), &Device::Cpu)?;
                let y = Tensor::from_slice(&ys, n, &Device::Cpu)?;
                clipped_sum(model, &vars, &x, &y, self.clip)?
            };
            *steps_done += 1;
            if !sum.loss_sum.is_finite() {
                return Err(TrainError::Diverged { step: *steps_done, loss: sum.loss_sum as f32 });
            }
            loss_sum += sum.loss_sum;
            seen += n;
            let mut store = GradStore::default();
            for (var, grad) in vars.iter().zip(sum.grads) {
                let mut g = grad.flatten_all()?.to_vec1::<f32>()?;
                self.rng.add_gaussian(&mut g, self.sigma * self.clip);
                let scale = (1.0 / self.expected_batch) as f32;
                g.iter_mut().for_each(|v| *v *= scale);
                store.insert(var.as_tensor(), Tensor::from_vec(g, var.shape(), &Device::Cpu)?);
            }
            optimizer.step(&store)?;
        }
        Ok((loss_sum / seen.max(1) as f64) as f32)
    }
}

impl DpSgd {
    /// Draws one step's batch into `xs`/`ys`: every record with probability q.
    fn poisson_batch(&mut self, data: &Dataset, xs: &mut Vec<f32>, ys: &mut Vec<u32>) {
        xs.clear();
        ys.clear();
        for i in 0..data.len() {
            if self.rng.uniform() < self.rate {
                xs.extend_from_slice(data.row(i));
                ys.push(data.labels[i]);
            }
        }
    }

    /// [`Self::run_steps`] on the hand-written MLP step, which clips by ghost
    /// norms at the cost of a plain step; same sampling, noise and checks.
    pub(crate) fn run_fast_steps(
        &mut self,
        fast: &mut FastTrainer,
        data: &Dataset,
        steps: u64,
        steps_done: &mut u64,
    ) -> Result<f32, TrainError> {
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let scale = (1.0 / self.expected_batch) as f32;
        for _ in 0..steps {
            self.poisson_batch(data, &mut xs, &mut ys);
            let sum =
                fast.clipped_grad_sum(&xs, &ys, self.clip as f32).expect("the caller checked the kernel");
            *steps_done += 1;
            if !sum.is_finite() {
                return Err(TrainError::Diverged { step: *steps_done, loss: sum as f32 });
            }
            loss_sum += sum;
            seen += ys.len();
            let grad = fast.grad_mut();
            self.rng.add_gaussian(grad, self.sigma * self.clip);
            grad.iter_mut().for_each(|g| *g *= scale);
            fast.apply_update();
        }
        Ok((loss_sum / seen.max(1) as f64) as f32)
    }
}

/// The clipped sum of per-example gradients of the batch `(x, y)`: by ghost
/// clipping for the MLP, one example at a time otherwise.
pub fn clipped_sum(
    model: &Model,
    vars: &[Var],
    x: &Tensor,
    y: &Tensor,
    clip: f64,
) -> Result<ClippedSum, TrainError> {
    match model.spec() {
        ModelSpec::Mlp(_) => Ok(ghost_clipped_sum(vars, x, y, clip)?),
        _ => per_example_clipped_sum(model, vars, x, y, clip),
    }
}

/// Ghost clipping through an MLP whose variables are `[W0, b0, W1, b1, ...]`
/// with ReLU between layers (the layout of [`crate::model::Mlp`]).
pub fn ghost_clipped_sum(vars: &[Var], x: &Tensor, y: &Tensor, clip: f64) -> candle_core::Result<ClippedSum> {
    let layers = vars.len() / 2;
    let n = x.dim(0)?;
    // Backward keeps the gradients of variables only, so each layer's output
    // passes through a zero "tap" variable whose gradient is δ. The weights are
    // detached: their summed gradients, which backward would otherwise compute,
    // are not wanted.
    let mut inputs = vec![x.clone()];
    let mut taps = Vec::with_capacity(layers);
    let mut h = x.clone();
    for l in 0..layers {
        let (w, b) = (vars[2 * l].as_tensor().detach(), vars[2 * l + 1].as_tensor().detach());
        let tap = Var::zeros((n, w.dim(0)?), DType::F32, &Device::Cpu)?;
        let z = (h.matmul(&w.t()?)?.broadcast_add(&b)? + tap.as_tensor())?;
        if l + 1 < layers {
            h = z.relu()?;
            inputs.push(h.clone());
        } else {
            h = z;
        }
        taps.push(tap);
    }
    let logits = &h;
    // The summed loss, so each row of δ is that example's own gradient.
    let loss = (candle_nn::loss::cross_entropy(logits, y)? * n as f64)?;
    let loss_sum = loss.to_scalar::<f32>()? as f64;
    let store = loss.backward()?;
    let mut deltas = Vec::with_capacity(layers);
    let mut norms2 = Tensor::zeros(n, DType::F32, &Device::Cpu)?;
    for (a, tap) in inputs.iter().zip(&taps) {
        let d = store.get(tap.as_tensor()).expect("backward reaches every layer's output").detach();
        let a = a.detach();
        let d2 = d.sqr()?.sum(D::Minus1)?;
        let a2 = a.sqr()?.sum(D::Minus1)?;
        norms2 = (norms2 + ((a2 + 1.0)? * d2)?)?;
        deltas.push(d);
    }
    let factors = clip_factors(&norms2, clip)?.unsqueeze(1)?;
    let mut grads = Vec::with_capacity(vars.len());
    for (a, d) in inputs.iter().zip(&deltas) {
        let scaled = d.broadcast_mul(&factors)?;
        grads.push(scaled.t()?.matmul(&a.detach())?);
        grads.push(scaled.sum(0)?);
    }
    Ok(ClippedSum { grads, loss_sum })
}

/// One backward pass per example: the fallback for layers without ghost norms.
fn per_example_clipped_sum(
    model: &Model,
    vars: &[Var],
    x: &Tensor,
    y: &Tensor,
    clip: f64,
) -> Result<ClippedSum, TrainError> {
    let mut sums = zeros_like(vars)?;
    let mut loss_sum = 0f64;
    for i in 0..x.dim(0)? {
        let batch = Batch::Labelled { x: x.narrow(0, i, 1)?, y: y.narrow(0, i, 1)? };
        let (loss, _) = model.loss(&batch)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        let store = loss.backward()?;
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| store.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let mut norm2 = 0f64;
        for g in &grads {
            norm2 += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let factor = (clip / norm2.sqrt().max(NORM_FLOOR)).min(1.0);
        for (sum, g) in sums.iter_mut().zip(grads) {
            *sum = (&*sum + (g * factor)?)?;
        }
    }
    Ok(ClippedSum { grads: sums, loss_sum })
}

/// `min(1, C / ‖gᵢ‖)` for each example's squared norm.
fn clip_factors(norms2: &Tensor, clip: f64) -> candle_core::Result<Tensor> {
    let norms = norms2.sqrt()?.maximum(NORM_FLOOR)?;
    (norms.recip()? * clip)?.minimum(1.0)
}

fn zeros_like(vars: &[Var]) -> candle_core::Result<Vec<Tensor>> {
    vars.iter().map(|v| v.as_tensor().zeros_like()).collect()
}

#[cfg(test)]
mod tests;
