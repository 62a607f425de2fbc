//! The built-in data: a seeded synthetic classification task whose labels come
//! from a fixed nonlinear teacher, and the in-memory `Dataset` nodes train on.
//!
//! Everything here is reproducible bit for bit on any platform: randomness comes
//! from `Xoshiro256PlusPlus` seeded through a fixed mixing function, and normals
//! are drawn with Box-Muller over hand-written `ln`/`sin`/`cos` that use only
//! IEEE-exact arithmetic, so no platform libm can change a sample.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use starling_protocol::RunSpec;

/// Why data could not be built or combined.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("model.layers {layers:?} cannot define the synthetic task: {reason}")]
    BadLayers { layers: Vec<usize>, reason: &'static str },
    #[error("cannot concatenate zero datasets: pass at least one part")]
    NoParts,
    #[error("dataset part {index} has {what} {got}, but the first part has {expected}; only datasets of one task can be concatenated")]
    Mismatch { index: usize, what: &'static str, expected: usize, got: usize },
    #[error("dataset is malformed: {0}")]
    Malformed(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: std::path::PathBuf, reason: String },
    #[error("data file {path} is not usable: {reason}")]
    BadFile { path: std::path::PathBuf, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// Labelled samples held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major inputs, `len() * dim` values.
    pub features: Vec<f32>,
    /// One class index in `0..classes` per sample.
    pub labels: Vec<u32>,
    pub dim: usize,
    pub classes: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The inputs of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Checks that the fields agree with each other; data that arrives from outside
    /// this module (a file, a caller's struct literal) should pass this before use.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.dim == 0 || self.classes == 0 {
            return Err(DataError::Malformed(format!(
                "dim {} and classes {} must both be at least 1",
                self.dim, self.classes
            )));
        }
        if self.features.len() != self.labels.len() * self.dim {
            return Err(DataError::Malformed(format!(
                "{} feature values for {} samples of dim {}",
                self.features.len(),
                self.labels.len(),
                self.dim
            )));
        }
        if let Some(&bad) = self.labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(DataError::Malformed(format!(
                "label {bad} is out of range for {} classes",
                self.classes
            )));
        }
        Ok(())
    }

    /// All samples of `parts`, in order. The parts must share `dim` and `classes`.
    pub fn concat(parts: &[Dataset]) -> Result<Dataset, DataError> {
        let first = parts.first().ok_or(DataError::NoParts)?;
        for (index, part) in parts.iter().enumerate() {
            for (what, expected, got) in
                [("dim", first.dim, part.dim), ("classes", first.classes, part.classes)]
            {
                if expected != got {
                    return Err(DataError::Mismatch { index, what, expected, got });
                }
            }
        }
        Ok(Dataset {
            features: parts.iter().flat_map(|p| p.features.iter().copied()).collect(),
            labels: parts.iter().flat_map(|p| p.labels.iter().copied()).collect(),
            dim: first.dim,
            classes: first.classes,
        })
    }
}

/// The teacher has one `|·|` unit per this many inputs. More units make the task
/// need more data; at 2, the MLP learns it from four shards but not from one.
const INPUTS_PER_TEACHER_UNIT: usize = 2;
/// Weight of the teacher's linear path against its nonlinear path (each gives every
/// logit unit variance). Zero would leave a linear model near chance.
const TEACHER_LINEAR_WEIGHT: f64 = 1.0;
/// Inputs whose two largest teacher logits are closer than this are redrawn, which
/// keeps the labels learnable to a high accuracy rather than capped by samples that
/// sit on a decision boundary.
const MARGIN: f64 = 0.3;
/// Redraws allowed per sample: with many classes margins shrink, and the task must
/// still be drawn in bounded time (the last draw is kept).
const MAX_DRAWS: usize = 16;

// Domain tags that keep the teacher, the shards and the eval set on separate streams.
const TAG_TEACHER: u64 = 0x7465_6163_6865_7201;
const TAG_SHARD: u64 = 0x7368_6172_6400_0002;
const TAG_EVAL: u64 = 0x6576_616c_0000_0003;

