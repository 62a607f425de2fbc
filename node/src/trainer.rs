//! Local training: H inner AdamW steps on a node's own shard from the round's
//! starting parameters, and evaluation of any parameters on any data.
//!
//! The inner optimizer's moments and the batch sampler persist across rounds, as in
//! DiLoCo. Given the same spec, shard, sampler seed and sequence of calls, a
//! `Trainer` produces bit-identical parameters.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::Xoshiro256PlusPlus;
use starling_protocol::RunSpec;

use crate::data::{below, rng_for, DataError, Dataset};
use crate::model::Mlp;

// Keeps batch sampling on a stream of its own, apart from the data's.
const TAG_SAMPLER: u64 = 0x7361_6d70_6c65_0005;
/// Rows per forward pass when evaluating: bounds memory whatever the data size.
const EVAL_CHUNK: usize = 1024;

/// Why training or evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("model.layers {layers:?} is not a usable MLP: {reason}")]
    BadLayers { layers: Vec<usize>, reason: &'static str },
    #[error("expected {expected} parameters for this model, got {got}; the parameters belong to another model.layers")]
    ParamCount { expected: usize, got: usize },
    #[error("parameter {index} is {value}; refusing to train from or evaluate non-finite parameters")]
    NonFinite { index: usize, value: f32 },
    #[error("training diverged at step {step}: loss is {loss}; lower inner.lr")]
    Diverged { step: u64, loss: f32 },
    #[error("data does not fit the model: {0}")]
    DataMismatch(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("a model's variable store was poisoned by a panic in another thread")]
    Poisoned,
}

/// What one round of local training produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// The parameters after the round, in canonical order.
    pub params: Vec<f32>,
    /// Samples processed this round: steps × batch size.
    pub samples: u64,
    /// Mean training loss over the round's steps.
    pub mean_loss: f32,
}

/// Loss and accuracy of parameters on a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy per sample.
    pub loss: f32,
    /// Fraction of samples whose largest logit is the label, in `[0, 1]`.
    pub accuracy: f32,
}

/// A node's local trainer: its model, its shard, its inner AdamW and its sampler.
pub struct Trainer {
    model: Mlp,
    /// A second model for evaluation, so evaluating never disturbs training state.
    eval_model: Mlp,
    data: Dataset,
    optimizer: AdamW,
    sampler: BatchSampler,
    batch_size: usize,
    steps_done: u64,
}

impl Trainer {
    /// A trainer for `spec`'s model on `data`, sampling batches from `sampler_seed`.
    pub fn new(spec: &RunSpec, data: Dataset, sampler_seed: u64) -> Result<Self, TrainError> {
        let layers = &spec.model.layers;
        let model = Mlp::new(layers)?;
        check_fits(layers, &data)?;
        if data.is_empty() {
            return Err(TrainError::DataMismatch(
                "the training shard is empty; dataset.samples_per_node must be at least 1".into(),
            ));
        }
        if spec.inner.batch_size == 0 {
            return Err(TrainError::Zero("inner.batch_size"));
        }
        let optimizer = AdamW::new(
            model.vars().to_vec(),
            ParamsAdamW {
                lr: spec.inner.lr,
                weight_decay: spec.inner.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(Self {
            eval_model: Mlp::new(layers)?,
            sampler: BatchSampler::new(data.len(), sampler_seed),
            model,
            data,
            optimizer,
            batch_size: spec.inner.batch_size,
            steps_done: 0,
        })
    }

    /// Loads `start` into the model, runs `steps` AdamW steps on batches drawn from
    /// the shard, and returns the new parameters.
    pub fn train_round(&mut self, start: &[f32], steps: u32) -> Result<TrainOutcome, TrainError> {
        if steps == 0 {
            return Err(TrainError::Zero("inner.steps"));
        }
        check_finite(start)?;
        self.model.set_params(start)?;
        let mean_loss = self.run_steps(steps as u64)?;
        Ok(TrainOutcome {
            params: self.model.params()?,
            samples: steps as u64 * self.batch_size as u64,
            mean_loss,
        })
    }

    /// Loss and accuracy of `params` on `data`, in chunks so memory stays small.
    pub fn evaluate(&self, params: &[f32], data: &Dataset) -> Result<Evaluation, TrainError> {
        evaluate_with(&self.eval_model, params, data)
    }

    /// The shard this trainer learns from.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// Inner steps taken since creation, over all rounds.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// Runs `steps` steps from the model's current parameters; returns the mean loss.
    fn run_steps(&mut self, steps: u64) -> Result<f32, TrainError> {
        let dim = self.data.dim;
        let mut xs = Vec::with_capacity(self.batch_size * dim);
        let mut ys = Vec::with_capacity(self.batch_size);
        let mut loss_sum = 0f64;
        for _ in 0..steps {
            xs.clear();
            ys.clear();
            for _ in 0..self.batch_size {
                let i = self.sampler.next_index();
                xs.extend_from_slice(self.data.row(i));
                ys.push(self.data.labels[i]);
            }
            let x = Tensor::from_slice(&xs, (self.batch_size, dim), &Device::Cpu)?;
            let y = Tensor::from_slice(&ys, self.batch_size, &Device::Cpu)?;
            let loss = candle_nn::loss::cross_entropy(&self.model.forward(&x)?, &y)?;
            let value = loss.to_scalar::<f32>()?;
            self.steps_done += 1;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step: self.steps_done, loss: value });
            }
            loss_sum += value as f64;
            self.optimizer.backward_step(&loss)?;
        }
        Ok((loss_sum / steps as f64) as f32)
    }
}

