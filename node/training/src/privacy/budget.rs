//! A node's privacy budget: the noise its RunSpec asks for (or the noise
//! calibrated to spend the budget over the planned rounds), the accountant of
//! what it has spent, and whether one more round still fits.

use starling_protocol::privacy::{Accountant, PrivacyLevel, PrivacySpec, MAX_NOISE};
use starling_protocol::spec::InnerSpec;

use super::{DpSgd, NoiseRng};

/// Why a private node cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("no noise multiplier up to {MAX_NOISE} fits {rounds} rounds in privacy.epsilon = {epsilon}; raise privacy.epsilon, lower privacy.rounds, or set privacy.noise_multiplier")]
    NoNoiseFits { epsilon: f64, rounds: u64 },
    #[error("privacy.noise_multiplier = {sigma} spends ε = {one_round:.3} in a single round, over privacy.epsilon = {epsilon}; the node could never contribute. Raise privacy.noise_multiplier or privacy.epsilon, or leave noise_multiplier out to calibrate it to privacy.rounds")]
    OneRoundOver { sigma: f64, one_round: f64, epsilon: f64 },
    #[error("the privacy accountant saved in the datadir is unreadable ({0}); refusing to start, since starting again from ε = 0 would break the guarantee; use a new --datadir (a new identity) to start afresh")]
    Corrupt(String),
}

/// What one node may still spend, and has spent.
#[derive(Clone, Debug)]
pub struct PrivacyBudget {
    spec: PrivacySpec,
    sigma: f64,
    /// q: the Poisson rate of one noised step (1 at node level).
    rate: f64,
    /// Noised steps per round: the inner steps (record level) or 1 (node level).
    steps_per_round: u64,
    accountant: Accountant,
}

impl PrivacyBudget {
    /// The budget of a node that trains `inner` on a shard of `shard_len` records,
    /// resuming from `spent` (the default accountant for a fresh node).
    pub fn new(
        spec: &PrivacySpec,
        inner: &InnerSpec,
        shard_len: usize,
        spent: Accountant,
    ) -> Result<Self, PrivacyError> {
        let (rate, steps_per_round) = match spec.level {
            PrivacyLevel::Record => {
                ((inner.batch_size as f64 / shard_len.max(1) as f64).min(1.0), inner.steps as u64)
            }
            PrivacyLevel::Node => (1.0, 1),
        };
        let sigma = spec.noise_for(rate, steps_per_round).ok_or(PrivacyError::NoNoiseFits {
            epsilon: spec.epsilon,
            rounds: spec.rounds.unwrap_or_default(),
        })?;
        let one_round = Accountant::default().epsilon_after(rate, sigma, steps_per_round, spec.delta);
        if one_round.is_nan() || one_round > spec.epsilon * (1.0 + 1e-9) {
            return Err(PrivacyError::OneRoundOver { sigma, one_round, epsilon: spec.epsilon });
        }
        Ok(Self { spec: spec.clone(), sigma, rate, steps_per_round, accountant: spent })
    }

    /// The record-level DP-SGD settings for the trainer; `None` at node level.
    pub fn dp_sgd(&self, batch_size: usize, shard_len: usize, rng: NoiseRng) -> Option<DpSgd> {
        (self.spec.level == PrivacyLevel::Record)
            .then(|| DpSgd::new(self.spec.clip, self.sigma, batch_size, shard_len, rng))
    }

    pub fn level(&self) -> PrivacyLevel {
        self.spec.level
    }

    /// σ, the noise multiplier in use.
    pub fn noise_multiplier(&self) -> f64 {
        self.sigma
    }

    /// C, the clip norm.
    pub fn clip(&self) -> f64 {
        self.spec.clip
    }

    /// q, the sampling rate of one noised step.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// ε spent so far, at the spec's δ.
    pub fn epsilon(&self) -> f64 {
        self.accountant.epsilon(self.spec.delta)
    }

