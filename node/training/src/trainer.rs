//! Local training: H inner optimizer steps (AdamW, or SGD with momentum) on a
//! node's own shard from the round's starting parameters (evaluation:
//! [`crate::evaluation`]).
//!
//! The inner optimizer's moments and the batch sampler persist across rounds, as in
//! DiLoCo. Given the same spec, shard, sampler seed and sequence of calls, a
//! `Trainer` produces bit-identical parameters.

use candle_core::{backprop::GradStore, Device, Tensor};
use candle_nn::Optimizer;

use crate::optim::{FusedOptimizer, InnerRule};
use rand::rngs::Xoshiro256PlusPlus;
use starling_protocol::RunSpec;

use crate::data::{below, rng_for};
use crate::datasets::TrainData;
use crate::error::TrainError;
use crate::evaluation::{check_finite, check_fits, lm_context};
pub use crate::evaluation::{evaluate, Evaluation};
use crate::fast::{fast_path_allowed, FastTrainer, TrainPath};
use crate::models::{Batch, Model};
use starling_protocol::ModelSpec;

// Keeps batch sampling on a stream of its own, apart from the data's.
const TAG_SAMPLER: u64 = 0x7361_6d70_6c65_0005;
/// Tokens of one micro-batch of a language model's step (at least one
/// sequence): autograd keeps the activations of this many tokens at most,
/// whatever the batch; the micro-batches' gradients are summed before the
/// update, which is the batch's gradient up to float rounding. `lm-small`'s
/// batch of 8 × 256: 0.38 GB a step at 512, 0.51 GB at 1024, 2 % slower
/// (`starling bench train --model lm-small`). On a GPU the whole batch is one
/// micro-batch: there memory is plenty, and every micro-batch costs a forward
/// and a backward pass of kernel launches, a loss read back and a sum of the
/// gradients (`lm-tiny`'s batch of 32 × 128 was eight of them).
const MICRO_BATCH_TOKENS: usize = 512;

/// The tokens of a micro-batch on `device`: [`MICRO_BATCH_TOKENS`] on the
/// CPU, the whole batch elsewhere.
fn micro_batch_tokens(device: &Device) -> usize {
    if device.is_cpu() {
        MICRO_BATCH_TOKENS
    } else {
        usize::MAX
    }
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

/// The inner optimizer: the spec's rule fused over host slices on the CPU;
/// on a GPU, candle's own AdamW (SGD stays fused, copying each step).
enum InnerStepper {
    Fused(FusedOptimizer),
    Candle(candle_nn::AdamW),
}

/// candle's model and inner optimizer: what trains where the hand-written step
/// does not apply (the language models, a GPU, DP-SGD on the CNN). Built only
/// then, so the fast path holds no second copy of the parameters or moments.
struct Reference {
    model: Model,
    optimizer: InnerStepper,
}

impl Reference {
    fn new(spec: &ModelSpec, rule: &InnerRule, device: &Device) -> Result<Self, TrainError> {
        let model = Model::new_on(spec, device)?;
        // The fused update works on host slices: on a GPU it would copy every
        // variable out and back each step, so there candle's own AdamW runs.
        let optimizer = match rule {
            InnerRule::AdamW(adamw) if !device.is_cpu() => {
                InnerStepper::Candle(candle_nn::AdamW::new(model.vars(), adamw.clone())?)
            }
            _ => InnerStepper::Fused(FusedOptimizer::new(model.vars(), rule.clone())?),
        };
        Ok(Self { model, optimizer })
    }
}

/// Asked of candle's model where the fast path trains and there is none: a bug.
fn no_reference() -> TrainError {
    TrainError::DataMismatch("the fast path trains this model; it has no candle model".into())
}

/// What one round of in-place training ([`Trainer::train_in_place`]) reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundStats {
    /// Samples processed this round: steps × batch size.
    pub samples: u64,
    /// Mean training loss over the round's steps.
    pub mean_loss: f32,
}

/// A node's local trainer: its model, its shard, its inner optimizer and its sampler.
///
/// Full-size buffers it holds: on the fast path the gradient and the inner
/// optimizer's moments (the parameters are the caller's, lent for the round);
/// on the reference path candle's variables, the moments, and whatever
/// candle's autograd keeps for a step.
pub struct Trainer {
    spec: ModelSpec,
    data: TrainData,
    /// Where the model and its batches live.
    device: Device,
    /// The hand-written CPU step, where it covers the model and is allowed.
    fast: Option<FastTrainer>,
    /// candle's model and optimizer, where the fast step does not train.
    reference: Option<Reference>,
    rule: InnerRule,
    sampler: BatchSampler,
    batch_size: usize,
    /// Tokens of one micro-batch of a language model ([`MICRO_BATCH_TOKENS`]).
    micro_batch_tokens: usize,
    steps_done: u64,
    /// DP-SGD in place of plain batches, for a record-level private run.
    private: Option<crate::privacy::DpSgd>,
}

