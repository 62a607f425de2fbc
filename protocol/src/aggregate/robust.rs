//! Byzantine-robust aggregation rules over dense, decoded deltas.
//!
//! Each rule takes the round's contributions sorted by sender and weighs them
//! equally: a sample count is the sender's own claim, so a liar could otherwise
//! buy any weight it likes. Every rule is deterministic: the same inputs give
//! bit-identical outputs on every node.

use super::Contribution;

/// Iterations of centered clipping (Karimireddy et al. use 1–3; 3 converges
/// well from a median start).
pub const CLIP_ITERATIONS: usize = 3;

/// Weiszfeld iterations for the geometric median, at most.
const WEISZFELD_ITERATIONS: usize = 16;

/// Coordinate-wise median (the mean of the two middle values when the count is even).
pub fn median(inputs: &[Contribution], out: &mut [f32]) {
    match inputs {
        [a] => out.copy_from_slice(&a.values),
        [a, b] => {
            for ((o, &x), &y) in out.iter_mut().zip(&a.values).zip(&b.values) {
                *o = ((x as f64 + y as f64) / 2.0) as f32;
            }
        }
        [a, b, c] => {
            for (((o, &x), &y), &z) in out.iter_mut().zip(&a.values).zip(&b.values).zip(&c.values) {
                *o = x.min(y).max(x.max(y).min(z));
            }
        }
        _ => {
            let mut column = vec![0.0f32; inputs.len()];
            for (j, o) in out.iter_mut().enumerate() {
                for (slot, c) in column.iter_mut().zip(inputs) {
                    *slot = c.values[j];
                }
                *o = median_of(&mut column);
            }
        }
    }
}

