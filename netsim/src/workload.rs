//! What simulated nodes train: a cheap quadratic with a known optimum, or the
//! node's real candle model on the built-in task.
//!
//! A [`Task`] is shared by all nodes (initial parameters, evaluation); each
//! node owns a [`NodeModel`] (its data shard, optimizer state and sampler),
//! which is moved into a training job and handed back, so jobs of different
//! nodes can run on different threads while the result of each depends only on
//! its inputs.

use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use starling_protocol::{PublicKey, RunSpec};
use starling_training::{
    data::SyntheticTask,
    datasets::{shard_seed, TrainData},
    trainer::Trainer,
};

use crate::scenario::{Scenario, Workload};

/// How good a parameter vector is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    pub loss: f64,
    /// For classification workloads.
    pub accuracy: Option<f64>,
}

/// One round of local training.
pub struct Trained {
    pub params: Vec<f32>,
    pub samples: u64,
}

/// A node's own trainer.
pub trait NodeModel: Send {
    /// Trains from `start` for one round and returns the new parameters.
    fn train(&mut self, start: &[f32]) -> Result<Trained, String>;
}

/// The workload shared by every node.
pub trait Task: Sync {
    fn initial_params(&self) -> Vec<f32>;
    /// The trainer of node `index` with identity `key` (its shard follows from
    /// them); a `poisoned` node trains on flipped labels (a label-flipping attacker).
    fn node_model(&self, index: usize, key: &PublicKey, poisoned: bool)
        -> Result<Box<dyn NodeModel>, String>;
    fn evaluate(&self, params: &[f32]) -> Result<Score, String>;
    /// Whether every node can be evaluated each round (cheap), or only a sample.
    fn cheap_to_evaluate(&self) -> bool;
    /// The most samples one node trains in a round: a delta claiming more is refused.
    fn max_samples(&self) -> u64;
    /// The model's weight matrices (what `lowrank` factors); none for a flat vector.
    fn matrices(&self) -> Vec<starling_protocol::Matrix> {
        Vec::new()
    }
}

/// Builds the scenario's task.
pub fn task(scenario: &Scenario) -> Result<Box<dyn Task>, String> {
    match &scenario.workload {
        Workload::Quadratic { dim, spread, noise, inner_steps, inner_lr } => {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(scenario.seed ^ 0x9E37_79B9_7F4A_7C15);
            let optimum = (0..*dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            Ok(Box::new(Quadratic {
                seed: scenario.seed,
                optimum,
                spread: *spread,
                noise: *noise,
                steps: *inner_steps,
                lr: *inner_lr,
            }))
        }
        Workload::Candle { .. } => {
            let spec = candle_spec(&scenario.workload, RunSpec::builtin())?;
            let data = SyntheticTask::new(&spec).map_err(|e| e.to_string())?;
            let eval = data.eval_set().into();
            let initial = starling_training::models::initial_params(&spec.model, spec.seed)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(Candle { spec, data, eval, initial }))
        }
    }
}

/// `base` with the candle workload's overrides (shard and eval sizes, inner steps), validated.
pub fn candle_spec(workload: &Workload, base: RunSpec) -> Result<RunSpec, String> {
    let Workload::Candle { samples_per_node, eval_samples, inner_steps, .. } = workload else {
        return Err("the workload is not candle".into());
    };
    let mut spec = base;
    spec.dataset.samples_per_node = samples_per_node.unwrap_or(spec.dataset.samples_per_node);
    spec.dataset.eval_samples = eval_samples.unwrap_or(spec.dataset.eval_samples);
    spec.inner.steps = inner_steps.unwrap_or(spec.inner.steps);
    spec.validate().map_err(|e| format!("the scenario makes an invalid spec: {e}"))?;
    Ok(spec)
}

/// Node i minimises ½‖θ − θ*ᵢ‖², θ*ᵢ = θ* + spread·ξᵢ, with noisy gradients.
struct Quadratic {
    seed: u64,
    optimum: Vec<f32>,
    spread: f32,
    noise: f32,
    steps: u32,
    lr: f32,
}

