//! Differential privacy in the node: the budget loaded from (and saved to) the
//! store, DP-SGD switched on in the trainer, node-level noise on the delta
//! before the codec, and sitting rounds out once the budget is spent.
//!
//! A round's ε is charged as soon as its training finishes, before anything is
//! published, and saved durably (by the writer worker, ahead of the delta's
//! outbox; the engine hears of the round only after): a crash can only leave
//! the ledger showing more spent than was published, never less. A round trained but then dropped (the
//! state moved on meanwhile) is charged too, since the inner optimizer's moments
//! carry its noised gradients into later deltas.

use starling_protocol::privacy::{Accountant, PrivacyLevel};
use starling_protocol::{engine::Input, RunSpec};
use starling_storage::Store;
use starling_training::privacy::{NoiseRng, PrivacyBudget, PrivacyError};
use starling_training::trainer::Trainer;
use tracing::{info, warn};

use super::{workers::Noise, Node, NodeError};

/// A private node's budget and noise.
pub(super) struct NodePrivacy {
    pub(super) budget: PrivacyBudget,
    /// Node-level noise (record-level noise lives in the trainer's DP-SGD);
    /// lent to the writer worker while it noises our delta.
    rng: Option<NoiseRng>,
    /// Whether "budget spent" has been logged.
    told_spent: bool,
}

/// The privacy of a node in a `[privacy]` run, resumed from the store; DP-SGD
/// is switched on in `trainer` at record level. `None` in a run without privacy.
pub(super) fn open_privacy(
    spec: &RunSpec,
    store: &Store,
    trainer: &mut Trainer,
) -> Result<Option<NodePrivacy>, NodeError> {
    let Some(privacy) = &spec.privacy else { return Ok(None) };
    let spent = match store.privacy_ledger().map_err(PrivacyError::Corrupt)? {
        Some(bytes) => Accountant::from_bytes(&bytes)
            .ok_or_else(|| PrivacyError::Corrupt("the record does not decode".into()))?,
        None => Accountant::default(),
    };
    let shard_len = trainer.data().len();
    let budget = PrivacyBudget::new(privacy, &spec.inner, shard_len, spent)?;
    if let Some(dp) = budget.dp_sgd(spec.inner.batch_size, shard_len, NoiseRng::from_os()) {
        trainer.set_private(dp)?;
    }
    info!(
        level = ?budget.level(),
        epsilon_spent = budget.epsilon(),
        budget = budget.target(),
        delta = budget.delta(),
        noise_multiplier = budget.noise_multiplier(),
        clip = budget.clip(),
        sample_rate = budget.rate(),
        "differential privacy on"
    );
    Ok(Some(NodePrivacy { budget, rng: Some(NoiseRng::from_os()), told_spent: false }))
}

impl Node {
    /// ε this node has spent, when the run is private (for the progress line,
    /// `/status` and reports).
    pub fn epsilon(&self) -> Option<f64> {
        self.privacy.as_ref().map(|p| p.budget.epsilon())
    }

    /// The budget as `/status` shows it.
    pub(super) fn privacy_status(&self) -> Option<crate::status::PrivacyStatus> {
        let privacy = self.privacy.as_ref()?;
        let budget = &privacy.budget;
        Some(crate::status::PrivacyStatus {
            level: budget.level(),
            epsilon: budget.epsilon(),
            epsilon_budget: budget.target(),
            delta: budget.delta(),
            contributing: budget.allows_round(),
        })
    }

    /// Whether the node may train and publish this round. When the budget is
    /// spent it sits the round out (saying so once) and merges peers' deltas.
    pub(super) fn may_contribute(&mut self) -> bool {
        let Some(privacy) = &mut self.privacy else { return true };
        if privacy.budget.allows_round() {
            return true;
        }
        if !privacy.told_spent {
            privacy.told_spent = true;
            warn!(
                epsilon_spent = privacy.budget.epsilon(),
                budget = privacy.budget.target(),
                round = self.state.round,
                "privacy budget spent: this node no longer trains or publishes deltas, and keeps merging its peers'"
            );
        }
        if let Err(e) = self.drive(Input::Abstain) {
            warn!(error = %e, "sitting the round out failed");
        }
        false
    }

    /// Charges a finished round of training to the budget; returns the ledger
    /// to save before anything of the round is published.
    pub(super) fn charge_round(&mut self) -> Option<Vec<u8>> {
        let privacy = self.privacy.as_mut()?;
        privacy.budget.spend_round();
        self.metrics.privacy_epsilon.set(privacy.budget.epsilon());
        Some(privacy.budget.accountant().to_bytes())
    }

    /// Node-level privacy: the clip, multiplier and generator with which the
    /// writer clips and noises the pseudo-gradient, before the codec.
    pub(super) fn lend_noise(&mut self) -> Option<Noise> {
        let privacy = self.privacy.as_mut()?;
        if privacy.budget.level() != PrivacyLevel::Node {
            return None;
        }
        let rng = privacy.rng.take()?;
        Some(Noise { clip: privacy.budget.clip(), sigma: privacy.budget.noise_multiplier(), rng })
    }

    /// The generator back from the writer.
    pub(super) fn return_noise(&mut self, noise: Option<Noise>) {
        if let (Some(privacy), Some(noise)) = (&mut self.privacy, noise) {
            privacy.rng = Some(noise.rng);
        }
    }
}
