//! The simulated network: latency draws, transfer times and the gossip mesh.

use rand::{rngs::Xoshiro256PlusPlus, RngExt};

use crate::{draw::standard_normal, scenario::Latency};

/// Microseconds to push `bytes` through a link of `mbps` (0: instant).
pub fn transfer_time(bytes: u64, mbps: f64) -> u64 {
    if mbps <= 0.0 {
        return 0;
    }
    (bytes as f64 * 8.0 / mbps).round() as u64
}

/// The slower of two bandwidths, where 0 means unlimited.
pub fn slower(a_mbps: f64, b_mbps: f64) -> f64 {
    match (a_mbps > 0.0, b_mbps > 0.0) {
        (true, true) => a_mbps.min(b_mbps),
        (true, false) => a_mbps,
        (false, _) => b_mbps,
    }
}

/// One latency draw, in microseconds.
pub fn sample_latency(latency: &Latency, rng: &mut Xoshiro256PlusPlus) -> u64 {
    let ms = match *latency {
        Latency::Fixed { ms } => ms,
        Latency::Uniform { min_ms, max_ms } => {
            if max_ms > min_ms {
                rng.random_range(min_ms..max_ms)
            } else {
                min_ms
            }
        }
        Latency::Normal { mean_ms, jitter_ms } => (mean_ms + jitter_ms * standard_normal(rng)).max(0.0),
        Latency::Lognormal { median_ms, sigma } => median_ms * (sigma * standard_normal(rng)).exp(),
    };
    (ms * 1000.0).round() as u64
}

/// Each node's gossip mesh peers (symmetric).
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    peers: Vec<Vec<usize>>,
    complete: bool,
}

impl Mesh {
    pub fn peers(&self, node: usize) -> &[usize] {
        &self.peers[node]
    }

    /// Adds a node, linked to `degree` random existing nodes (all of them in a complete mesh).
    pub fn join(&mut self, node: usize, degree: usize, rng: &mut Xoshiro256PlusPlus) {
        debug_assert_eq!(node, self.peers.len());
        self.peers.push(Vec::new());
        let others: Vec<usize> = (0..node).collect();
        let picks: Vec<usize> = if self.complete || degree >= others.len() {
            others
        } else {
            let mut chosen = Vec::with_capacity(degree);
            while chosen.len() < degree {
                let p = rng.random_range(0..node);
                if !chosen.contains(&p) {
                    chosen.push(p);
                }
            }
            chosen
        };
        for p in picks {
            self.link(node, p);
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        if a != b && !self.peers[a].contains(&b) {
            self.peers[a].push(b);
            self.peers[b].push(a);
        }
    }
}

/// A random mesh where every node has at least `degree` peers (about `degree`
/// on average, as gossipsub keeps between D_lo and D_hi), connected: a ring
/// plus random chords. `degree` 0, or one at least `nodes − 1`, links every pair.
pub fn mesh(nodes: usize, degree: usize, rng: &mut Xoshiro256PlusPlus) -> Mesh {
    let mut m = Mesh { peers: vec![Vec::new(); nodes], complete: degree == 0 || degree + 1 >= nodes };
    if m.complete {
        for a in 0..nodes {
            m.peers[a] = (0..nodes).filter(|&b| b != a).collect();
        }
        return m;
    }
    for a in 0..nodes {
        m.link(a, (a + 1) % nodes);
    }
    for a in 0..nodes {
        let mut tries = 0;
        while m.peers[a].len() < degree && tries < 10 * degree {
            m.link(a, rng.random_range(0..nodes));
            tries += 1;
        }
    }
    for p in &mut m.peers {
        p.sort_unstable();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_mesh_is_symmetric_with_the_degree_asked() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let m = mesh(200, 8, &mut rng);
        for a in 0..200 {
            assert!(m.peers(a).len() >= 8, "node {a} has {} peers", m.peers(a).len());
            for &b in m.peers(a) {
                assert!(m.peers(b).contains(&a));
            }
        }
        let full = mesh(5, 8, &mut rng);
        assert!((0..5).all(|a| full.peers(a).len() == 4));
    }

    #[test]
    fn transfer_time_follows_bandwidth() {
        assert_eq!(transfer_time(1_250_000, 10.0), 1_000_000, "10 Mbit/s moves 1.25 MB in one second");
        assert_eq!(transfer_time(1_000, 0.0), 0);
    }
}
