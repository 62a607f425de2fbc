//! The error of training, evaluation and model set-up: one type that the
//! models, the trainer, DP-SGD and the initial weights all return, kept apart
//! so that none of them depends on another for it.

use crate::data::DataError;

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
    #[error("initial weights file {path} is not usable: {reason}; fix the spec's init or --init")]
    Init { path: String, reason: String },
}