impl Trainer {
    /// A trainer for `spec`'s model on `data`, sampling batches from `sampler_seed`.
    pub fn new(spec: &RunSpec, data: impl Into<TrainData>, sampler_seed: u64) -> Result<Self, TrainError> {
        Self::new_on(spec, data, sampler_seed, &Device::Cpu)
    }

    /// [`Trainer::new`] training on `device` (a GPU with `--features cuda`).
    pub fn new_on(
        spec: &RunSpec,
        data: impl Into<TrainData>,
        sampler_seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let data = data.into();
        check_fits(&spec.model, &data)?;
        if data.is_empty() {
            return Err(TrainError::DataMismatch(
                "the training shard is empty; dataset.samples_per_node must be at least 1".into(),
            ));
        }
        if spec.inner.batch_size == 0 {
            return Err(TrainError::Zero("inner.batch_size"));
        }
        let rule = InnerRule::from_spec(&spec.inner);
        let fast = match &data {
            TrainData::Labelled(_) if device.is_cpu() && fast_path_allowed() => {
                FastTrainer::for_spec(&spec.model, rule.clone())
            }
            _ => None,
        };
        let reference = match fast {
            Some(_) => None,
            None => Some(Reference::new(&spec.model, &rule, device)?),
        };
        Ok(Self {
            spec: spec.model.clone(),
            device: device.clone(),
            sampler: BatchSampler::new(data.len(), sampler_seed),
            data,
            fast,
            reference,
            rule,
            batch_size: spec.inner.batch_size,
            micro_batch_tokens: micro_batch_tokens(device),
            steps_done: 0,
            private: None,
        })
    }

    /// Loads `start` into the model, runs `steps` optimizer steps on batches drawn from
    /// the shard, and returns the new parameters. [`Self::train_in_place`] without
    /// the copies.
    pub fn train_round(&mut self, start: &[f32], steps: u32) -> Result<TrainOutcome, TrainError> {
        let mut params = start.to_vec();
        let stats = self.train_in_place(&mut params, steps)?;
        Ok(TrainOutcome { params, samples: stats.samples, mean_loss: stats.mean_loss })
    }

    /// Runs `steps` optimizer steps from `params` on batches drawn from the
    /// shard, leaving the trained parameters in `params`. On the fast path the
    /// steps update `params` itself: no copy of the parameters is made. After
    /// an error `params` holds whatever the steps had reached.
    pub fn train_in_place(&mut self, params: &mut Vec<f32>, steps: u32) -> Result<RoundStats, TrainError> {
        if steps == 0 {
            return Err(TrainError::Zero("inner.steps"));
        }
        let mean_loss = self.train_for(params, steps as u64)?;
        Ok(RoundStats { samples: steps as u64 * self.batch_size as u64, mean_loss })
    }

    /// [`Self::train_in_place`] for any number of steps; returns the mean loss.
    fn train_for(&mut self, params: &mut Vec<f32>, steps: u64) -> Result<f32, TrainError> {
        let expected = self.spec.param_count();
        if params.len() != expected {
            return Err(TrainError::ParamCount { expected, got: params.len() });
        }
        check_finite(params)?;
        if steps == 0 {
            return Ok(0.0);
        }
        match self.fast.as_mut() {
            Some(fast) => {
                fast.lend(params);
                let loss = self.run_fast_steps(steps);
                self.fast.as_mut().expect("the fast path is still set").give_back(params);
                loss
            }
            None => {
                self.reference()?.model.set_params(params)?;
                // The model's variables are the trained copy now: the caller's
                // buffer is let go while the steps run (its size again in
                // memory at the peak of every backward pass) and refilled after.
                drop(std::mem::take(params));
                let loss = self.run_steps(steps);
                *params = self.reference()?.model.params()?;
                loss
            }
        }
    }

    /// Loss and accuracy of `params` on `data`, in chunks so memory stays small.
    pub fn evaluate(&self, params: &[f32], data: &TrainData) -> Result<Evaluation, TrainError> {
        evaluate(&self.spec, params, data)
    }

