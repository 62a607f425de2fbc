//! Every model a RunSpec can name (MLP, CNN, byte-level transformer, GPT) behind one
//! type, with its parameters as one flat `f32` vector in a stable order.
//!
//! The MLP keeps its own canonical order (layer by layer, weight then bias, see
//! [`crate::model`]); the other models flatten their variables sorted by name,
//! never in the `VarMap`'s HashMap order.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use starling_protocol::ModelSpec;

use crate::data::{rng_for, uniform01};
use crate::error::TrainError;
use crate::model::Mlp;

pub mod cnn;
pub mod fused;
pub mod transformer;

// Keeps initial weights on a stream of their own, apart from the data's.
const TAG_INIT: u64 = 0x696e_6974_0000_0004;
/// Standard deviation of the transformer's embeddings at initialisation.
const EMBEDDING_STD: f64 = 0.02;

enum Arch {
    Mlp(Mlp),
    Cnn(cnn::Cnn),
    Transformer(transformer::Transformer),
}

/// A model of any kind, on one device.
pub struct Model {
    spec: ModelSpec,
    arch: Arch,
    /// The variables in canonical order, with their names.
    named: Vec<(String, Var)>,
}

/// One batch of inputs and targets.
pub enum Batch {
    /// Features `(n, dim)` f32 and class labels `(n)` u32.
    Labelled { x: Tensor, y: Tensor },
    /// Token ids `(n, t)` u32 and the next token of each `(n, t)` u32.
    Tokens { x: Tensor, y: Tensor },
}

impl Model {
    /// A model for `spec`, holding zeros until `set_params` loads parameters.
    pub fn new(spec: &ModelSpec) -> Result<Self, TrainError> {
        Self::new_on(spec, &Device::Cpu)
    }

    /// [`Model::new`] with its variables on `device` (a GPU with `--features cuda`).
    pub fn new_on(spec: &ModelSpec, device: &Device) -> Result<Self, TrainError> {
        let device = device.clone();
        let (arch, named) = match spec {
            ModelSpec::Mlp(m) => {
                let mlp = Mlp::new_on(&m.layers, &device)?;
                let named = {
                    let map = mlp.varmap().data().lock().map_err(|_| TrainError::Poisoned)?;
                    let mut named: Vec<(String, Var)> = Vec::with_capacity(mlp.vars().len());
                    for var in mlp.vars() {
                        let name = map
                            .iter()
                            .find(|(_, v)| v.as_tensor().id() == var.as_tensor().id())
                            .map(|(n, _)| n.clone())
                            .unwrap_or_default();
                        named.push((name, var.clone()));
                    }
                    named
                };
                (Arch::Mlp(mlp), named)
            }
            ModelSpec::Cnn(c) => {
                let varmap = VarMap::new();
                let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
                let arch = Arch::Cnn(cnn::Cnn::new(c, vb)?);
                (arch, sorted_vars(&varmap)?)
            }
            ModelSpec::Transformer(t) => {
                let varmap = VarMap::new();
                let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
                let arch = Arch::Transformer(transformer::Transformer::new(t, false, vb)?);
                (arch, sorted_vars(&varmap)?)
            }
            ModelSpec::Gpt(g) => {
                let varmap = VarMap::new();
                let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
                let arch = Arch::Transformer(transformer::Transformer::new(&g.dims(), true, vb)?);
                (arch, sorted_vars(&varmap)?)
            }
        };
        let model = Self { spec: spec.clone(), arch, named };
        let count = model.named.iter().map(|(_, v)| v.elem_count()).sum::<usize>();
        debug_assert_eq!(count, spec.param_count(), "the spec's count follows the architecture");
        Ok(model)
    }

