//! A run's initial parameters: seeded from the spec, or read from the safetensors
//! file the spec names (`init = { path, blake3 }`), checked against its hash so
//! every node starts from the same weights.

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor};
use starling_protocol::{InitSpec, ModelSpec, RunSpec};

use crate::error::TrainError;
use crate::models::{initial_params as seeded, Model};

/// The parameters of round 0, in canonical order.
pub fn initial_params(spec: &RunSpec) -> Result<Vec<f32>, TrainError> {
    match &spec.init {
        None => seeded(&spec.model, spec.seed),
        Some(init) => load(spec, init),
    }
}

/// The BLAKE3 hash (hex) of a file, as `init.blake3` wants it.
pub fn file_hash(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// An `InitSpec` for `path`, with its hash.
pub fn init_spec(path: &Path) -> Result<InitSpec, TrainError> {
    Ok(InitSpec { path: path.display().to_string(), blake3: file_hash(path)? })
}

/// Writes `params` of `spec`'s model as safetensors, one tensor per variable name.
pub fn save(spec: &RunSpec, params: &[f32], path: &Path) -> Result<(), TrainError> {
    let bytes = encode(spec, params, None)?;
    std::fs::write(path, bytes).map_err(|e| bad(path, e.to_string()))
}

/// Names and shapes of `model`'s tensors in the order of its flat parameter
/// vector: what a checkpoint file names its tensors. An MLP's is computed from
/// its widths; other models are built once (zeros) to read theirs.
pub fn layout(model: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>, TrainError> {
    if let Some(layers) = model.mlp_layers() {
        let mut out = Vec::with_capacity(2 * layers.len());
        for (i, w) in layers.windows(2).enumerate() {
            out.push((format!("l{i:02}.weight"), vec![w[1], w[0]]));
            out.push((format!("l{i:02}.bias"), vec![w[1]]));
        }
        return Ok(out);
    }
    Ok(Model::new(model)?.named_vars().iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect())
}

/// The safetensors metadata key of the run id a model belongs to.
pub const RUN_ID_KEY: &str = "starling.run_id";
/// The safetensors metadata key of the round (merges) a model is the state of.
pub const ROUND_KEY: &str = "starling.round";

/// `params` of `spec`'s model as the bytes of a safetensors file (what
/// [`save`] writes, and what a running node serves at `/model.safetensors`);
/// its metadata names the run and, when given, the round.
pub fn encode(spec: &RunSpec, params: &[f32], round: Option<u64>) -> Result<Vec<u8>, TrainError> {
    let model = Model::new(&spec.model)?;
    model.set_params(params)?;
    let tensors: HashMap<String, Tensor> =
        model.named_vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let mut metadata = HashMap::from([(RUN_ID_KEY.to_string(), spec.run_id().to_string())]);
    if let Some(round) = round {
        metadata.insert(ROUND_KEY.to_string(), round.to_string());
    }
    safetensors::serialize(&tensors, Some(metadata))
        .map_err(|e| TrainError::DataMismatch(format!("safetensors: {e}")))
}

fn load(spec: &RunSpec, init: &InitSpec) -> Result<Vec<f32>, TrainError> {
    let path = Path::new(&init.path);
    let hash = file_hash(path)?;
    if hash != init.blake3.to_ascii_lowercase() {
        return Err(bad(
            path,
            format!("its BLAKE3 hash is {hash}, the spec's init.blake3 says {}", init.blake3),
        ));
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(path, e.to_string()))?;
    let model = Model::new(&spec.model)?;
    let mut out = Vec::with_capacity(spec.param_count());
    for (name, var) in model.named_vars() {
        let t =
            tensors.get(name).ok_or_else(|| bad(path, format!("tensor `{name}` of the model is missing")))?;
        if t.dims() != var.dims() {
            return Err(bad(
                path,
                format!("tensor `{name}` has shape {:?}, the model needs {:?}", t.dims(), var.dims()),
            ));
        }
        let t = t.to_dtype(candle_core::DType::F32).map_err(|e| bad(path, e.to_string()))?;
        out.extend(t.flatten_all()?.to_vec1::<f32>()?);
    }
    if let Some((index, value)) = out.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(TrainError::NonFinite { index, value: *value });
    }
    Ok(out)
}

fn bad(path: &Path, reason: String) -> TrainError {
    TrainError::Init { path: path.display().to_string(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::spec::CnnSpec;

    #[test]
    fn the_layout_is_the_models_own_order_names_and_shapes() {
        for model in [
            ModelSpec::mlp(vec![4, 3, 2]),
            ModelSpec::Cnn(CnnSpec { input: [1, 8, 8], channels: vec![4], classes: 3 }),
        ] {
            let built = Model::new(&model).unwrap();
            let expected: Vec<(String, Vec<usize>)> =
                built.named_vars().iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
            assert_eq!(layout(&model).unwrap(), expected);
        }
    }

    #[test]
    fn saved_weights_load_back_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.safetensors");
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::mlp(vec![4, 3, 2]);
        let params: Vec<f32> = (0..spec.param_count()).map(|i| i as f32 * 0.1).collect();
        save(&spec, &params, &path).unwrap();
        spec.init = Some(init_spec(&path).unwrap());
        assert_eq!(initial_params(&spec).unwrap(), params);

        let mut wrong_hash = spec.clone();
        wrong_hash.init.as_mut().unwrap().blake3 = "0".repeat(64);
        assert!(initial_params(&wrong_hash).unwrap_err().to_string().contains("BLAKE3"));

        let mut other = spec.clone();
        other.model = ModelSpec::mlp(vec![5, 3, 2]);
        let err = initial_params(&other).unwrap_err().to_string();
        assert!(
            err.contains("init.safetensors") && err.contains("l00.weight") && err.contains("[3, 5]"),
            "{err}"
        );
        let mut deeper = spec.clone();
        deeper.model = ModelSpec::mlp(vec![4, 3, 2, 2]);
        assert!(initial_params(&deeper)
            .unwrap_err()
            .to_string()
            .contains("`l02.weight` of the model is missing"));
    }
}