    /// The shard this trainer learns from.
    pub fn data(&self) -> &TrainData {
        &self.data
    }

    /// Which implementation runs the training steps.
    pub fn path(&self) -> TrainPath {
        if self.fast.is_some() {
            TrainPath::Fast
        } else {
            TrainPath::Reference
        }
    }

    /// Inner steps taken since creation, over all rounds.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// Trains with DP-SGD from now on (see [`crate::privacy::dpsgd`]).
    pub fn set_private(&mut self, dp: crate::privacy::DpSgd) -> Result<(), TrainError> {
        // The fast step clips the MLP's examples; other models clip on candle's autograd.
        if !self.fast.as_ref().is_some_and(FastTrainer::clips_per_example) {
            self.fast = None;
            if self.reference.is_none() {
                self.reference = Some(Reference::new(&self.spec, &self.rule, &self.device)?);
            }
        }
        self.private = Some(dp);
        Ok(())
    }

    /// candle's model and optimizer: present whenever the fast path is not.
    fn reference(&mut self) -> Result<&mut Reference, TrainError> {
        match self.reference {
            Some(ref mut reference) => Ok(reference),
            None => Err(no_reference()),
        }
    }

    /// Runs `steps` steps on candle's model from its current parameters;
    /// returns the mean loss.
    fn run_steps(&mut self, steps: u64) -> Result<f32, TrainError> {
        let Some(Reference { model, optimizer }) = self.reference.as_mut() else {
            return Err(no_reference());
        };
        if let Some(dp) = self.private.as_mut() {
            let InnerStepper::Fused(optimizer) = optimizer else {
                return Err(TrainError::DataMismatch(
                    "differential privacy trains on the CPU only; leave out --device".into(),
                ));
            };
            return dp.run_steps(model, &self.data, optimizer, steps, &mut self.steps_done);
        }
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        let mut tokens = Vec::new();
        let mut next = Vec::new();
        let mut loss_sum = 0f64;
        let batch_size = self.batch_size;
        for _ in 0..steps {
            // Rows of one micro-batch: the language models' batch is split so
            // that autograd keeps the activations of `micro_batch_tokens` at most.
            let rows = match &self.data {
                TrainData::Labelled(data) => {
                    self.sampler.fill(data, batch_size, &mut xs, &mut ys);
                    batch_size
                }
                TrainData::Text(corpus) => {
                    let t = lm_context(&self.spec, corpus)?;
                    tokens.clear();
                    next.clear();
                    for _ in 0..batch_size {
                        let start = self.sampler.next_start(corpus.tokens.len() - t);
                        let window = &corpus.tokens[start..start + t + 1];
                        tokens.extend_from_slice(&window[..t]);
                        next.extend_from_slice(&window[1..]);
                    }
                    (self.micro_batch_tokens / t).clamp(1, batch_size)
                }
            };
            let mut value = 0f64;
            let mut grads: Option<GradStore> = None;
            for first in (0..batch_size).step_by(rows) {
                let range = first..(first + rows).min(batch_size);
                let n = range.len();
                let batch = match &self.data {
                    TrainData::Labelled(data) => Batch::Labelled {
                        x: Tensor::from_slice(
                            &xs[range.start * data.dim..range.end * data.dim],
                            (n, data.dim),
                            &self.device,
                        )?,
                        y: Tensor::from_slice(&ys[range], n, &self.device)?,
                    },
                    TrainData::Text(_) => {
                        let t = tokens.len() / batch_size;
                        Batch::Tokens {
                            x: Tensor::from_slice(
                                &tokens[range.start * t..range.end * t],
                                (n, t),
                                &self.device,
                            )?,
                            y: Tensor::from_slice(
                                &next[range.start * t..range.end * t],
                                (n, t),
                                &self.device,
                            )?,
                        }
                    }
                };
                // Each micro-batch's mean loss weighs by its share of the rows,
                // so the summed gradients are the whole batch's.
                let share = n as f64 / batch_size as f64;
                let mut loss = model.training_loss(&batch)?;
                value += loss.to_scalar::<f32>()? as f64 * share;
                if n < batch_size {
                    loss = (loss * share)?;
                }
                let micro_grads = loss.backward()?;
                // The micro-batch's activations go before the next one and the update.
                drop((loss, batch));
                match grads.as_mut() {
                    None => grads = Some(micro_grads),
                    Some(sum) => sum.extend(micro_grads)?,
                }
            }
            let value = value as f32;
            self.steps_done += 1;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step: self.steps_done, loss: value });
            }
            loss_sum += value as f64;
            let grads = grads.expect("a batch has at least one row");
            match optimizer {
                InnerStepper::Fused(o) => o.step(&grads)?,
                InnerStepper::Candle(o) => o.step(&grads)?,
            }
        }
        Ok((loss_sum / steps as f64) as f32)
    }
}