    /// The same model over the same parameters (shared storage, not a copy),
    /// built from plain tensors instead of variables: candle records no graph
    /// through it, so a forward pass lets each activation go once used. For
    /// evaluation, where a graph would hold a whole step's activations.
    /// [`Self::set_params`] on either model changes both.
    pub fn detached(&self) -> Result<Self, TrainError> {
        let tensors = || -> std::collections::HashMap<String, Tensor> {
            self.named.iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect()
        };
        let device = self.named.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
        let vb = || VarBuilder::from_tensors(tensors(), DType::F32, &device);
        let arch = match (&self.spec, &self.arch) {
            (_, Arch::Mlp(mlp)) => Arch::Mlp(mlp.detached()),
            (ModelSpec::Cnn(c), _) => Arch::Cnn(cnn::Cnn::new(c, vb())?),
            (ModelSpec::Transformer(t), _) => {
                Arch::Transformer(transformer::Transformer::new(t, false, vb())?)
            }
            (ModelSpec::Gpt(g), _) => {
                Arch::Transformer(transformer::Transformer::new(&g.dims(), true, vb())?)
            }
            (ModelSpec::Mlp(_), _) => unreachable!("an MLP spec builds an MLP"),
        };
        Ok(Self { spec: self.spec.clone(), arch, named: self.named.clone() })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The variables in canonical order.
    pub fn vars(&self) -> Vec<Var> {
        self.named.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Names and variables in canonical order.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.named
    }

    /// All parameters, flattened in canonical order.
    pub fn params(&self) -> Result<Vec<f32>, TrainError> {
        let mut out = Vec::with_capacity(self.spec.param_count());
        for (_, var) in &self.named {
            out.extend(var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Loads `flat`, in canonical order, into the model's variables.
    pub fn set_params(&self, flat: &[f32]) -> Result<(), TrainError> {
        let expected = self.spec.param_count();
        if flat.len() != expected {
            return Err(TrainError::ParamCount { expected, got: flat.len() });
        }
        let mut offset = 0;
        for (_, var) in &self.named {
            let n = var.elem_count();
            var.set(&Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?)?;
            offset += n;
        }
        Ok(())
    }

    /// Logits: `(n, classes)` for a classifier, `(n, t, vocab)` for the language model.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.arch {
            Arch::Mlp(m) => m.forward(x),
            Arch::Cnn(c) => c.forward(x),
            Arch::Transformer(t) => t.forward(x),
        }
    }

    /// Mean cross-entropy of a batch, as training takes its gradient: the
    /// language models never hold their logits for it (see [`fused`]).
    pub fn training_loss(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        match (batch, &self.arch) {
            (Batch::Tokens { x, y }, Arch::Transformer(t)) => t.loss(x, y),
            _ => Ok(self.loss(batch)?.0),
        }
    }

    /// Mean cross-entropy of a batch, and how many predictions were right.
    pub fn loss(&self, batch: &Batch) -> candle_core::Result<(Tensor, Tensor)> {
        let (logits, y) = match batch {
            Batch::Labelled { x, y } => (self.forward(x)?, y.clone()),
            Batch::Tokens { x, y } => {
                let logits = self.forward(x)?;
                let (n, t, v) = logits.dims3()?;
                (logits.reshape((n * t, v))?, y.reshape(n * t)?)
            }
        };
        let loss = fused::cross_entropy(&logits, &y)?;
        let correct = logits.argmax(1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?;
        Ok((loss, correct))
    }
}

/// Deterministic initial parameters of `spec` in canonical order, drawn from `seed` alone.
///
/// The MLP keeps [`Mlp::initial_params`]. Otherwise, by name: biases zero, norm
/// weights one, embeddings `N(0, 0.02²)`-sized uniforms, and other weights uniform
/// in `±√(6/fan_in)` (CNN, ReLU) or `±√(3/fan_in)` (transformer, unit variance gain).
pub fn initial_params(spec: &ModelSpec, seed: u64) -> Result<Vec<f32>, TrainError> {
    if let ModelSpec::Mlp(m) = spec {
        return Ok(Mlp::initial_params(&m.layers, seed));
    }
    let model = Model::new(spec)?;
    let gain = if matches!(spec, ModelSpec::Cnn(_)) { 6.0 } else { 3.0 };
    let mut rng = rng_for(&[TAG_INIT, seed]);
    let mut out = Vec::with_capacity(spec.param_count());
    for (name, var) in model.named_vars() {
        let n = var.elem_count();
        let dims = var.dims();
        let bound = if name.ends_with(".bias") || name.contains("ln") {
            let value = if name.ends_with(".weight") { 1.0 } else { 0.0 };
            out.extend(std::iter::repeat_n(value, n));
            continue;
        } else if name.contains("emb") {
            EMBEDDING_STD * 3f64.sqrt()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            (gain / fan_in.max(1) as f64).sqrt()
        };
        out.extend((0..n).map(|_| ((2.0 * uniform01(&mut rng) - 1.0) * bound) as f32));
    }
    Ok(out)
}

fn sorted_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>, TrainError> {
    let map = varmap.data().lock().map_err(|_| TrainError::Poisoned)?;
    let mut named: Vec<(String, Var)> = map.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use starling_protocol::spec::{CnnSpec, GptSpec, TransformerSpec};

    fn cnn() -> ModelSpec {
        ModelSpec::Cnn(CnnSpec { input: [1, 8, 8], channels: vec![4, 8], classes: 3 })
    }

    fn lm() -> ModelSpec {
        ModelSpec::Transformer(TransformerSpec { vocab: 16, d_model: 16, heads: 2, layers: 2, context: 8 })
    }

    fn gpt() -> ModelSpec {
        ModelSpec::Gpt(GptSpec::sized(24, 16, 2, 2, 8))
    }

    fn pattern(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    #[test]
    fn flatten_and_restore_round_trip_in_name_order_for_every_kind() {
        for spec in [ModelSpec::mlp(vec![5, 7, 3]), cnn(), lm(), gpt()] {
            let (a, b) = (Model::new(&spec).unwrap(), Model::new(&spec).unwrap());
            let x = pattern(spec.param_count());
            a.set_params(&x).unwrap();
            b.set_params(&a.params().unwrap()).unwrap();
            assert_eq!(b.params().unwrap(), x, "{}", spec.kind());
            if !matches!(spec, ModelSpec::Mlp(_)) {
                let names: Vec<&String> = a.named_vars().iter().map(|(n, _)| n).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
            }
        }
    }

    /// The `lowrank` codec factors what the spec calls matrices: the spec's
    /// shapes must be the model's variables, in the flat order.
    #[test]
    fn the_specs_shapes_are_the_models_variables_in_order() {
        for spec in [ModelSpec::mlp(vec![5, 7, 3]), cnn(), lm(), gpt()] {
            let model = Model::new(&spec).unwrap();
            let dims: Vec<Vec<usize>> = model.named_vars().iter().map(|(_, v)| v.dims().to_vec()).collect();
            assert_eq!(dims, spec.shapes(), "{}", spec.kind());
        }
    }

    #[test]
    fn initial_params_are_seeded_and_sized() {
        for spec in [cnn(), lm(), gpt()] {
            let a = initial_params(&spec, 1).unwrap();
            assert_eq!(a.len(), spec.param_count());
            assert_eq!(a, initial_params(&spec, 1).unwrap());
            assert_ne!(a, initial_params(&spec, 2).unwrap());
        }
    }

    #[test]
    fn forward_shapes() {
        let dev = Device::Cpu;
        let c = Model::new(&cnn()).unwrap();
        let x = Tensor::zeros((5, 64), DType::F32, &dev).unwrap();
        assert_eq!(c.forward(&x).unwrap().dims(), &[5, 3]);
        let t = Model::new(&lm()).unwrap();
        let ids = Tensor::zeros((3, 8), DType::U32, &dev).unwrap();
        assert_eq!(t.forward(&ids).unwrap().dims(), &[3, 8, 16]);
        let short = Tensor::zeros((3, 5), DType::U32, &dev).unwrap();
        assert_eq!(t.forward(&short).unwrap().dims(), &[3, 5, 16]);
        let g = Model::new(&gpt()).unwrap();
        assert_eq!(g.forward(&ids).unwrap().dims(), &[3, 8, 24]);
        assert_eq!(g.forward(&short).unwrap().dims(), &[3, 5, 24]);
        let long = Tensor::zeros((1, 9), DType::U32, &dev).unwrap();
        assert!(g.forward(&long).is_err(), "9 tokens exceed a context of 8");
    }

    #[test]
    fn the_transformer_and_gpt_are_causal() {
        for spec in [lm(), gpt()] {
            let t = Model::new(&spec).unwrap();
            t.set_params(&initial_params(&spec, 3).unwrap()).unwrap();
            let a = Tensor::new(&[[1u32, 2, 3, 4, 5, 6, 7, 8]], &Device::Cpu).unwrap();
            let b = Tensor::new(&[[1u32, 2, 3, 4, 9, 9, 9, 9]], &Device::Cpu).unwrap();
            let (la, lb) = (t.forward(&a).unwrap(), t.forward(&b).unwrap());
            let head =
                |l: &Tensor| l.narrow(1, 0, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(head(&la), head(&lb), "{}: later tokens must not change earlier logits", spec.kind());
            let tail =
                |l: &Tensor| l.narrow(1, 4, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_ne!(tail(&la), tail(&lb), "{}: the changed tokens' own logits move", spec.kind());
        }
    }

    #[test]
    fn gpt_ties_its_head_to_the_token_embedding_and_presets_match_their_counts() {
        let g = Model::new(&gpt()).unwrap();
        let names: Vec<&str> = g.named_vars().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"tok_emb.weight") && !names.iter().any(|n| n.starts_with("head")),
            "{names:?}"
        );
        // Changing the embedding of token 5 changes every position's logit for token 5.
        let spec = gpt();
        let mut params = initial_params(&spec, 4).unwrap();
        g.set_params(&params).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let before = g.forward(&ids).unwrap().to_vec3::<f32>().unwrap();
        let offset: usize = g
            .named_vars()
            .iter()
            .take_while(|(n, _)| n != "tok_emb.weight")
            .map(|(_, v)| v.elem_count())
            .sum();
        params[offset + 5 * 16] += 1.0;
        g.set_params(&params).unwrap();
        let after = g.forward(&ids).unwrap().to_vec3::<f32>().unwrap();
        assert!((before[0][0][5] - after[0][0][5]).abs() > 1e-4);
        for name in ["lm-tiny", "lm-small"] {
            let spec = ModelSpec::Gpt(GptSpec::preset(name).unwrap());
            let model = Model::new(&spec).unwrap();
            let count: usize = model.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
            assert_eq!(count, spec.param_count(), "{name}");
        }
    }

    #[test]
    fn a_few_steps_reduce_the_loss() {
        let dev = Device::Cpu;
        // CNN: class = which quadrant is lit.
        let spec = cnn();
        let m = Model::new(&spec).unwrap();
        m.set_params(&initial_params(&spec, 1).unwrap()).unwrap();
        let mut xs = vec![0f32; 12 * 64];
        let ys: Vec<u32> = (0..12).map(|i| i % 3).collect();
        for (i, &y) in ys.iter().enumerate() {
            for p in 0..16 {
                xs[i * 64 + (y as usize) * 16 + p] = 1.0;
            }
        }
        let batch = Batch::Labelled {
            x: Tensor::from_vec(xs, (12, 64), &dev).unwrap(),
            y: Tensor::from_vec(ys, 12, &dev).unwrap(),
        };
        assert_learns(&m, &batch);
        // LM: a repeating sequence.
        let spec = lm();
        let m = Model::new(&spec).unwrap();
        m.set_params(&initial_params(&spec, 1).unwrap()).unwrap();
        let seq: Vec<u32> = (0..9 * 4).map(|i| (i % 5) as u32).collect();
        let x: Vec<u32> = (0..4).flat_map(|r| seq[r * 9..r * 9 + 8].to_vec()).collect();
        let y: Vec<u32> = (0..4).flat_map(|r| seq[r * 9 + 1..r * 9 + 9].to_vec()).collect();
        let batch = Batch::Tokens {
            x: Tensor::from_vec(x, (4, 8), &dev).unwrap(),
            y: Tensor::from_vec(y, (4, 8), &dev).unwrap(),
        };
        assert_learns(&m, &batch);
        let spec = gpt();
        let m = Model::new(&spec).unwrap();
        m.set_params(&initial_params(&spec, 1).unwrap()).unwrap();
        assert_learns(&m, &batch);
    }

    /// A detached model computes what its model does, shares its parameters
    /// and records no graph.
    #[test]
    fn a_detached_model_agrees_and_records_no_graph() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec((0..24u32).map(|i| i % 5).collect::<Vec<u32>>(), (3, 8), &dev).unwrap();
        let y =
            Tensor::from_vec((0..24u32).map(|i| (i + 1) % 5).collect::<Vec<u32>>(), (3, 8), &dev).unwrap();
        let batch = Batch::Tokens { x, y };
        for spec in [lm(), gpt()] {
            let m = Model::new(&spec).unwrap();
            let frozen = m.detached().unwrap();
            m.set_params(&initial_params(&spec, 2).unwrap()).unwrap();
            let (want, got) = (m.loss(&batch).unwrap().0, frozen.loss(&batch).unwrap().0);
            assert_eq!(want.to_scalar::<f32>().unwrap(), got.to_scalar::<f32>().unwrap(), "{}", spec.kind());
            assert!(want.track_op() && !got.track_op(), "{}", spec.kind());
        }
    }

    /// Trains on the loss training uses (for the GPT, the fused head and
    /// loss), which must equal the evaluated one.
    fn assert_learns(m: &Model, batch: &Batch) {
        let mut opt = AdamW::new(m.vars(), ParamsAdamW { lr: 1e-2, ..Default::default() }).unwrap();
        let first = m.loss(batch).unwrap().0.to_scalar::<f32>().unwrap();
        for _ in 0..20 {
            let (trained, evaluated) = (m.training_loss(batch).unwrap(), m.loss(batch).unwrap().0);
            let (a, b) = (trained.to_scalar::<f32>().unwrap(), evaluated.to_scalar::<f32>().unwrap());
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{}: training loss {a}, evaluated {b}",
                m.spec().kind()
            );
            opt.backward_step(&trained).unwrap();
        }
        let last = m.loss(batch).unwrap().0.to_scalar::<f32>().unwrap();
        assert!(last < first * 0.5, "{} loss {first} -> {last}", m.spec().kind());
    }
}
