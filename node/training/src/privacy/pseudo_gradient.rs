//! Node-level privacy: the whole pseudo-gradient of a round clipped to an L2
//! norm and noised, so a node's participation itself is (ε, δ)-DP.
//!
//! One round is one Gaussian mechanism of sensitivity `clip` on the node's
//! contribution, every round counted (no subsampling: `q = 1`); the noise is
//! added here, before the codec encodes the delta.

use super::NoiseRng;

/// Scales `delta` down to L2 norm `clip` if it is longer, then adds
/// `N(0, (sigma · clip)²)` to every coordinate. Returns the norm before clipping.
pub fn clip_and_noise(delta: &mut [f32], clip: f64, sigma: f64, rng: &mut NoiseRng) -> f64 {
    let norm = delta.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
    if norm > clip {
        let scale = (clip / norm) as f32;
        delta.iter_mut().for_each(|v| *v *= scale);
    }
    rng.add_gaussian(delta, sigma * clip);
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_deltas_are_clipped_and_short_ones_kept_before_noise() {
        let mut rng = NoiseRng::seeded(3);
        let mut long = vec![3.0f32, 4.0];
        assert_eq!(clip_and_noise(&mut long, 1.0, 0.0, &mut rng), 5.0);
        assert!((long[0] - 0.6).abs() < 1e-6 && (long[1] - 0.8).abs() < 1e-6, "{long:?}");
        let mut short = vec![0.3f32, 0.4];
        clip_and_noise(&mut short, 1.0, 0.0, &mut rng);
        assert_eq!(short, vec![0.3, 0.4]);
        let mut noised = vec![0f32; 10_000];
        clip_and_noise(&mut noised, 0.5, 2.0, &mut rng);
        let std = (noised.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 10_000.0).sqrt();
        assert!((std - 1.0).abs() < 0.05, "σ·clip = 1, got {std}");
    }
}