impl Trainer {
    /// [`Self::run_steps`] on the hand-written step, over the parameters lent to
    /// it: same batches, same checks (DP-SGD's too).
    fn run_fast_steps(&mut self, steps: u64) -> Result<f32, TrainError> {
        let (Some(fast), TrainData::Labelled(data)) = (self.fast.as_mut(), &self.data) else {
            unreachable!("the fast path is only built for labelled data");
        };
        if let Some(dp) = self.private.as_mut() {
            return dp.run_fast_steps(fast, data, steps, &mut self.steps_done);
        }
        let mut xs = Vec::with_capacity(self.batch_size * data.dim);
        let mut ys = Vec::with_capacity(self.batch_size);
        let mut loss_sum = 0f64;
        for _ in 0..steps {
            self.sampler.fill(data, self.batch_size, &mut xs, &mut ys);
            let value = fast.loss_and_grad(&xs, &ys);
            self.steps_done += 1;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step: self.steps_done, loss: value });
            }
            loss_sum += value as f64;
            fast.apply_update();
        }
        Ok((loss_sum / steps as f64) as f32)
    }
}

/// Trains one model alone on `data` for `steps` steps from `initial`: the
/// centralized baseline and single-node baselines.
pub fn train_alone(
    spec: &RunSpec,
    data: impl Into<TrainData>,
    initial: &[f32],
    steps: u64,
    sampler_seed: u64,
) -> Result<Vec<f32>, TrainError> {
    let mut trainer = Trainer::new(spec, data, sampler_seed)?;
    let mut params = initial.to_vec();
    trainer.train_for(&mut params, steps)?;
    Ok(params)
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

    /// A uniform start position in `0..n` for a window of text.
    fn next_start(&mut self, n: usize) -> usize {
        below(&mut self.rng, n.max(1) as u64) as usize
    }

    /// The next `batch` labelled records into `xs`/`ys`.
    fn fill(&mut self, data: &crate::data::Dataset, batch: usize, xs: &mut Vec<f32>, ys: &mut Vec<u32>) {
        xs.clear();
        ys.clear();
        for _ in 0..batch {
            let i = self.next_index();
            xs.extend_from_slice(data.row(i));
            ys.push(data.labels[i]);
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
    use crate::data::{Dataset, SyntheticTask};
    use crate::datasets::Corpus;
    use crate::evaluation::{evaluate_mlp_fast, evaluate_with};
    use crate::model::Mlp;

    fn small_spec() -> RunSpec {
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::mlp(vec![32, 32, 10]);
        spec.dataset.samples_per_node = 512;
        spec.dataset.eval_samples = 512;
        spec.inner.steps = 20;
        spec.inner.batch_size = 32;
        spec.inner.lr = 5e-3;
        spec
    }

    fn setup(spec: &RunSpec) -> (Trainer, TrainData, Vec<f32>) {
        let task = SyntheticTask::new(spec).unwrap();
        let trainer = Trainer::new(spec, task.shard(0, spec.dataset.samples_per_node), 1).unwrap();
        let init = Mlp::initial_params(spec.model.mlp_layers().unwrap(), spec.seed);
        (trainer, task.eval_set().into(), init)
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
        let free = evaluate(&spec.model, &init, &eval).unwrap();
        assert_eq!(free, a.evaluate(&init, &eval).unwrap());
    }

    #[test]
    fn the_hand_written_evaluation_agrees_with_candles() {
        let mut spec = small_spec();
        // 600 rows: two full chunks of FAST_EVAL_ROWS and a partial one.
        spec.dataset.eval_samples = 600;
        let (mut t, eval, init) = setup(&spec);
        let trained = t.train_round(&init, 20).unwrap().params;
        let TrainData::Labelled(rows) = &eval else { unreachable!() };
        assert_eq!(rows.len(), 600);
        for params in [&init, &trained] {
            let fast = evaluate_mlp_fast(spec.model.mlp_layers().unwrap(), params, rows);
            let model = Model::new(&spec.model).unwrap();
            model.set_params(params).unwrap();
            let candle = evaluate_with(&model.detached().unwrap(), &eval).unwrap();
            assert!(
                (fast.loss - candle.loss).abs() < 1e-5 * candle.loss.max(1.0),
                "{fast:?} against {candle:?}"
            );
            assert!((fast.accuracy - candle.accuracy).abs() <= 1.0 / 600.0, "{fast:?} against {candle:?}");
        }
    }

    #[test]
    fn training_in_place_is_training_a_copy() {
        let spec = small_spec();
        let (mut a, _, init) = setup(&spec);
        let (mut b, _, _) = setup(&spec);
        let mut params = init.clone();
        for _ in 0..2 {
            let copied = a.train_round(&params, 7).unwrap();
            let stats = b.train_in_place(&mut params, 7).unwrap();
            assert_eq!(bits(&copied.params), bits(&params));
            assert_eq!((copied.samples, copied.mean_loss), (stats.samples, stats.mean_loss));
        }
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
        assert!(t.evaluate(&init, &empty.clone().into()).is_err());
        assert!(Trainer::new(&spec, empty, 0).is_err());
        let TrainData::Labelled(mut wrong) = eval.clone() else { panic!("labelled") };
        wrong.dim = 16;
        wrong.features.truncate(16 * wrong.len());
        assert!(matches!(t.evaluate(&init, &wrong.into()), Err(TrainError::DataMismatch(_))));
        let text = TrainData::Text(Corpus::from_bytes(b"hello"));
        assert!(matches!(t.evaluate(&init, &text), Err(TrainError::DataMismatch(_))));
        let mut huge = init.clone();
        huge.iter_mut().for_each(|v| *v = 1e30);
        assert!(matches!(t.train_round(&huge, 1), Err(TrainError::Diverged { step: 1, .. })));
    }

    #[test]
    fn a_gpt_learns_tokenized_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = crate::datasets::tests::gpt_text_spec(dir.path());
        spec.seed = 3;
        let w = crate::datasets::Workload::open(&spec, None).unwrap();
        let data = w.shard(crate::datasets::Shard { index: 0, count: 1 }, 1).unwrap();
        let mut trainer = Trainer::new(&spec, data.clone(), 1).unwrap();
        let mut params = crate::models::initial_params(&spec.model, spec.seed).unwrap();
        let before = trainer.evaluate(&params, &data).unwrap();
        for _ in 0..3 {
            params = trainer.train_round(&params, 10).unwrap().params;
        }
        let after = trainer.evaluate(&params, &data).unwrap();
        assert!(after.loss < before.loss * 0.8, "{before:?} -> {after:?}");
        assert!(after.perplexity() < before.perplexity());
        assert!((before.perplexity() - before.loss.exp()).abs() < 1e-3);
    }

    /// A batch split into micro-batches trains as the whole batch does, up to
    /// float rounding: same losses, same parameters. Under SGD: AdamW divides
    /// by each gradient's own size, which turns the rounding of a gradient that
    /// is zero in exact arithmetic (a key bias's) into a full-size step.
    #[test]
    fn micro_batches_train_as_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = crate::datasets::tests::gpt_text_spec(dir.path());
        spec.inner.optimizer = Some(starling_protocol::spec::InnerOptimizer::Sgd);
        spec.inner.momentum = Some(0.9);
        spec.inner.lr = 0.5;
        let w = crate::datasets::Workload::open(&spec, None).unwrap();
        let data = w.shard(crate::datasets::Shard { index: 0, count: 1 }, 1).unwrap();
        let init = crate::models::initial_params(&spec.model, spec.seed).unwrap();
        let run = |micro_batch_tokens: usize| {
            let mut trainer = Trainer::new(&spec, data.clone(), 1).unwrap();
            trainer.micro_batch_tokens = micro_batch_tokens;
            trainer.train_round(&init, 3).unwrap()
        };
        let context = match &spec.model {
            ModelSpec::Gpt(g) => g.context,
            other => panic!("a GPT spec, got {other:?}"),
        };
        assert!(spec.inner.batch_size >= 3, "the test needs a batch of several rows");
        let (whole, split) = (run(usize::MAX), run(context));
        assert!(
            (whole.mean_loss - split.mean_loss).abs() < 1e-4,
            "{} vs {}",
            whole.mean_loss,
            split.mean_loss
        );
        for (i, (a, b)) in whole.params.iter().zip(&split.params).enumerate() {
            assert!((a - b).abs() < 1e-5, "parameter {i}: {a} vs {b}");
        }
        assert_ne!(whole.params, init);
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