/// Trains one model alone on `data` for `steps` steps from `initial`: the
/// centralized baseline and single-node baselines.
pub fn train_alone(
    spec: &RunSpec,
    data: Dataset,
    initial: &[f32],
    steps: u64,
    sampler_seed: u64,
) -> Result<Vec<f32>, TrainError> {
    let mut trainer = Trainer::new(spec, data, sampler_seed)?;
    check_finite(initial)?;
    trainer.model.set_params(initial)?;
    if steps > 0 {
        trainer.run_steps(steps)?;
    }
    trainer.model.params()
}

/// Loss and accuracy of `params` for a model of widths `layers` on `data`.
pub fn evaluate(layers: &[usize], params: &[f32], data: &Dataset) -> Result<Evaluation, TrainError> {
    evaluate_with(&Mlp::new(layers)?, params, data)
}

fn evaluate_with(model: &Mlp, params: &[f32], data: &Dataset) -> Result<Evaluation, TrainError> {
    check_fits(model.layers(), data)?;
    if data.is_empty() {
        return Err(TrainError::DataMismatch("cannot evaluate on an empty data set".into()));
    }
    check_finite(params)?;
    model.set_params(params)?;
    let (mut loss_sum, mut correct) = (0f64, 0f64);
    for start in (0..data.len()).step_by(EVAL_CHUNK) {
        let n = EVAL_CHUNK.min(data.len() - start);
        let x = Tensor::from_slice(
            &data.features[start * data.dim..(start + n) * data.dim],
            (n, data.dim),
            &Device::Cpu,
        )?;
        let y = Tensor::from_slice(&data.labels[start..start + n], n, &Device::Cpu)?;
        let logits = model.forward(&x)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        correct += logits.argmax(1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let n = data.len() as f64;
    Ok(Evaluation { loss: (loss_sum / n) as f32, accuracy: (correct / n) as f32 })
}

/// Checks that `data` is well formed and has the model's input and output widths.
fn check_fits(layers: &[usize], data: &Dataset) -> Result<(), TrainError> {
    data.validate()?;
    let (input, classes) = (layers[0], layers[layers.len() - 1]);
    if data.dim != input || data.classes != classes {
        return Err(TrainError::DataMismatch(format!(
            "data has dim {} and {} classes, the model takes {} inputs and gives {} classes",
            data.dim, data.classes, input, classes
        )));
    }
    Ok(())
}

fn check_finite(params: &[f32]) -> Result<(), TrainError> {
    match params.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TrainError::NonFinite { index, value: params[index] }),
        None => Ok(()),
    }
}

/// Seeded epoch sampler: each pass visits every sample once, in a fresh
/// Fisher-Yates order, so small shards are covered evenly.
struct BatchSampler {
    rng: Xoshiro256PlusPlus,
    order: Vec<usize>,
    cursor: usize,
}

impl BatchSampler {
    fn new(len: usize, seed: u64) -> Self {
        Self {
            rng: rng_for(&[TAG_SAMPLER, seed]),
            order: (0..len).collect(),
            cursor: len, // shuffle before the first draw
        }
    }