    /// The budget: the ε the node may spend in all.
    pub fn target(&self) -> f64 {
        self.spec.epsilon
    }

    pub fn delta(&self) -> f64 {
        self.spec.delta
    }

    /// Whether one more round stays within the budget.
    pub fn allows_round(&self) -> bool {
        let next =
            self.accountant.epsilon_after(self.rate, self.sigma, self.steps_per_round, self.spec.delta);
        // A hair of slack, so that a σ calibrated to spend the budget exactly fits.
        next <= self.spec.epsilon * (1.0 + 1e-9)
    }

    /// Counts one round's noised steps as spent.
    pub fn spend_round(&mut self) {
        self.accountant.compose(self.rate, self.sigma, self.steps_per_round);
    }

    /// What has been spent, to persist.
    pub fn accountant(&self) -> &Accountant {
        &self.accountant
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::privacy::epsilon_for;

    fn spec(level: PrivacyLevel) -> PrivacySpec {
        PrivacySpec { level, epsilon: 4.0, delta: 1e-5, clip: 1.0, noise_multiplier: None, rounds: Some(10) }
    }

    fn inner() -> InnerSpec {
        InnerSpec { steps: 20, batch_size: 64, lr: 1e-3, weight_decay: 0.0, optimizer: None, momentum: None }
    }

    #[test]
    fn a_calibrated_budget_fits_exactly_the_planned_rounds() {
        for level in [PrivacyLevel::Record, PrivacyLevel::Node] {
            let mut budget = PrivacyBudget::new(&spec(level), &inner(), 1024, Accountant::default()).unwrap();
            let mut rounds = 0;
            while budget.allows_round() {
                budget.spend_round();
                rounds += 1;
                assert!(budget.epsilon() <= 4.0 + 1e-6, "{level:?}: {}", budget.epsilon());
            }
            assert_eq!(rounds, 10, "{level:?}");
            assert!(budget.epsilon() > 3.9, "{level:?} spends nearly all: {}", budget.epsilon());
        }
        let record =
            PrivacyBudget::new(&spec(PrivacyLevel::Record), &inner(), 1024, Accountant::default()).unwrap();
        assert_eq!(record.rate(), 64.0 / 1024.0);
        assert!(record.dp_sgd(64, 1024, NoiseRng::seeded(0)).is_some());
    }

    #[test]
    fn a_resumed_budget_keeps_what_was_spent() {
        let mut spec = spec(PrivacyLevel::Record);
        spec.noise_multiplier = Some(1.0);
        let mut first = PrivacyBudget::new(&spec, &inner(), 1024, Accountant::default()).unwrap();
        first.spend_round();
        let saved = Accountant::from_bytes(&first.accountant().to_bytes()).unwrap();
        let resumed = PrivacyBudget::new(&spec, &inner(), 1024, saved).unwrap();
        assert_eq!(resumed.epsilon(), first.epsilon());
        assert!((resumed.epsilon() - epsilon_for(1.0 / 16.0, 1.0, 20, 1e-5)).abs() < 1e-12);
    }

    #[test]
    fn an_impossible_budget_names_the_fields() {
        let mut spec = spec(PrivacyLevel::Node);
        spec.epsilon = 1e-9;
        spec.rounds = Some(1_000_000);
        let err = PrivacyBudget::new(&spec, &inner(), 1024, Accountant::default()).unwrap_err().to_string();
        assert!(err.contains("privacy.epsilon") && err.contains("privacy.rounds"), "{err}");
    }

    #[test]
    fn a_noise_too_small_for_one_round_is_refused_up_front() {
        let mut spec = spec(PrivacyLevel::Record);
        spec.noise_multiplier = Some(1e-4);
        let err = PrivacyBudget::new(&spec, &inner(), 1024, Accountant::default()).unwrap_err().to_string();
        assert!(err.contains("privacy.noise_multiplier = 0.0001") && err.contains("single round"), "{err}");
    }
}
