//! The model every node trains: an MLP of candle-nn `Linear` layers with ReLU
//! between them, and its parameters as one flat `f32` vector in a canonical order.
//!
//! The canonical order is layer by layer, each layer's weight (`out × in`,
//! row-major) then its bias: the order of `RunSpec::param_count`'s sum. Every
//! node, every delta and every checkpoint uses it.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarMap};

use crate::data::{rng_for, uniform01};
use crate::error::TrainError;

// Keeps initial weights on a stream of their own, apart from the data's.
const TAG_INIT: u64 = 0x696e_6974_0000_0004;

/// A multilayer perceptron on the CPU whose variables live in a `VarMap`.
pub struct Mlp {
    layers: Vec<usize>,
    varmap: VarMap,
    /// The variables in canonical order: `l00.weight`, `l00.bias`, `l01.weight`, ...
    vars: Vec<Var>,
    linears: Vec<Linear>,
}

impl Mlp {
    /// A model of widths `layers` (input, hidden..., classes), holding
    /// `initial_params(layers, 0)` until `set_params` loads others.
    pub fn new(layers: &[usize]) -> Result<Self, TrainError> {
        Self::new_on(layers, &Device::Cpu)
    }

    /// [`Mlp::new`] with its variables on `device`.
    pub fn new_on(layers: &[usize], device: &Device) -> Result<Self, TrainError> {
        check_layers(layers)?;
        let device = device.clone();
        let varmap = VarMap::new();
        let mut vars = Vec::with_capacity(2 * (layers.len() - 1));
        let mut linears = Vec::with_capacity(layers.len() - 1);
        {
            let mut named = varmap.data().lock().map_err(|_| TrainError::Poisoned)?;
            for (i, w) in layers.windows(2).enumerate() {
                let (fan_in, fan_out) = (w[0], w[1]);
                let weight = Var::zeros((fan_out, fan_in), DType::F32, &device)?;
                let bias = Var::zeros(fan_out, DType::F32, &device)?;
                named.insert(format!("{}.weight", layer_name(i)), weight.clone());
                named.insert(format!("{}.bias", layer_name(i)), bias.clone());
                linears.push(Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone())));
                vars.push(weight);
                vars.push(bias);
            }
        }
        let mlp = Self { layers: layers.to_vec(), varmap, vars, linears };
        mlp.set_params(&Self::initial_params(layers, 0))?;
        Ok(mlp)
    }

    /// Deterministic initial parameters in canonical order: weights Kaiming-uniform
    /// for ReLU (`U(±√(6/fan_in))`), biases zero, all drawn from `seed` alone.
    /// Returns an empty vector for layers with fewer than two widths.
    pub fn initial_params(layers: &[usize], seed: u64) -> Vec<f32> {
        let mut rng = rng_for(&[TAG_INIT, seed]);
        let mut out = Vec::with_capacity(Self::param_count(layers));
        for w in layers.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = (6.0 / fan_in.max(1) as f64).sqrt();
            out.extend((0..fan_in * fan_out).map(|_| ((2.0 * uniform01(&mut rng) - 1.0) * bound) as f32));
            out.extend(std::iter::repeat_n(0f32, fan_out));
        }
        out
    }

    /// Number of parameters; equals `RunSpec::param_count` for the same layers.
    pub fn param_count(layers: &[usize]) -> usize {
        layers.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// All parameters, flattened in canonical order.
    pub fn params(&self) -> Result<Vec<f32>, TrainError> {
        let mut out = Vec::with_capacity(Self::param_count(&self.layers));
        for var in &self.vars {
            out.extend(var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Loads `flat`, in canonical order, into the model's variables.
    pub fn set_params(&self, flat: &[f32]) -> Result<(), TrainError> {
        let expected = Self::param_count(&self.layers);
        if flat.len() != expected {
            return Err(TrainError::ParamCount { expected, got: flat.len() });
        }
        let mut offset = 0;
        for var in &self.vars {
            let n = var.elem_count();
            let value = Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?;
            var.set(&value)?;
            offset += n;
        }
        Ok(())
    }

    /// Logits for a batch `x` of shape `(batch, layers[0])`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, linear) in self.linears.iter().enumerate() {
            h = linear.forward(&h)?;
            if i + 1 < self.linears.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// The name→variable store (for saving as safetensors, or for an optimizer).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The same network over the same storage, its layers built from plain
    /// tensors instead of variables, so candle records no graph through it.
    pub fn detached(&self) -> Self {
        let linears = self
            .vars
            .chunks_exact(2)
            .map(|wb| Linear::new(wb[0].as_tensor().detach(), Some(wb[1].as_tensor().detach())))
            .collect();
        Self { layers: self.layers.clone(), varmap: self.varmap.clone(), vars: self.vars.clone(), linears }
    }

    /// The variables in canonical order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }
}

/// Names sort lexically in layer order for up to 100 layers.
fn layer_name(i: usize) -> String {
    format!("l{i:02}")
}

fn check_layers(layers: &[usize]) -> Result<(), TrainError> {
    let reason = if layers.len() < 2 {
        "needs at least an input and an output width"
    } else if layers.contains(&0) {
        "every width must be at least 1"
    } else {
        return Ok(());
    };
    Err(TrainError::BadLayers { layers: layers.to_vec(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::RunSpec;

    const LAYERS: [usize; 4] = [5, 7, 3, 4];

    fn pattern(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin() * 1e-3 + i as f32).collect()
    }

    #[test]
    fn set_then_get_round_trips_bit_for_bit() {
        let mlp = Mlp::new(&LAYERS).unwrap();
        let x = pattern(Mlp::param_count(&LAYERS));
        mlp.set_params(&x).unwrap();
        let back = mlp.params().unwrap();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn order_is_stable_across_instances_and_canonical() {
        let x = pattern(Mlp::param_count(&LAYERS));
        let (a, b) = (Mlp::new(&LAYERS).unwrap(), Mlp::new(&LAYERS).unwrap());
        a.set_params(&x).unwrap();
        b.set_params(&x).unwrap();
        assert_eq!(a.params().unwrap(), b.params().unwrap());
        // The first layer's weight comes first, row-major (out × in), then its bias.
        let named = a.varmap().data().lock().unwrap();
        let w0 = named["l00.weight"].as_tensor().to_vec2::<f32>().unwrap();
        assert_eq!(w0[1][0], x[5]);
        let b0 = named["l00.bias"].as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(b0[..], x[35..42]);
        let b2 = named["l02.bias"].as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(b2[..], x[x.len() - 4..]);
    }

    #[test]
    fn param_count_matches_the_run_spec() {
        let mut spec = RunSpec::builtin();
        assert_eq!(Mlp::param_count(spec.model.mlp_layers().unwrap()), spec.param_count());
        spec.model = starling_protocol::ModelSpec::mlp(LAYERS.to_vec());
        assert_eq!(Mlp::param_count(&LAYERS), spec.param_count());
        assert_eq!(Mlp::new(&LAYERS).unwrap().params().unwrap().len(), spec.param_count());
    }

    #[test]
    fn initial_params_are_seeded_kaiming_with_zero_biases() {
        let a = Mlp::initial_params(&LAYERS, 1);
        assert_eq!(a, Mlp::initial_params(&LAYERS, 1));
        assert_ne!(a, Mlp::initial_params(&LAYERS, 2));
        assert_eq!(a.len(), Mlp::param_count(&LAYERS));
        let bound = (6.0f32 / 5.0).sqrt();
        assert!(a[..35].iter().all(|w| w.abs() <= bound && *w != 0.0));
        assert!(a[35..42].iter().all(|&b| b == 0.0));
    }

    #[test]
    fn a_wrong_length_is_refused_with_both_counts() {
        let mlp = Mlp::new(&LAYERS).unwrap();
        let err = mlp.set_params(&[0.0; 3]).unwrap_err();
        assert!(matches!(err, TrainError::ParamCount { expected: 82, got: 3 }), "{err}");
    }

    #[test]
    fn bad_layers_are_refused() {
        assert!(matches!(Mlp::new(&[4]), Err(TrainError::BadLayers { .. })));
        assert!(Mlp::new(&[4, 0, 2]).is_err());
        assert!(Mlp::initial_params(&[4], 0).is_empty());
    }

    #[test]
    fn forward_gives_logits_per_class_with_relu_between_layers() {
        let mlp = Mlp::new(&[2, 2, 1]).unwrap();
        // Hidden = relu(I·x), out = [1, 1]·hidden + 0.5.
        mlp.set_params(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.5]).unwrap();
        let x = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let y = mlp.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![1.5], vec![7.5]]);
    }
}
