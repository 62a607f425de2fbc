//! Seeded random draws shared by the simulated links and the attackers.

use rand::{rngs::Xoshiro256PlusPlus, RngExt};

/// A standard normal draw (Box–Muller).
pub(crate) fn standard_normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
