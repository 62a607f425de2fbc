//! Consensus distance: how far nodes' parameters are from each other, the
//! figure the protocol keeps bounded.

/// The element-wise mean of several parameter vectors, in `f64`.
pub fn mean_params(params: &[&[f32]]) -> Vec<f64> {
    let n = params.len() as f64;
    let mut mean = vec![0.0f64; params.first().map_or(0, |p| p.len())];
    for p in params {
        for (m, &v) in mean.iter_mut().zip(p.iter()) {
            *m += v as f64 / n;
        }
    }
    mean
}

/// RMS over nodes of ‖θᵢ − θ̄‖ / ‖θ̄‖: zero when every node holds the same parameters.
pub fn consensus_distance(params: &[&[f32]]) -> f64 {
    let mean = mean_params(params);
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    if norm == 0.0 || params.is_empty() {
        return 0.0;
    }
    let mean_sq = params
        .iter()
        .map(|p| p.iter().zip(&mean).map(|(&v, m)| (v as f64 - m).powi(2)).sum::<f64>())
        .sum::<f64>()
        / params.len() as f64;
    mean_sq.sqrt() / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_for_equal_models_and_growing_with_spread() {
        let a = [1.0f32, 2.0, 3.0];
        assert!(consensus_distance(&[&a, &a, &a]) < 1e-15);
        let b = [1.1f32, 2.0, 3.0];
        let d = consensus_distance(&[&a, &b]);
        assert!(d > 0.0 && d < 0.05, "{d}");
        assert_eq!(consensus_distance(&[]), 0.0);
    }
}
