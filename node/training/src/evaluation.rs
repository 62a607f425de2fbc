//! Evaluation of any parameters on any data: held-out loss and accuracy (and a
//! language model's perplexity), in chunks so memory stays small, by the
//! hand-written MLP forward pass or through a detached candle model; and the
//! checks that data and parameters fit a model, which training shares.

use candle_core::{Device, Tensor};
use starling_protocol::ModelSpec;

use crate::datasets::{Corpus, TrainData};
use crate::error::TrainError;
use crate::fast::fast_path_allowed;
use crate::models::{Batch, Model};

/// Rows per forward pass when evaluating: bounds memory whatever the data size.
const EVAL_CHUNK: usize = 1024;
/// Rows per forward pass of the hand-written MLP evaluation: its activations
/// stay in the tens of MB even at 10⁸ parameters.
const FAST_EVAL_ROWS: usize = 256;

/// Loss and accuracy of parameters on a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy per sample (per predicted token for the language
    /// model, in nats: its perplexity is `exp(loss)`).
    pub loss: f32,
    /// Fraction of samples (tokens) whose largest logit is the label, in `[0, 1]`.
    pub accuracy: f32,
}

impl Evaluation {
    /// `exp(loss)`: the language model's perplexity per token.
    pub fn perplexity(&self) -> f32 {
        self.loss.exp()
    }
}

/// Loss and accuracy of `params` for `model` on `data`, in chunks so memory
/// stays small. The MLP on labelled data is evaluated by the hand-written
/// forward pass over `params` itself (unless [`crate::fast::PATH_VAR`] asks
/// for the reference path); other models load a copy into candle's.
pub fn evaluate(model: &ModelSpec, params: &[f32], data: &TrainData) -> Result<Evaluation, TrainError> {
    check_fits(model, data)?;
    if data.is_empty() {
        return Err(TrainError::DataMismatch("cannot evaluate on an empty data set".into()));
    }
    let expected = model.param_count();
    if params.len() != expected {
        return Err(TrainError::ParamCount { expected, got: params.len() });
    }
    check_finite(params)?;
    match (model, data) {
        (ModelSpec::Mlp(mlp), TrainData::Labelled(data)) if fast_path_allowed() => {
            Ok(evaluate_mlp_fast(&mlp.layers, params, data))
        }
        _ => {
            let model = Model::new(model)?;
            model.set_params(params)?;
            evaluate_with(&model.detached()?, data)
        }
    }
}

/// [`evaluate`] by the hand-written MLP forward pass, [`FAST_EVAL_ROWS`] rows at a time.
pub(crate) fn evaluate_mlp_fast(layers: &[usize], params: &[f32], data: &crate::data::Dataset) -> Evaluation {
    let mut step =
        crate::fast::mlp::MlpStep::new(layers, crate::fast::Threads(candle_core::utils::get_num_threads()));
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for start in (0..data.len()).step_by(FAST_EVAL_ROWS) {
        let n = FAST_EVAL_ROWS.min(data.len() - start);
        let x = &data.features[start * data.dim..(start + n) * data.dim];
        let (loss, right) = step.loss_sum_and_correct(params, x, &data.labels[start..start + n]);
        loss_sum += loss;
        correct += right;
    }
    let count = data.len() as f64;
    Evaluation { loss: (loss_sum / count) as f32, accuracy: (correct as f64 / count) as f32 }
}