/// The built-in task: inputs `x ~ N(0, I)` of width `layers[0]`, labelled with the
/// argmax over `layers.last()` classes of a fixed random teacher
///
/// `logit_c(x) = a·⟨u_c, x⟩ + Σ_j v_cj (|⟨w_j, x⟩| − √(2/π)) / √(H(1 − 2/π))`
///
/// with `a = 1` and `H = ⌈layers[0] / 2⌉` units, whose even part (the `|·|` units) no
/// linear model can fit and whose odd part gives a linear model something to learn.
/// Inputs within `MARGIN` of a decision boundary are redrawn. The teacher depends
/// on `spec.seed` only, so every node labels alike.
///
/// On the built-in spec, trained alone with its inner AdamW, this gives about 90%
/// held-out accuracy for the MLP on four shards, about 72% on one shard, and about
/// 55% for a linear model (`examples/task_difficulty.rs` prints the figures).
#[derive(Clone, Debug)]
pub struct SyntheticTask {
    seed: u64,
    dim: usize,
    classes: usize,
    hidden: usize,
    eval_samples: usize,
    /// `hidden × dim`, rows of norm ≈ 1 so each `⟨w_j, x⟩ ~ N(0, 1)`.
    w: Vec<f64>,
    /// `classes × dim`, the linear path, scaled likewise.
    u: Vec<f64>,
    /// `classes × hidden`, standard normal.
    v: Vec<f64>,
}

