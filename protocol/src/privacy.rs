//! Differential privacy, the pure part: the RunSpec's `[privacy]` section and
//! the Rényi-DP accountant of the Poisson-subsampled Gaussian mechanism.
//!
//! The accountant tracks the RDP of every noised step at a fixed set of
//! integer orders α, using the exact binomial expansion for integer α of
//! Mironov, Talwar and Zhang (2019, "Rényi Differential Privacy of the Sampled
//! Gaussian Mechanism", §3.3), and converts it to (ε, δ) with the improved
//! conversion of Canonne, Kamath and Steinke (2020) / Balle et al. (2020):
//! `ε = min_α [ rdp(α) + ln(1 − 1/α) − ln(δ·α)/(α − 1) ]`, the same rule as
//! Google's `dp_accounting.rdp` (which the tests check against).
//!
//! Everything here is plain `f64` arithmetic; the node owns the noise and the
//! clock.

use serde::{Deserialize, Serialize};

/// What a node's (ε, δ) guarantee protects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyLevel {
    /// Each record of the node's own shard: DP-SGD in local training (per-example
    /// clipping to `clip`, Gaussian noise `noise_multiplier · clip` per step,
    /// Poisson sampling with rate `batch_size / shard size`).
    #[default]
    Record,
    /// The node's whole contribution: each round's pseudo-gradient is clipped to
    /// `clip` in L2 and noised with `noise_multiplier · clip`; every round counts
    /// (no subsampling).
    Node,
}

impl std::fmt::Display for PrivacyLevel {
    /// The name the spec uses: `record` or `node`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Record => "record",
            Self::Node => "node",
        })
    }
}

/// The `[privacy]` section of a RunSpec: a private swarm's budget and noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    #[serde(default)]
    pub level: PrivacyLevel,
    /// The budget ε each node may spend; a node stops contributing (and keeps
    /// merging) before a round would take it past this.
    pub epsilon: f64,
    /// The δ of the guarantee; well below 1 / records (1e-5 for tens of thousands).
    pub delta: f64,
    /// C: the L2 norm each per-example gradient (record level) or each
    /// pseudo-gradient (node level) is clipped to.
    pub clip: f64,
    /// σ: the noise standard deviation is `σ · clip`. When absent, σ is
    /// calibrated so that `rounds` rounds spend exactly `epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// The rounds the budget is planned for (needed when `noise_multiplier` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
}