/// candle's evaluation of `model`, detached (see [`Model::detached`]).
pub(crate) fn evaluate_with(model: &Model, data: &TrainData) -> Result<Evaluation, TrainError> {
    let (mut loss_sum, mut correct, mut count) = (0f64, 0f64, 0f64);
    let mut add = |batch: Batch, n: usize| -> Result<(), TrainError> {
        let (loss, right) = model.loss(&batch)?;
        loss_sum += loss.to_scalar::<f32>()? as f64 * n as f64;
        correct += right.to_scalar::<f32>()? as f64;
        count += n as f64;
        Ok(())
    };
    match data {
        TrainData::Labelled(data) => {
            for start in (0..data.len()).step_by(EVAL_CHUNK) {
                let n = EVAL_CHUNK.min(data.len() - start);
                let x = Tensor::from_slice(
                    &data.features[start * data.dim..(start + n) * data.dim],
                    (n, data.dim),
                    &Device::Cpu,
                )?;
                let y = Tensor::from_slice(&data.labels[start..start + n], n, &Device::Cpu)?;
                add(Batch::Labelled { x, y }, n)?;
            }
        }
        TrainData::Text(corpus) => {
            // Non-overlapping windows, each predicting t next tokens.
            let t = lm_context(model.spec(), corpus)?;
            let windows = (corpus.tokens.len() - 1) / t;
            let per_chunk = (EVAL_CHUNK / t).max(1);
            for first in (0..windows).step_by(per_chunk) {
                let w = per_chunk.min(windows - first);
                let span = &corpus.tokens[first * t..(first + w) * t + 1];
                let x: Vec<u32> = span[..w * t].to_vec();
                let y: Vec<u32> = span[1..].to_vec();
                let batch = Batch::Tokens {
                    x: Tensor::from_vec(x, (w, t), &Device::Cpu)?,
                    y: Tensor::from_vec(y, (w, t), &Device::Cpu)?,
                };
                add(batch, w * t)?;
            }
        }
    }
    Ok(Evaluation { loss: (loss_sum / count) as f32, accuracy: (correct / count) as f32 })
}

/// The window length of the language model on `corpus`: its context, or less
/// when the corpus is shorter.
pub(crate) fn lm_context(model: &ModelSpec, corpus: &Corpus) -> Result<usize, TrainError> {
    let Some(context) = model.context() else {
        return Err(TrainError::DataMismatch(
            "text data needs model.kind = \"gpt\" or \"transformer\"".into(),
        ));
    };
    Ok(context.min(corpus.tokens.len() - 1))
}

/// Checks that `data` is well formed and fits the model's inputs and outputs.
pub(crate) fn check_fits(model: &ModelSpec, data: &TrainData) -> Result<(), TrainError> {
    match (data, model) {
        (TrainData::Labelled(data), _) => {
            data.validate()?;
            let (Some(input), Some(classes)) = (model.input_dim(), model.classes()) else {
                return Err(TrainError::DataMismatch(format!(
                    "labelled data needs a classifier, but model.kind is {}; use text:PATH for the language model",
                    model.kind()
                )));
            };
            if data.dim != input || data.classes != classes {
                return Err(TrainError::DataMismatch(format!(
                    "data has dim {} and {} classes, the model takes {} inputs and gives {} classes",
                    data.dim, data.classes, input, classes
                )));
            }
        }
        (TrainData::Text(corpus), ModelSpec::Transformer(t)) => {
            if t.vocab < 256 {
                return Err(TrainError::DataMismatch(format!(
                    "text is read as bytes, but model.vocab is {}; set it to 256",
                    t.vocab
                )));
            }
            check_tokens(corpus, t.vocab)?;
        }
        (TrainData::Text(corpus), ModelSpec::Gpt(g)) => check_tokens(corpus, g.vocab)?,
        (TrainData::Text(_), _) => {
            return Err(TrainError::DataMismatch(format!(
                "text data needs model.kind = \"gpt\" or \"transformer\", not {}",
                model.kind()
            )))
        }
    }
    Ok(())
}

/// At least two tokens, each below the model's vocabulary.
pub(crate) fn check_tokens(corpus: &Corpus, vocab: usize) -> Result<(), TrainError> {
    if corpus.tokens.len() < 2 {
        return Err(TrainError::DataMismatch("the text has fewer than 2 tokens".into()));
    }
    match corpus.tokens.iter().max() {
        Some(&max) if max as usize >= vocab => Err(TrainError::DataMismatch(format!(
            "the text has token id {max}, but model.vocab is {vocab}; the tokenizer is not the model's"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn check_finite(params: &[f32]) -> Result<(), TrainError> {
    match params.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(TrainError::NonFinite { index, value: params[index] }),
        None => Ok(()),
    }
}
