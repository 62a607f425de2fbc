//! Differential privacy on a node: DP-SGD in local training (record level),
//! clipping and noising of the whole pseudo-gradient (node level), and the
//! budget that tracks ε spent and stops the node contributing once it is used up.
//!
//! What a private node publishes (its deltas, and through them the states it
//! serves) is computed only from noised, clipped gradients, so it is (ε, δ)-DP
//! with respect to each record of its shard (or, at node level, its whole
//! contribution) whatever peers do with it: everything downstream is
//! post-processing. The noise is added before the codec; the codec's
//! error-feedback residual is itself a function of the noised deltas and never
//! leaves the node.
//!
//! The noise, and the Poisson sampling that the accounting relies on, are drawn
//! from a ChaCha12 generator seeded from the operating system in real runs: a
//! seed peers could know (such as one derived from the node's key) would let
//! them subtract the noise. Tests and benches inject a seeded generator instead
//! ([`NoiseRng::seeded`]), which is reproducible and offers no privacy.

pub mod budget;
pub mod dpsgd;
pub mod pseudo_gradient;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// How many values one generator noises when a vector is noised in parallel.
const NOISE_CHUNK: usize = 1 << 14;

pub use budget::{PrivacyBudget, PrivacyError};
pub use dpsgd::DpSgd;

/// The generator of DP noise and sampling decisions.
pub struct NoiseRng(StdRng);

impl NoiseRng {
    /// Seeded from the operating system: the only choice that gives privacy.
    pub fn from_os() -> Self {
        Self(rand::make_rng())
    }

    /// A reproducible generator for tests and benches. Offers no privacy: anyone
    /// who knows the seed can subtract the noise.
    pub fn seeded(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Adds `N(0, std²)` noise to every value. Long vectors are noised in
    /// chunks on the thread pool, each chunk from its own generator seeded from
    /// this one, so the result depends on the seed and never on the thread count.
    pub fn add_gaussian(&mut self, values: &mut [f32], std: f64) {
        if values.len() <= NOISE_CHUNK {
            return self.add_gaussian_serial(values, std);
        }
        let seeds: Vec<[u8; 32]> = values
            .chunks(NOISE_CHUNK)
            .map(|_| {
                let mut seed = [0u8; 32];
                self.0.fill_bytes(&mut seed);
                seed
            })
            .collect();
        values.par_chunks_mut(NOISE_CHUNK).zip(seeds).for_each(|(chunk, seed)| {
            NoiseRng(StdRng::from_seed(seed)).add_gaussian_serial(chunk, std);
        });
    }

    /// Box–Muller, two normals per draw.
    fn add_gaussian_serial(&mut self, values: &mut [f32], std: f64) {
        let mut pairs = values.chunks_exact_mut(2);
        for pair in &mut pairs {
            let (a, b) = self.normal_pair();
            pair[0] += (a * std) as f32;
            pair[1] += (b * std) as f32;
        }
        if let [last] = pairs.into_remainder() {
            *last += (self.normal_pair().0 * std) as f32;
        }
    }

    fn normal_pair(&mut self) -> (f64, f64) {
        // 1 − u is in (0, 1], so its logarithm is finite.
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * self.uniform()).sin_cos();
        (radius * cos, radius * sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_noise_has_the_asked_spread_and_seeds_repeat() {
        let mut v = vec![0f32; 100_001];
        NoiseRng::seeded(1).add_gaussian(&mut v, 2.0);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03 && (var.sqrt() - 2.0).abs() < 0.03, "{mean} {var}");
        let mut w = vec![0f32; 100_001];
        NoiseRng::seeded(1).add_gaussian(&mut w, 2.0);
        assert_eq!(v, w);
        let mut os = vec![0f32; 8];
        NoiseRng::from_os().add_gaussian(&mut os, 1.0);
        assert!(os.iter().all(|x| x.is_finite()) && os != vec![0f32; 8]);
    }
}
