//! The attacks netsim can mount, and only netsim: the production binary has no
//! way to misbehave. Attackers are the highest-indexed nodes of a scenario and
//! collude: they know each other and, for the omniscient attacks (ALIE, IPM),
//! the honest deltas of the round, which is the standard threat model of the
//! papers that define them.
//!
//! Value attacks change the delta an attacker signs (it is validly signed and
//! so reaches aggregation, where robust rules must bound it). Protocol attacks
//! send what validation must refuse: forged signatures, stale replays, two
//! deltas for one round (equivocation), and floods of oversized or malformed
//! messages.

use ed25519_dalek::SigningKey;
use rand::rngs::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use starling_protocol::{PublicKey, SignedDelta};

use crate::draw::standard_normal;

/// What an attacker does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackBehaviour {
    /// Nothing: attackers behave (a baseline for attack runs).
    #[default]
    None,
    /// Publishes the negated delta.
    SignFlip,
    /// Publishes the delta times `scale` (100 by default).
    Scale,
    /// Publishes Gaussian noise with `noise` × the RMS of its honest delta as
    /// standard deviation.
    Noise,
    /// A Little Is Enough (Baruch et al., 2019): every attacker publishes
    /// μ − z·σ, the coordinate-wise mean and standard deviation of the honest
    /// deltas, with z the largest shift that still hides among them.
    Alie,
    /// Inner Product Manipulation (Xie et al., 2019): every attacker publishes
    /// −ε·μ, the honest mean scaled by `ipm_epsilon` (0.1 by default).
    Ipm,
    /// Trains on its own data with every label flipped (class c becomes
    /// classes − 1 − c; the quadratic workload's target is negated).
    LabelFlip,
    /// Publishes its delta of `replay_age` rounds ago as this round's, and
    /// re-sends verbatim deltas of others from that long ago.
    Replay,
    /// Publishes deltas under honest nodes' keys with bad signatures, and its
    /// own delta with its payload changed after signing.
    Forge,
    /// Signs two different deltas for each round and sends one to half of its
    /// mesh peers and the other to the other half.
    Equivocate,
    /// Publishes its honest delta, plus `flood_messages` oversized or
    /// malformed messages per round to each mesh peer.
    Flood,
    /// The attackers collude on a forged state 50 rounds ahead of the swarm:
    /// each announces it to every node that asks for offers and serves its
    /// chunks, and each round gossips a validly signed delta of that far
    /// round, so that lagging nodes go looking for a newer state.
    SyncSybil,
}

impl AttackBehaviour {
    /// Every attack on deltas (not `None`, nor `SyncSybil`, which attacks
    /// state sync and not aggregation), for the attack matrix.
    pub const ALL: [AttackBehaviour; 10] = [
        AttackBehaviour::SignFlip,
        AttackBehaviour::Scale,
        AttackBehaviour::Noise,
        AttackBehaviour::Alie,
        AttackBehaviour::Ipm,
        AttackBehaviour::LabelFlip,
        AttackBehaviour::Replay,
        AttackBehaviour::Forge,
        AttackBehaviour::Equivocate,
        AttackBehaviour::Flood,
    ];

    /// The kebab-case name used in scenarios.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    /// Whether every lie the attacker signs must be refused (forgeries,
    /// equivocations and replays), as opposed to value attacks, which robust
    /// rules bound.
    pub fn protocol_attack(self) -> bool {
        matches!(self, AttackBehaviour::Forge | AttackBehaviour::Equivocate | AttackBehaviour::Replay)
    }

    /// Whether the attack needs the honest deltas of the round.
    pub fn omniscient(self) -> bool {
        matches!(self, AttackBehaviour::Alie | AttackBehaviour::Ipm)
    }
}

/// The attack section of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    /// Fraction of the initial nodes that are attackers (the highest indices).
    #[serde(default)]
    pub fraction: f64,
    #[serde(default)]
    pub behaviour: AttackBehaviour,
    /// `scale`: the factor.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// `noise`: standard deviation as a multiple of the honest delta's RMS.
    #[serde(default = "default_noise")]
    pub noise: f32,
    /// `ipm`: ε.
    #[serde(default = "default_epsilon")]
    pub ipm_epsilon: f32,
    /// `alie`: z; by default the largest that hides (see [`alie_z`]).
    #[serde(default)]
    pub alie_z: Option<f64>,
    /// `replay`: how many rounds old the replayed deltas are (at least 4, so
    /// they are older than the ids a node keeps to suppress gossip duplicates).
    #[serde(default = "default_replay_age")]
    pub replay_age: u64,
    /// `flood`: junk messages per round to each mesh peer.
    #[serde(default = "default_flood")]
    pub flood_messages: u32,
}

fn default_scale() -> f32 {
    100.0
}
fn default_noise() -> f32 {
    10.0
}
fn default_epsilon() -> f32 {
    0.1
}
fn default_replay_age() -> u64 {
    5
}
fn default_flood() -> u32 {
    20
}

impl Default for Attack {
    fn default() -> Self {
        Self {
            fraction: 0.0,
            behaviour: AttackBehaviour::None,
            scale: default_scale(),
            noise: default_noise(),
            ipm_epsilon: default_epsilon(),
            alie_z: None,
            replay_age: default_replay_age(),
            flood_messages: default_flood(),
        }
    }
}

impl Attack {
    /// How many of `nodes` initial nodes attack.
    pub fn attackers(&self, nodes: usize) -> usize {
        (nodes as f64 * self.fraction).round() as usize
    }