    fn next_index(&mut self) -> usize {
        if self.cursor == self.order.len() {
            for i in (1..self.order.len()).rev() {
                let j = below(&mut self.rng, i as u64 + 1) as usize;
                self.order.swap(i, j);
            }
            self.cursor = 0;
        }
        self.cursor += 1;
        self.order[self.cursor - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticTask;

    fn small_spec() -> RunSpec {
        let mut spec = RunSpec::builtin();
        spec.model.layers = vec![32, 32, 10];
        spec.dataset.samples_per_node = 512;
        spec.dataset.eval_samples = 512;
        spec.inner.steps = 20;
        spec.inner.batch_size = 32;
        spec.inner.lr = 5e-3;
        spec
    }

    fn setup(spec: &RunSpec) -> (Trainer, Dataset, Vec<f32>) {
        let task = SyntheticTask::new(spec).unwrap();
        let trainer = Trainer::new(spec, task.shard(0, spec.dataset.samples_per_node), 1).unwrap();
        let init = Mlp::initial_params(&spec.model.layers, spec.seed);
        (trainer, task.eval_set(), init)
    }

    #[test]
    fn training_lowers_the_loss_and_raises_accuracy() {
        let spec = small_spec();
        let (mut trainer, eval, init) = setup(&spec);
        let before = trainer.evaluate(&init, &eval).unwrap();
        let mut params = init;
        let mut losses = Vec::new();
        for _ in 0..8 {
            let out = trainer.train_round(&params, spec.inner.steps).unwrap();
            assert_eq!(out.samples, 20 * 32);
            losses.push(out.mean_loss);
            params = out.params;
        }
        let after = trainer.evaluate(&params, &eval).unwrap();
        assert!(losses[7] < losses[0] * 0.8, "{losses:?}");
        assert!(after.loss < before.loss, "{before:?} -> {after:?}");
        assert!(after.accuracy > before.accuracy + 0.1, "{before:?} -> {after:?}");
        assert!((0.0..=1.0).contains(&after.accuracy));
        assert_eq!(trainer.steps_done(), 160);
    }

    #[test]
    fn equal_inputs_give_bit_identical_rounds() {
        let spec = small_spec();
        let run = || {
            let (mut t, _, init) = setup(&spec);
            let a = t.train_round(&init, 10).unwrap();
            let b = t.train_round(&a.params, 10).unwrap();
            (a, b)
        };
        let ((a1, b1), (a2, b2)) = (run(), run());
        assert_eq!(bits(&a1.params), bits(&a2.params));
        assert_eq!(bits(&b1.params), bits(&b2.params));
        assert_eq!(a1.mean_loss.to_bits(), a2.mean_loss.to_bits());
    }

    #[test]
    fn optimizer_state_persists_across_rounds() {
        // Two rounds of 5 chained by hand equal one round of 10 only if AdamW's
        // moments and the sampler carry over.
        let spec = small_spec();
        let (mut split, _, init) = setup(&spec);
        let first = split.train_round(&init, 5).unwrap();
        let second = split.train_round(&first.params, 5).unwrap();
        let (mut whole, _, _) = setup(&spec);
        let once = whole.train_round(&init, 10).unwrap();
        assert_eq!(bits(&second.params), bits(&once.params));
    }

    #[test]
    fn train_alone_matches_a_trainer_and_zero_steps_is_identity() {
        let spec = small_spec();
        let (mut trainer, _, init) = setup(&spec);
        let data = trainer.data().clone();
        let alone = train_alone(&spec, data.clone(), &init, 15, 1).unwrap();
        assert_eq!(bits(&alone), bits(&trainer.train_round(&init, 15).unwrap().params));
        assert_eq!(train_alone(&spec, data, &init, 0, 1).unwrap(), init);
    }

    #[test]
    fn evaluate_does_not_disturb_training() {
        let spec = small_spec();
        let (mut a, eval, init) = setup(&spec);
        let (mut b, _, _) = setup(&spec);
        let ra = a.train_round(&init, 5).unwrap();
        a.evaluate(&vec![0.5; init.len()], &eval).unwrap();
        let rb = b.train_round(&init, 5).unwrap();
        assert_eq!(
            bits(&a.train_round(&ra.params, 5).unwrap().params),
            bits(&b.train_round(&rb.params, 5).unwrap().params)
        );
        let free = evaluate(&spec.model.layers, &init, &eval).unwrap();
        assert_eq!(free, a.evaluate(&init, &eval).unwrap());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let spec = small_spec();
        let (mut t, eval, init) = setup(&spec);
        assert!(matches!(t.train_round(&init[1..], 1), Err(TrainError::ParamCount { .. })));
        assert!(matches!(t.train_round(&init, 0), Err(TrainError::Zero(_))));
        let mut nan = init.clone();
        nan[3] = f32::NAN;
        assert!(matches!(t.train_round(&nan, 1), Err(TrainError::NonFinite { index: 3, .. })));
        let empty = Dataset { features: vec![], labels: vec![], dim: 32, classes: 10 };
        assert!(t.evaluate(&init, &empty).is_err());
        assert!(Trainer::new(&spec, empty, 0).is_err());
        let mut wrong = eval.clone();
        wrong.dim = 16;
        wrong.features.truncate(16 * wrong.len());
        assert!(matches!(t.evaluate(&init, &wrong), Err(TrainError::DataMismatch(_))));
        let mut huge = init.clone();
        huge.iter_mut().for_each(|v| *v = 1e30);
        assert!(matches!(t.train_round(&huge, 1), Err(TrainError::Diverged { step: 1, .. })));
    }

    #[test]
    fn sampler_covers_every_sample_once_per_epoch() {
        let mut s = BatchSampler::new(7, 3);
        for _ in 0..3 {
            let mut seen: Vec<usize> = (0..7).map(|_| s.next_index()).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
