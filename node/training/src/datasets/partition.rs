//! Splitting labelled data across nodes: IID (a seeded shuffle cut into equal
//! parts) or non-IID (each class split by proportions drawn from Dirichlet(α)).
//! Shards of one count are disjoint, and the same seed gives the same shards.

use rand::rngs::Xoshiro256PlusPlus;
use starling_protocol::Partition;

use super::Shard;
use crate::data::{below, normal, rng_for, uniform01, DataError, Dataset};

const TAG_PARTITION: u64 = 0x7061_7274_0000_0008;
/// Redraws of the Dirichlet proportions allowed while some shard is too small.
const MAX_REDRAWS: usize = 100;
/// The fewest samples a Dirichlet shard may get (or all / count, if less).
const MIN_SHARD: usize = 10;

/// The samples of `data` that belong to `shard`.
pub fn split(data: &Dataset, partition: Partition, shard: Shard, seed: u64) -> Result<Dataset, DataError> {
    let indices = assign(&data.labels, data.classes, partition, shard.count, seed);
    let mine = &indices[shard.index];
    if mine.is_empty() {
        return Err(DataError::Malformed(format!(
            "shard {}/{} is empty: {} samples cannot be split {} ways; use fewer nodes or more data",
            shard.index,
            shard.count,
            data.len(),
            shard.count
        )));
    }
    Ok(select(data, mine))
}

/// Every shard's sample indices, in the order each shard visits them.
pub fn assign(
    labels: &[u32],
    classes: usize,
    partition: Partition,
    count: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut rng = rng_for(&[TAG_PARTITION, seed, count as u64]);
    match partition {
        Partition::Iid => {
            let order = shuffled(labels.len(), &mut rng);
            (0..count)
                .map(|i| order[labels.len() * i / count..labels.len() * (i + 1) / count].to_vec())
                .collect()
        }
        Partition::Dirichlet(alpha) => {
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
            for i in shuffled(labels.len(), &mut rng) {
                by_class[labels[i] as usize].push(i);
            }
            let floor = MIN_SHARD.min(labels.len() / count.max(1));
            let mut shards = Vec::new();
            for _ in 0..MAX_REDRAWS {
                shards = vec![Vec::new(); count];
                for members in &by_class {
                    let p = dirichlet(alpha, count, &mut rng);
                    let mut start = 0;
                    let mut acc = 0.0;
                    for (node, share) in p.iter().enumerate() {
                        acc += share;
                        let end = if node + 1 == count {
                            members.len()
                        } else {
                            (acc * members.len() as f64) as usize
                        };
                        let end = end.clamp(start, members.len());
                        shards[node].extend_from_slice(&members[start..end]);
                        start = end;
                    }
                }
                if shards.iter().all(|s| s.len() >= floor) {
                    break;
                }
            }
            for s in shards.iter_mut() {
                // Interleave classes so batches mix them.
                let order = shuffled(s.len(), &mut rng);
                *s = order.into_iter().map(|k| s[k]).collect();
            }
            shards
        }
    }
}

/// A Fisher-Yates permutation of `0..n`.
pub fn shuffled(n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, below(rng, i as u64 + 1) as usize);
    }
    order
}

/// The samples at `indices`, in that order.
pub fn select(data: &Dataset, indices: &[usize]) -> Dataset {
    let mut features = Vec::with_capacity(indices.len() * data.dim);
    for &i in indices {
        features.extend_from_slice(data.row(i));
    }
    Dataset {
        features,
        labels: indices.iter().map(|&i| data.labels[i]).collect(),
        dim: data.dim,
        classes: data.classes,
    }
}

/// Proportions over `k` parts from Dirichlet(α, …, α).
fn dirichlet(alpha: f64, k: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
    let g: Vec<f64> = (0..k).map(|_| gamma(alpha, rng)).collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 {
        g.iter().map(|x| x / sum).collect()
    } else {
        vec![1.0 / k as f64; k]
    }
}

/// Gamma(α, 1) by Marsaglia and Tsang; α < 1 through Gamma(α + 1)·U^(1/α).
fn gamma(alpha: f64, rng: &mut Xoshiro256PlusPlus) -> f64 {
    if alpha < 1.0 {
        let u = 1.0 - uniform01(rng);
        return gamma(alpha + 1.0, rng) * u.powf(1.0 / alpha);
    }
    let d = alpha - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - uniform01(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: usize) -> Vec<u32> {
        (0..n).map(|i| (i % classes) as u32).collect()
    }

    fn check_disjoint_cover(shards: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "shards are disjoint and cover every sample");
    }

    #[test]
    fn iid_shards_are_disjoint_equal_and_reproducible() {
        let l = labels(1003, 10);
        let a = assign(&l, 10, Partition::Iid, 4, 7);
        check_disjoint_cover(&a, 1003);
        assert!(a.iter().all(|s| (250..=251).contains(&s.len())));
        assert_eq!(a, assign(&l, 10, Partition::Iid, 4, 7));
        assert_ne!(a, assign(&l, 10, Partition::Iid, 4, 8));
    }

    #[test]
    fn dirichlet_shards_are_disjoint_reproducible_and_skewed() {
        let l = labels(4000, 10);
        let skewed = assign(&l, 10, Partition::Dirichlet(0.1), 4, 7);
        check_disjoint_cover(&skewed, 4000);
        assert_eq!(skewed, assign(&l, 10, Partition::Dirichlet(0.1), 4, 7));
        let top_share = |shards: &[Vec<usize>]| -> f64 {
            shards
                .iter()
                .map(|s| {
                    let mut counts = [0usize; 10];
                    s.iter().for_each(|&i| counts[l[i] as usize] += 1);
                    *counts.iter().max().unwrap() as f64 / s.len().max(1) as f64
                })
                .sum::<f64>()
                / shards.len() as f64
        };
        let even = assign(&l, 10, Partition::Dirichlet(100.0), 4, 7);
        assert!(top_share(&skewed) > 0.35, "α = 0.1 concentrates classes: {}", top_share(&skewed));
        assert!(top_share(&even) < 0.2, "α = 100 is near IID: {}", top_share(&even));
        assert!(skewed.iter().all(|s| s.len() >= MIN_SHARD));
    }

    #[test]
    fn an_empty_shard_is_an_error_naming_it() {
        let d = Dataset { features: vec![0.0; 2], labels: vec![0, 1], dim: 1, classes: 2 };
        let err = split(&d, Partition::Iid, Shard { index: 0, count: 3 }, 1).unwrap_err().to_string();
        assert!(err.contains("shard 0/3"), "{err}");
    }
}