    /// Changes the delta an attacker would honestly publish, for the value
    /// attacks; `honest` holds the honest deltas of the round (omniscient
    /// attacks only) and `nodes` / `attackers` count the swarm.
    pub fn tamper(
        &self,
        delta: &mut [f32],
        honest: &[Vec<f32>],
        nodes: usize,
        attackers: usize,
        rng: &mut Xoshiro256PlusPlus,
    ) {
        match self.behaviour {
            AttackBehaviour::SignFlip => delta.iter_mut().for_each(|v| *v = -*v),
            AttackBehaviour::Scale => delta.iter_mut().for_each(|v| *v *= self.scale),
            AttackBehaviour::Noise => {
                let std = self.noise as f64 * rms(delta);
                delta.iter_mut().for_each(|v| *v = (std * standard_normal(rng)) as f32);
            }
            AttackBehaviour::Alie | AttackBehaviour::Ipm if !honest.is_empty() => {
                let (mean, std) = moments(honest);
                if self.behaviour == AttackBehaviour::Alie {
                    let z = self.alie_z.unwrap_or_else(|| alie_z(nodes, attackers));
                    for ((v, m), s) in delta.iter_mut().zip(&mean).zip(&std) {
                        *v = (m - z * s) as f32;
                    }
                } else {
                    for (v, m) in delta.iter_mut().zip(&mean) {
                        *v = (-self.ipm_epsilon as f64 * m) as f32;
                    }
                }
            }
            _ => {}
        }
    }
}

/// ALIE's z for `n` nodes of which `f` attack: with s = ⌊n/2 + 1⌋ − f honest
/// nodes needed for a majority, z = Φ⁻¹((n − s) / n) (Baruch et al., 2019).
pub fn alie_z(n: usize, f: usize) -> f64 {
    let s = (n / 2 + 1).saturating_sub(f) as f64;
    let p = ((n as f64 - s) / n as f64).clamp(0.5, 0.999);
    inverse_normal_cdf(p)
}

/// Φ⁻¹(p) by Acklam's rational approximation (relative error below 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Coordinate-wise mean and (population) standard deviation.
fn moments(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let dim = rows[0].len();
    let mut mean = vec![0.0f64; dim];
    for r in rows {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n;
        }
    }
    let mut var = vec![0.0f64; dim];
    for r in rows {
        for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (v as f64 - m).powi(2) / n;
        }
    }
    (mean, var.into_iter().map(f64::sqrt).collect())
}

fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Forgeries of an attacker's delta: one claiming `victim`'s key (so its
/// signature cannot verify) and one whose payload was changed after signing.
pub fn forgeries(delta: &SignedDelta, victim: PublicKey) -> Vec<SignedDelta> {
    let mut impersonation = delta.clone();
    impersonation.header.sender = victim;
    let mut altered = delta.clone();
    let mut payload = altered.payload.to_vec();
    if let Some(b) = payload.first_mut() {
        *b ^= 0x40;
    }
    altered.payload = payload.into();
    vec![impersonation, altered]
}

/// A second, different delta for the same round, validly signed by `key`: the
/// negated payload of a dense delta, or any other bytes that decode.
pub fn equivocation(key: &SigningKey, delta: &SignedDelta, twin_payload: Vec<u8>) -> SignedDelta {
    let h = &delta.header;
    SignedDelta::sign(key, h.run_id, h.round, h.base, h.samples, h.codec, twin_payload)
}

/// A flood message: what it is and how a receiver refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Junk {
    /// Bigger than the largest delta of the run: refused on its length,
    /// before it is read into memory.
    Oversized,
    /// Of a plausible length but not a delta: refused when it does not decode.
    Malformed,
}

impl Junk {
    /// The refusal reason a receiver counts.
    pub fn reason(self) -> &'static str {
        match self {
            Junk::Oversized => "oversized",
            Junk::Malformed => "malformed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn inverse_normal_cdf_matches_known_quantiles() {
        for (p, z) in [(0.5, 0.0), (0.975, 1.959964), (0.7, 0.524401), (0.01, -2.326348)] {
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-5, "Φ⁻¹({p})");
        }
    }

    #[test]
    fn alie_z_follows_the_paper() {
        // n = 20, f = 5: s = 11 − 5 = 6, z = Φ⁻¹(14/20).
        assert!((alie_z(20, 5) - 0.524401).abs() < 1e-5);
        assert!(alie_z(20, 8) > alie_z(20, 2));
    }

    #[test]
    fn value_attacks_change_the_delta_as_described() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let honest = vec![vec![1.0f32, 2.0], vec![3.0, 2.0]];
        let attack = |behaviour| Attack { behaviour, ..Attack::default() };
        let mut d = vec![1.0f32, -2.0];
        attack(AttackBehaviour::SignFlip).tamper(&mut d, &honest, 4, 1, &mut rng);
        assert_eq!(d, vec![-1.0, 2.0]);
        attack(AttackBehaviour::Scale).tamper(&mut d, &honest, 4, 1, &mut rng);
        assert_eq!(d, vec![-100.0, 200.0]);
        attack(AttackBehaviour::Ipm).tamper(&mut d, &honest, 4, 1, &mut rng);
        assert_eq!(d, vec![-0.2, -0.2]);
        let mut a = attack(AttackBehaviour::Alie);
        a.alie_z = Some(1.0);
        a.tamper(&mut d, &honest, 4, 1, &mut rng);
        assert_eq!(d, vec![1.0, 2.0]);
    }

    #[test]
    fn every_attack_has_a_scenario_name() {
        for a in AttackBehaviour::ALL {
            let name = a.name();
            assert!(!name.is_empty());
            let back: AttackBehaviour = serde_json::from_value(serde_json::Value::String(name)).unwrap();
            assert_eq!(back, a);
        }
    }
}