struct QuadraticNode {
    optimum: Vec<f32>,
    noise: f32,
    steps: u32,
    lr: f32,
    rng: Xoshiro256PlusPlus,
}

impl Task for Quadratic {
    fn initial_params(&self) -> Vec<f32> {
        vec![0.0; self.optimum.len()]
    }

    fn node_model(
        &self,
        index: usize,
        _key: &PublicKey,
        poisoned: bool,
    ) -> Result<Box<dyn NodeModel>, String> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed.wrapping_mul(1_000_003) ^ index as u64);
        // Mean-zero offsets (a symmetric ±1 draw), so the swarm's optimum is θ*.
        // Poisoned data points the other way.
        let sign = if poisoned { -1.0 } else { 1.0 };
        let optimum =
            self.optimum.iter().map(|o| sign * (o + self.spread * rng.random_range(-1.0f32..1.0))).collect();
        Ok(Box::new(QuadraticNode { optimum, noise: self.noise, steps: self.steps, lr: self.lr, rng }))
    }

    /// Relative squared distance to the optimum, ‖θ − θ*‖² / ‖θ*‖².
    fn evaluate(&self, params: &[f32]) -> Result<Score, String> {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (p, o) in params.iter().zip(&self.optimum) {
            num += ((p - o) as f64).powi(2);
            den += (*o as f64).powi(2);
        }
        Ok(Score { loss: num / den.max(f64::MIN_POSITIVE), accuracy: None })
    }

    fn cheap_to_evaluate(&self) -> bool {
        true
    }

    fn max_samples(&self) -> u64 {
        u64::from(self.steps)
    }
}

impl NodeModel for QuadraticNode {
    fn train(&mut self, start: &[f32]) -> Result<Trained, String> {
        let mut theta = start.to_vec();
        for _ in 0..self.steps {
            for (t, o) in theta.iter_mut().zip(&self.optimum) {
                // A uniform draw scaled to the requested standard deviation.
                let noise = self.noise * 1.732_050_8 * self.rng.random_range(-1.0f32..1.0);
                *t -= self.lr * (*t - o + noise);
            }
        }
        Ok(Trained { params: theta, samples: self.steps as u64 })
    }
}

/// The built-in task and the node's real MLP, trained with candle.
struct Candle {
    spec: RunSpec,
    data: SyntheticTask,
    eval: TrainData,
    initial: Vec<f32>,
}

struct CandleNode {
    trainer: Trainer,
    steps: u32,
}

impl Task for Candle {
    fn matrices(&self) -> Vec<starling_protocol::Matrix> {
        self.spec.model.matrices()
    }

    fn initial_params(&self) -> Vec<f32> {
        self.initial.clone()
    }

    /// The same shard as node `key` of `starling swarm` trains on.
    fn node_model(
        &self,
        _index: usize,
        key: &PublicKey,
        poisoned: bool,
    ) -> Result<Box<dyn NodeModel>, String> {
        let shard_seed = shard_seed(key);
        let mut shard = self.data.shard(shard_seed, self.spec.dataset.samples_per_node);
        if poisoned {
            let classes = shard.classes as u32;
            shard.labels.iter_mut().for_each(|l| *l = classes - 1 - *l);
        }
        let trainer = Trainer::new(&self.spec, shard, shard_seed).map_err(|e| e.to_string())?;
        Ok(Box::new(CandleNode { trainer, steps: self.spec.inner.steps }))
    }

    fn evaluate(&self, params: &[f32]) -> Result<Score, String> {
        let e = starling_training::trainer::evaluate(&self.spec.model, params, &self.eval)
            .map_err(|e| e.to_string())?;
        Ok(Score { loss: e.loss as f64, accuracy: Some(e.accuracy as f64) })
    }

    fn cheap_to_evaluate(&self) -> bool {
        false
    }

    fn max_samples(&self) -> u64 {
        self.spec.delta_rules().max_samples
    }
}

impl NodeModel for CandleNode {
    fn train(&mut self, start: &[f32]) -> Result<Trained, String> {
        let outcome = self.trainer.train_round(start, self.steps).map_err(|e| e.to_string())?;
        Ok(Trained { params: outcome.params, samples: outcome.samples })
    }
}