/// The plain mean, summed in input order.
fn mean(inputs: &[Contribution], out: &mut [f32]) {
    out.fill(0.0);
    for c in inputs {
        for (o, &x) in out.iter_mut().zip(&c.values) {
            *o += x;
        }
    }
    let inv = 1.0 / inputs.len() as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

fn median_of(column: &mut [f32]) -> f32 {
    let n = column.len();
    let mid = n / 2;
    let (lower, m, _) = column.select_nth_unstable_by(mid, f32::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let below = lower.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ((below as f64 + m as f64) / 2.0) as f32
    }
}

/// How many values a trimmed mean cuts from each end of `n`: ⌊trim·n⌋, but
/// always leaving at least one value.
pub fn trimmed_count(n: usize, trim: f32) -> usize {
    ((trim as f64 * n as f64).floor() as usize).min((n - 1) / 2)
}

/// Coordinate-wise trimmed mean: per coordinate, drop the `trim` fraction of
/// lowest and of highest values and average the rest.
pub fn trimmed_mean(inputs: &[Contribution], trim: f32, out: &mut [f32]) {
    let n = inputs.len();
    let cut = trimmed_count(n, trim);
    let kept = (n - 2 * cut) as f64;
    let mut column = vec![0.0f32; n];
    for (j, o) in out.iter_mut().enumerate() {
        for (slot, c) in column.iter_mut().zip(inputs) {
            *slot = c.values[j];
        }
        column.sort_unstable_by(f32::total_cmp);
        let sum: f64 = column[cut..n - cut].iter().map(|&v| v as f64).sum();
        *o = (sum / kept) as f32;
    }
}

/// Centered clipping (Karimireddy, He and Jaggi, 2021), made self-starting.
///
/// - Start: v₀ = the coordinate-wise median, which no minority can drag far.
/// - Radius: τ = `radius` × the median of the distances ‖xᵢ − v₀‖. While
///   attackers are fewer than half, that median is an honest distance, so τ
///   scales with the honest spread by itself: no tuning per model or round.
/// - Step, `CLIP_ITERATIONS` times: v ← v + (1/n) Σᵢ clip(xᵢ − v, τ), where
///   clip scales a vector down to norm τ if it is longer.
///
/// Any one input moves each step by at most τ/n, whatever it holds. When no
/// input is clipped, a step lands on the plain mean; if every input is within
/// τ of the mean too, the mean is the answer (the common case without
/// attackers, and always with two inputs), found without further passes.
pub fn centered_clip(inputs: &[Contribution], radius: f32, out: &mut [f32]) {
    median(inputs, out);
    let distances = |v: &[f32]| -> Vec<f64> { inputs.iter().map(|c| distance(&c.values, v)).collect() };
    let mut d = distances(out);
    let mut sorted = d.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    let tau = radius as f64 * median_f64(&sorted);
    if tau <= 0.0 || !tau.is_finite() {
        return;
    }
    let n = inputs.len() as f64;
    let mut step = vec![0.0f32; out.len()];
    for _ in 0..CLIP_ITERATIONS {
        if d.iter().all(|&di| di <= tau) {
            mean(inputs, out);
            d = distances(out);
            if d.iter().all(|&di| di <= tau) {
                return;
            }
            continue;
        }
        step.fill(0.0);
        for (c, &di) in inputs.iter().zip(&d) {
            let scale = ((if di > tau { tau / di } else { 1.0 }) / n) as f32;
            for ((s, &x), &v) in step.iter_mut().zip(&c.values).zip(out.iter()) {
                *s += scale * (x - v);
            }
        }
        for (v, s) in out.iter_mut().zip(&step) {
            *v += s;
        }
        d = distances(out);
    }
}

/// Screens out deltas that point against `reference` (the swarm's outer
/// momentum: the direction robust aggregation has taken so far).
///
/// In a model of d parameters, the cosine of honest noise with a fixed
/// direction is of order 1/√d, while an honest delta carries the common
/// descent direction, so honest deltas have a clearly positive inner product
/// with the momentum and sign-flipped, IPM or label-flipped ones a negative
/// one. Deltas with ⟨xᵢ, m⟩ ≤ 0 are dropped, unless that would drop half or
/// more of the inputs (then the reference is not trusted: all are kept).
/// Nothing is screened while the momentum is zero (the first round).
pub fn screen(inputs: Vec<Contribution>, reference: &[f32]) -> Vec<Contribution> {
    if reference.iter().all(|&m| m == 0.0) {
        return inputs;
    }
    let agrees: Vec<bool> = inputs
        .iter()
        .map(|c| c.values.iter().zip(reference).map(|(&x, &m)| x as f64 * m as f64).sum::<f64>() > 0.0)
        .collect();
    let kept = agrees.iter().filter(|&&a| a).count();
    if 2 * kept <= inputs.len() {
        return inputs;
    }
    inputs.into_iter().zip(agrees).filter_map(|(c, a)| a.then_some(c)).collect()
}

/// The geometric median, argmin_v Σᵢ ‖xᵢ − v‖, by smoothed Weiszfeld
/// iterations from the coordinate-wise median (as in RFA, Pillutla et al.).
/// Its breakdown point is one half.
pub fn geometric_median(inputs: &[Contribution], out: &mut [f32]) {
    median(inputs, out);
    // Smoothing keeps a weight finite when the estimate sits on an input. It
    // scales with the median input norm, which no minority sets.
    let mut norms: Vec<f64> = inputs.iter().map(|c| norm(&c.values)).collect();
    norms.sort_unstable_by(f64::total_cmp);
    let scale = median_f64(&norms).max(1e-30);
    let nu = 1e-9 * scale;
    let mut next = vec![0.0f64; out.len()];
    for _ in 0..WEISZFELD_ITERATIONS {
        next.fill(0.0);
        let mut total = 0.0f64;
        for c in inputs {
            let w = 1.0 / distance(&c.values, out).max(nu);
            total += w;
            for (s, &x) in next.iter_mut().zip(&c.values) {
                *s += w * x as f64;
            }
        }
        let mut moved = 0.0f64;
        for (v, s) in out.iter_mut().zip(&next) {
            let updated = (s / total) as f32;
            moved += ((updated - *v) as f64).powi(2);
            *v = updated;
        }
        if moved.sqrt() <= 1e-7 * scale {
            break;
        }
    }
}

fn median_f64(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;
    use proptest::prelude::*;

    fn inputs(rows: &[Vec<f32>]) -> Vec<Contribution> {
        rows.iter()
            .enumerate()
            .map(|(i, v)| Contribution { sender: PublicKey([i as u8; 32]), samples: 1, values: v.clone() })
            .collect()
    }

    fn run(rule: impl Fn(&[Contribution], &mut [f32]), rows: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0.0; rows[0].len()];
        rule(&inputs(rows), &mut out);
        out
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(run(median, &[vec![1.0], vec![5.0], vec![2.0]]), vec![2.0]);
        assert_eq!(run(median, &[vec![1.0], vec![5.0], vec![2.0], vec![4.0]]), vec![3.0]);
    }

    #[test]
    fn trimmed_mean_cuts_both_ends() {
        let rows = [vec![-100.0], vec![1.0], vec![2.0], vec![3.0], vec![100.0]];
        assert_eq!(run(|i, o| trimmed_mean(i, 0.2, o), &rows), vec![2.0]);
        assert_eq!(trimmed_count(5, 0.2), 1);
        assert_eq!(trimmed_count(2, 0.49), 0);
        assert_eq!(trimmed_count(3, 0.9), 1);
    }

    #[test]
    fn centered_clip_of_agreeing_inputs_is_their_mean() {
        // Two inputs: the median is their mean, both sit at the radius, nothing is clipped.
        let out = run(|i, o| centered_clip(i, 1.0, o), &[vec![1.0, 2.0], vec![3.0, -2.0]]);
        assert_eq!(out, vec![2.0, 0.0]);
    }

    #[test]
    fn screening_drops_deltas_against_the_momentum_unless_they_are_the_majority() {
        let rows = [vec![1.0, 0.5], vec![0.8, -0.2], vec![1.2, 0.1], vec![-1.0, -0.5], vec![-0.9, 0.0]];
        let kept = screen(inputs(&rows), &[1.0, 0.0]);
        assert_eq!(kept.iter().map(|c| c.values[0]).collect::<Vec<_>>(), vec![1.0, 0.8, 1.2]);
        // Against a reference most inputs disagree with, nothing is screened.
        assert_eq!(screen(inputs(&rows), &[-1.0, 0.0]).len(), 5);
        assert_eq!(screen(inputs(&rows), &[0.0, 0.0]).len(), 5);
    }

    #[test]
    fn geometric_median_of_a_collinear_odd_set_is_the_middle_point() {
        let out = run(geometric_median, &[vec![0.0, 0.0], vec![1.0, 1.0], vec![10.0, 10.0]]);
        assert!((out[0] - 1.0).abs() < 1e-3 && (out[1] - 1.0).abs() < 1e-3, "{out:?}");
    }

    fn honest_rows() -> impl Strategy<Value = Vec<Vec<f32>>> {
        (3usize..9).prop_flat_map(|n| prop::collection::vec(prop::collection::vec(-1f32..1.0, 6), n))
    }

    fn honest_box(rows: &[Vec<f32>], j: usize) -> (f32, f32) {
        let lo = rows.iter().map(|r| r[j]).fold(f32::INFINITY, f32::min);
        let hi = rows.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max);
        (lo, hi)
    }

    fn with_outlier(honest: &[Vec<f32>], outlier: &[f32]) -> Vec<Vec<f32>> {
        let mut rows = honest.to_vec();
        rows.push(outlier.to_vec());
        rows
    }

    proptest! {
        /// One input, however large, cannot move a coordinate-wise rule out of
        /// the range of the honest values.
        #[test]
        fn coordinate_rules_bound_a_single_input(
            honest in honest_rows(),
            outlier in prop::collection::vec(-1e9f32..1e9, 6),
        ) {
            let rows = with_outlier(&honest, &outlier);
            let outputs = [
                ("median", run(median, &rows)),
                ("trimmed-mean", run(|i, o| trimmed_mean(i, 0.25, o), &rows)),
            ];
            for (name, out) in outputs {
                for (j, v) in out.iter().enumerate() {
                    let (lo, hi) = honest_box(&honest, j);
                    prop_assert!(*v >= lo - 1e-5 && *v <= hi + 1e-5, "{name}: {v} not in [{lo}, {hi}]");
                }
            }
        }

        /// Centered clipping: one input moves the result at most τ/n per step,
        /// so the result stays within CLIP_ITERATIONS·τ of the honest box, and
        /// τ (a median distance) is set by honest inputs.
        #[test]
        fn centered_clipping_bounds_a_single_input(
            honest in honest_rows(),
            outlier in prop::collection::vec(-1e9f32..1e9, 6),
        ) {
            let rows = with_outlier(&honest, &outlier);
            let out = run(|i, o| centered_clip(i, 1.0, o), &rows);
            // Honest values lie in [-1, 1]^6, so every honest distance to a
            // point of that box is at most 2·√6, and so is τ.
            let bound = CLIP_ITERATIONS as f32 * 2.0 * 6f32.sqrt();
            for (j, v) in out.iter().enumerate() {
                let (lo, hi) = honest_box(&honest, j);
                prop_assert!(*v >= lo - bound && *v <= hi + bound, "{v} not within {bound} of [{lo}, {hi}]");
            }
        }

        /// The geometric median stays near the honest inputs with one outlier.
        #[test]
        fn geometric_median_bounds_a_single_input(
            honest in honest_rows(),
            outlier in prop::collection::vec(-1e9f32..1e9, 6),
        ) {
            let rows = with_outlier(&honest, &outlier);
            let out = run(geometric_median, &rows);
            // With f = 1 of n inputs, ‖GM − z‖ ≤ (2(n−f)/(n−2f))·max honest ‖xᵢ − z‖
            // for any z; take z = 0, and honest norms ≤ √6.
            let n = rows.len() as f32;
            let bound = 2.0 * (n - 1.0) / (n - 2.0) * 6f32.sqrt();
            let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
            prop_assert!(norm <= bound * 1.01, "‖GM‖ = {norm} > {bound}");
        }

        /// Every rule gives the mean's answer when all inputs agree.
        #[test]
        fn identical_inputs_give_themselves(row in prop::collection::vec(-10f32..10.0, 4), n in 1usize..6) {
            let rows = vec![row.clone(); n];
            for out in [
                run(median, &rows),
                run(|i, o| trimmed_mean(i, 0.2, o), &rows),
                run(|i, o| centered_clip(i, 1.0, o), &rows),
                run(geometric_median, &rows),
            ] {
                for (a, b) in out.iter().zip(&row) {
                    prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{out:?} vs {row:?}");
                }
            }
        }
    }
}