impl PrivacySpec {
    /// Checks every field; on error, the field to fix and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.epsilon.is_nan() || self.epsilon <= 0.0 {
            return Err(("privacy.epsilon", "must be a positive number".into()));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(("privacy.delta", "must be in (0, 1), e.g. 1e-5".into()));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(("privacy.clip", "must be a positive number".into()));
        }
        match (self.noise_multiplier, self.rounds) {
            (Some(s), _) if !(s.is_finite() && s > 0.0) => {
                Err(("privacy.noise_multiplier", "must be a positive number".into()))
            }
            (None, None) => Err((
                "privacy.rounds",
                "set privacy.rounds (to calibrate the noise to the budget) or privacy.noise_multiplier"
                    .into(),
            )),
            (_, Some(0)) => Err(("privacy.rounds", "must be at least 1".into())),
            (None, Some(_)) if self.epsilon.is_infinite() => Err((
                "privacy.noise_multiplier",
                "an infinite budget needs an explicit noise_multiplier".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The noise multiplier for steps of sampling rate `q`, `steps_per_round`
    /// steps a round: the spec's own, or the smallest that fits `rounds` rounds
    /// in the budget. `None` when no σ up to [`MAX_NOISE`] fits.
    pub fn noise_for(&self, q: f64, steps_per_round: u64) -> Option<f64> {
        if let Some(sigma) = self.noise_multiplier {
            return Some(sigma);
        }
        let steps = self.rounds? * steps_per_round;
        calibrate_noise(q, steps, self.epsilon, self.delta)
    }
}

/// The RDP orders the accountant tracks: every integer 2..=64, then sparser up to 512.
pub const ORDERS: [u32; 71] = [
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 80, 96, 128, 160, 192, 256, 384, 512,
];

/// The largest noise multiplier [`calibrate_noise`] tries.
pub const MAX_NOISE: f64 = 1e4;

/// RDP at integer order `alpha` ≥ 2 of one step of the Gaussian mechanism with
/// noise multiplier `sigma` on a Poisson sample of rate `q` (Mironov et al.
/// 2019, Theorem 5 / §3.3):
/// `1/(α−1) · ln Σ_k C(α,k) (1−q)^(α−k) q^k exp((k²−k)/(2σ²))`.
pub fn rdp_subsampled_gaussian(q: f64, sigma: f64, alpha: u32) -> f64 {
    assert!(alpha >= 2, "integer orders start at 2");
    if q <= 0.0 {
        return 0.0;
    }
    let a = alpha as f64;
    if q >= 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    let (ln_q, ln_1q) = (q.ln(), (-q).ln_1p());
    let mut ln_binom = 0.0;
    let mut terms = Vec::with_capacity(alpha as usize + 1);
    for k in 0..=alpha {
        if k > 0 {
            ln_binom += ((alpha - k + 1) as f64).ln() - (k as f64).ln();
        }
        let kf = k as f64;
        terms.push(ln_binom + (a - kf) * ln_1q + kf * ln_q + (kf * kf - kf) / (2.0 * sigma * sigma));
    }
    log_sum_exp(&terms) / (a - 1.0)
}

/// (ε, best order) from RDP values at [`ORDERS`], for `delta` (Canonne, Kamath
/// and Steinke 2020, Proposition 12; as `dp_accounting`'s `compute_epsilon`).
pub fn epsilon_from_rdp(rdp: &[f64], delta: f64) -> (f64, u32) {
    let mut best = (f64::INFINITY, ORDERS[0]);
    for (&alpha, &r) in ORDERS.iter().zip(rdp) {
        let a = alpha as f64;
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            0.0
        } else {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        };
        if eps < best.0 {
            best = (eps, alpha);
        }
    }
    (best.0.max(0.0), best.1)
}

/// ε after `steps` steps of rate `q` and noise `sigma`, at `delta`.
pub fn epsilon_for(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
    let mut accountant = Accountant::default();
    accountant.compose(q, sigma, steps);
    accountant.epsilon(delta)
}

/// The smallest noise multiplier (to 0.1 %) whose `steps` steps of rate `q`
/// spend at most `epsilon` at `delta`; `None` if even [`MAX_NOISE`] does not.
pub fn calibrate_noise(q: f64, steps: u64, epsilon: f64, delta: f64) -> Option<f64> {
    if epsilon_for(q, MAX_NOISE, steps, delta) > epsilon {
        return None;
    }
    let (mut lo, mut hi) = (1e-3, MAX_NOISE);
    while hi / lo > 1.001 {
        let mid = (lo * hi).sqrt();
        if epsilon_for(q, mid, steps, delta) > epsilon {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// The privacy a node has spent: RDP summed over its noised steps, per order.
/// Persisted by the node, so a restart never resets it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accountant {
    /// RDP at each of [`ORDERS`].
    rdp: Vec<f64>,
    /// Noised steps composed so far.
    steps: u64,
}

impl Default for Accountant {
    fn default() -> Self {
        Self { rdp: vec![0.0; ORDERS.len()], steps: 0 }
    }
}

impl Accountant {
    /// Adds `steps` steps of the Gaussian mechanism, noise multiplier `sigma`, on
    /// Poisson samples of rate `q` (`q = 1`: every record, every step).
    pub fn compose(&mut self, q: f64, sigma: f64, steps: u64) {
        if steps == 0 {
            return;
        }
        for (r, &alpha) in self.rdp.iter_mut().zip(ORDERS.iter()) {
            *r += steps as f64 * rdp_subsampled_gaussian(q, sigma, alpha);
        }
        self.steps += steps;
    }

    /// ε spent at `delta`.
    pub fn epsilon(&self, delta: f64) -> f64 {
        if self.steps == 0 {
            return 0.0;
        }
        epsilon_from_rdp(&self.rdp, delta).0
    }

    /// ε spent at `delta` if `steps` more steps of rate `q` and noise `sigma` were taken.
    pub fn epsilon_after(&self, q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
        let mut next = self.clone();
        next.compose(q, sigma, steps);
        next.epsilon(delta)
    }

    /// Noised steps composed so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The accountant as bytes, for the node's store.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::wire::encode(self)
    }

    /// An accountant saved by [`Accountant::to_bytes`]; `None` if the bytes are
    /// not one (the caller must then refuse to run rather than start from zero).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let config = bincode::config::standard().with_limit::<{ 64 * 1024 }>();
        let (accountant, _): (Self, usize) = bincode::serde::decode_from_slice(bytes, config).ok()?;
        (accountant.rdp.len() == ORDERS.len() && accountant.rdp.iter().all(|r| r.is_finite() && *r >= 0.0))
            .then_some(accountant)
    }
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::INFINITY {
        return f64::INFINITY;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests;