impl SyntheticTask {
    /// The task of `spec`: its shape from the model's input width and classes, its teacher from `spec.seed`.
    pub fn new(spec: &RunSpec) -> Result<Self, DataError> {
        let layers = spec.model.mlp_layers().map(<[usize]>::to_vec).unwrap_or_default();
        let bad = |reason| DataError::BadLayers { layers: layers.clone(), reason };
        let (dim, classes) = match (spec.model.input_dim(), spec.model.classes()) {
            (Some(d), Some(c)) if spec.model.mlp_layers().is_none_or(|l| l.len() >= 2) => (d, c),
            _ => {
                return Err(bad("needs an input and an output width (the synthetic task needs a classifier)"))
            }
        };
        if dim == 0 {
            return Err(bad("the input width must be at least 1"));
        }
        if classes < 2 {
            return Err(bad("the output layer needs at least 2 classes"));
        }
        let hidden = dim.div_ceil(INPUTS_PER_TEACHER_UNIT);
        let mut rng = rng_for(&[TAG_TEACHER, spec.seed]);
        let scale = 1.0 / (dim as f64).sqrt();
        let mut normals =
            |n: usize, s: f64| -> Vec<f64> { (0..n).map(|_| normal(&mut rng) * s).collect::<Vec<_>>() };
        let w = normals(hidden * dim, scale);
        let u = normals(classes * dim, scale);
        let v = normals(classes * hidden, 1.0);
        Ok(Self { seed: spec.seed, dim, classes, hidden, eval_samples: spec.dataset.eval_samples, w, u, v })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// A node's own training data: `samples` fresh inputs drawn from a stream derived
    /// from `(spec.seed, shard_seed)`. Equal arguments give bit-identical data.
    pub fn shard(&self, shard_seed: u64, samples: usize) -> Dataset {
        self.draw(&mut rng_for(&[TAG_SHARD, self.seed, shard_seed]), samples)
    }

    /// The held-out set every node evaluates on: `spec.dataset.eval_samples` samples
    /// from a stream of its own, never shared with any shard.
    pub fn eval_set(&self) -> Dataset {
        self.draw(&mut rng_for(&[TAG_EVAL, self.seed]), self.eval_samples)
    }

    fn draw(&self, rng: &mut Xoshiro256PlusPlus, samples: usize) -> Dataset {
        let mut features = Vec::with_capacity(samples * self.dim);
        let mut labels = Vec::with_capacity(samples);
        let mut x = vec![0f64; self.dim];
        for _ in 0..samples {
            let mut label = 0;
            for _ in 0..MAX_DRAWS {
                for xi in x.iter_mut() {
                    // Rounded to f32 before labelling, so the label is that of the stored input.
                    *xi = normal(rng) as f32 as f64;
                }
                let gap;
                (label, gap) = self.label(&x);
                if gap >= MARGIN {
                    break;
                }
            }
            features.extend(x.iter().map(|&xi| xi as f32));
            labels.push(label);
        }
        Dataset { features, labels, dim: self.dim, classes: self.classes }
    }

    /// The teacher's class for input `x`, and its margin: how far the winning logit
    /// leads the runner-up.
    fn label(&self, x: &[f64]) -> (u32, f64) {
        let mean_abs = (2.0 / std::f64::consts::PI).sqrt();
        let norm = 1.0 / ((self.hidden as f64) * (1.0 - 2.0 / std::f64::consts::PI)).sqrt();
        let h: Vec<f64> =
            self.w.chunks_exact(self.dim).map(|wj| (dot(wj, x).abs() - mean_abs) * norm).collect();
        let mut best = (f64::NEG_INFINITY, 0u32);
        let mut second = f64::NEG_INFINITY;
        for c in 0..self.classes {
            let lin = dot(&self.u[c * self.dim..(c + 1) * self.dim], x);
            let nonlin = dot(&self.v[c * self.hidden..(c + 1) * self.hidden], &h);
            let logit = TEACHER_LINEAR_WEIGHT * lin + nonlin;
            if logit > best.0 {
                second = best.0;
                best = (logit, c as u32);
            } else if logit > second {
                second = logit;
            }
        }
        (best.1, best.0 - second)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// A generator seeded from `parts` through SplitMix64-style mixing, so that seeds
/// differing in any part (or in the domain tag) give unrelated streams.
pub fn rng_for(parts: &[u64]) -> Xoshiro256PlusPlus {
    let mut h: u64 = 0x5374_6172_6c69_6e67; // "Starling"
    for &p in parts {
        h = splitmix(h ^ splitmix(p));
    }
    Xoshiro256PlusPlus::seed_from_u64(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` with 53 random bits.
pub fn uniform01(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `0..n` without modulo bias (`n > 0`).
pub(crate) fn below(rng: &mut impl Rng, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let r = rng.next_u64();
        if r < zone {
            return r % n;
        }
    }
}

/// A standard normal by Box-Muller (one of the pair; simplicity over speed).
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - uniform01(rng); // (0, 1]: ln stays finite
    let u2 = uniform01(rng);
    (-2.0 * portable_ln(u1)).sqrt() * portable_cos_2pi(u2)
}

/// `ln(x)` for finite `x > 0` from IEEE-exact operations only (sqrt, +, ×, ÷), so
/// every platform gets the same bits. Accurate to a few ulps of f64.
fn portable_ln(x: f64) -> f64 {
    // x = m · 2^e with m in [1/√2, √2), exact by bit manipulation (x is normal here).
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m − 1)/(m + 1), |s| < 0.172: the series converges fast.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for k in 0..14 {
        sum += term / (2 * k + 1) as f64;
        term *= s2;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

/// `cos(2π·u)` for `u` in `[0, 1)` from IEEE-exact operations only.
fn portable_cos_2pi(u: f64) -> f64 {
    // 8u = k + f exactly; round k + f to the nearest even number 2q, so that
    // 2πu = q·π/2 + a with |a| ≤ π/4 and q the quadrant.
    let t = u * 8.0;
    let k = t.floor();
    let f = t - k;
    let k = k as u32 % 8;
    let half = k.div_ceil(2);
    let a = ((k as f64 - 2.0 * half as f64) + f) * std::f64::consts::FRAC_PI_4;
    let (s, c) = sin_cos_small(a);
    match half % 4 {
        0 => c,
        1 => -s,
        2 => -c,
        _ => s,
    }
}

/// Taylor series for sin and cos on `|a| ≤ π/4`, accurate to f64 rounding.
fn sin_cos_small(a: f64) -> (f64, f64) {
    let a2 = a * a;
    let (mut s, mut c) = (0.0, 0.0);
    let (mut ts, mut tc) = (a, 1.0);
    for k in 0..11 {
        s += ts;
        c += tc;
        let n = (2 * k + 2) as f64;
        tc *= -a2 / (n * (n - 1.0));
        ts *= -a2 / ((n + 1.0) * n);
    }
    (s, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        let mut spec = RunSpec::builtin();
        spec.dataset.eval_samples = 500;
        spec
    }

    #[test]
    fn shards_are_bit_identical_for_equal_arguments_and_differ_otherwise() {
        let task = SyntheticTask::new(&spec()).unwrap();
        let a = task.shard(3, 200);
        assert_eq!(a, SyntheticTask::new(&spec()).unwrap().shard(3, 200));
        assert_ne!(a.features, task.shard(4, 200).features);
        assert_eq!(a.len(), 200);
        assert_eq!(a.dim, 32);
        assert_eq!(a.classes, 10);
        a.validate().unwrap();
    }

    #[test]
    fn a_shorter_shard_is_a_prefix_of_a_longer_one() {
        let task = SyntheticTask::new(&spec()).unwrap();
        let long = task.shard(9, 50);
        let short = task.shard(9, 20);
        assert_eq!(short.features[..], long.features[..20 * 32]);
    }

    #[test]
    fn eval_set_has_the_spec_size_and_is_not_a_shard() {
        let task = SyntheticTask::new(&spec()).unwrap();
        let eval = task.eval_set();
        assert_eq!(eval.len(), 500);
        assert_eq!(eval, task.eval_set());
        for s in 0..4 {
            assert_ne!(eval.row(0), task.shard(s, 1).row(0));
        }
    }

    #[test]
    fn the_teacher_depends_on_the_spec_seed() {
        let a = SyntheticTask::new(&spec()).unwrap();
        let mut other = spec();
        other.seed += 1;
        let b = SyntheticTask::new(&other).unwrap();
        assert_ne!(a.shard(0, 100), b.shard(0, 100));
    }

    #[test]
    fn classes_are_roughly_balanced() {
        let data = SyntheticTask::new(&spec()).unwrap().shard(1, 5000);
        let mut counts = [0usize; 10];
        for &l in &data.labels {
            counts[l as usize] += 1;
        }
        // A balanced task puts 500 in each; no class may be tiny or dominant.
        assert!(counts.iter().all(|&c| (150..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn labels_are_the_teachers_for_the_stored_inputs_and_clear_the_margin() {
        let task = SyntheticTask::new(&spec()).unwrap();
        let data = task.shard(5, 1000);
        let mut narrow = 0;
        for i in 0..data.len() {
            let x: Vec<f64> = data.row(i).iter().map(|&v| v as f64).collect();
            let (label, gap) = task.label(&x);
            assert_eq!(label, data.labels[i]);
            narrow += usize::from(gap < MARGIN);
        }
        // Only a sample that used up every redraw may sit inside the margin.
        assert!(narrow <= 1, "{narrow}");
    }

    #[test]
    fn inputs_are_standard_normal() {
        let data = SyntheticTask::new(&spec()).unwrap().shard(2, 2000);
        let n = data.features.len() as f64;
        let mean = data.features.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = data.features.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }

    #[test]
    fn portable_math_matches_std() {
        let mut rng = rng_for(&[1]);
        for _ in 0..10_000 {
            let u = uniform01(&mut rng);
            let x = 1.0 - u;
            assert!((portable_ln(x) - x.ln()).abs() <= 1e-13 * (1.0 + x.ln().abs()), "{x}");
            let c = (2.0 * std::f64::consts::PI * u).cos();
            assert!((portable_cos_2pi(u) - c).abs() <= 1e-14, "{u}");
        }
        assert_eq!(portable_ln(1.0), 0.0);
        assert!((portable_ln(f64::MIN_POSITIVE) - f64::MIN_POSITIVE.ln()).abs() < 1e-10);
    }

    #[test]
    fn bad_layers_are_refused() {
        let mut s = spec();
        s.model = starling_protocol::ModelSpec::mlp(vec![32]);
        assert!(matches!(SyntheticTask::new(&s), Err(DataError::BadLayers { .. })));
        s.model = starling_protocol::ModelSpec::mlp(vec![32, 1]);
        assert!(SyntheticTask::new(&s).is_err());
    }

    #[test]
    fn concat_joins_parts_of_one_task_and_refuses_mixed_ones() {
        let task = SyntheticTask::new(&spec()).unwrap();
        let (a, b) = (task.shard(0, 3), task.shard(1, 4));
        let joined = Dataset::concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(joined.len(), 7);
        assert_eq!(joined.row(3), b.row(0));
        assert!(matches!(Dataset::concat(&[]), Err(DataError::NoParts)));
        let mut odd = b;
        odd.classes = 3;
        let err = Dataset::concat(&[a, odd]).unwrap_err();
        assert!(matches!(err, DataError::Mismatch { index: 1, what: "classes", .. }), "{err}");
    }

    #[test]
    fn validate_catches_inconsistent_fields() {
        let mut d = SyntheticTask::new(&spec()).unwrap().shard(0, 4);
        d.labels[0] = 10;
        assert!(d.validate().is_err());
        d.labels[0] = 0;
        d.features.pop();
        assert!(d.validate().is_err());
    }
}
