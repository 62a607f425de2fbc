//! A procedurally drawn, digit-like 10-class image task written as IDX files,
//! so image figures can be reproduced without downloading anything: each 28×28
//! glyph is a class's strokes under a random scale, rotation, shear, offset,
//! per-point jitter, stroke width and pixel noise.

use std::path::Path;

use rand::rngs::Xoshiro256PlusPlus;

use super::idx::write_idx;
use crate::data::{normal, rng_for, uniform01, DataError};

pub const SIDE: usize = 28;
pub const CLASSES: usize = 10;
const TAG_GLYPHS: u64 = 0x676c_7970_6800_0009;

type Pt = (f64, f64);
const TL: Pt = (0.3, 0.15);
const TR: Pt = (0.7, 0.15);
const ML: Pt = (0.3, 0.5);
const MR: Pt = (0.7, 0.5);
const BL: Pt = (0.3, 0.85);
const BR: Pt = (0.7, 0.85);

/// The strokes of each class, in a unit box (x right, y down).
fn strokes(class: usize) -> Vec<(Pt, Pt)> {
    match class {
        0 => vec![(TL, TR), (TR, BR), (BR, BL), (BL, TL)],
        1 => vec![((0.5, 0.15), (0.5, 0.85)), ((0.35, 0.3), (0.5, 0.15))],
        2 => vec![(TL, TR), (TR, MR), (MR, ML), (ML, BL), (BL, BR)],
        3 => vec![(TL, TR), (TR, BR), (BR, BL), (ML, MR)],
        4 => vec![(TL, ML), (ML, MR), (TR, BR)],
        5 => vec![(TR, TL), (TL, ML), (ML, MR), (MR, BR), (BR, BL)],
        6 => vec![(TR, TL), (TL, BL), (BL, BR), (BR, MR), (MR, ML)],
        7 => vec![(TL, TR), (TR, (0.45, 0.85))],
        8 => vec![(TL, TR), (TR, BR), (BR, BL), (BL, TL), (ML, MR)],
        _ => vec![(MR, ML), (ML, TL), (TL, TR), (TR, BR), (BR, BL)],
    }
}

/// Draws `n` glyphs from `rng`: pixels (`n × 28 × 28`) and labels.
pub fn draw(n: usize, rng: &mut Xoshiro256PlusPlus) -> (Vec<u8>, Vec<u8>) {
    let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
    let mut labels = Vec::with_capacity(n);
    let u = |rng: &mut Xoshiro256PlusPlus, lo: f64, hi: f64| lo + (hi - lo) * uniform01(rng);
    for _ in 0..n {
        let class = (uniform01(rng) * CLASSES as f64) as usize % CLASSES;
        let scale = u(rng, 0.75, 1.1);
        let angle = u(rng, -0.25, 0.25);
        let shear = u(rng, -0.2, 0.2);
        let (dx, dy) = (u(rng, -0.1, 0.1), u(rng, -0.1, 0.1));
        let width = u(rng, 0.035, 0.075);
        let (sin, cos) = angle.sin_cos();
        let place = |rng: &mut Xoshiro256PlusPlus, (x, y): Pt| -> Pt {
            let (x, y) = (x - 0.5 + u(rng, -0.04, 0.04), y - 0.5 + u(rng, -0.04, 0.04));
            let x = x + shear * y;
            (0.5 + dx + scale * (cos * x - sin * y), 0.5 + dy + scale * (sin * x + cos * y))
        };
        let segs: Vec<(Pt, Pt)> =
            strokes(class).into_iter().map(|(a, b)| (place(rng, a), place(rng, b))).collect();
        for py in 0..SIDE {
            for px in 0..SIDE {
                let p = ((px as f64 + 0.5) / SIDE as f64, (py as f64 + 0.5) / SIDE as f64);
                let d = segs.iter().map(|&(a, b)| distance(p, a, b)).fold(f64::INFINITY, f64::min);
                let ink = (1.0 - (d - width).max(0.0) / 0.04).clamp(0.0, 1.0);
                let v = (ink + 0.12 * normal(rng)).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round() as u8);
            }
        }
        labels.push(class as u8);
    }
    (pixels, labels)
}

/// Writes `train` and `test` glyphs to `dir` as gzipped IDX files named like MNIST's.
pub fn write(dir: &Path, train: usize, test: usize, seed: u64) -> Result<(), DataError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::Io { path: dir.to_path_buf(), reason: e.to_string() })?;
    for (prefix, n, stream) in [("train", train, 0u64), ("t10k", test, 1)] {
        if n == 0 {
            continue;
        }
        let (pixels, labels) = draw(n, &mut rng_for(&[TAG_GLYPHS, seed, stream]));
        write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &[n, SIDE, SIDE], &pixels)?;
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[n], &labels)?;
    }
    Ok(())
}

fn distance(p: Pt, a: Pt, b: Pt) -> f64 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 { (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (cx, cy) = (a.0 + t * vx - p.0, a.1 + t * vy - p.1);
    (cx * cx + cy * cy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_reproducible_idx_with_every_class() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 200, 50, 1).unwrap();
        let split = super::super::idx::load_dir(dir.path(), CLASSES).unwrap();
        assert_eq!((split.train.len(), split.train.dim), (200, 784));
        assert_eq!(split.test.as_ref().unwrap().len(), 50);
        let mut seen = [false; CLASSES];
        split.train.labels.iter().for_each(|&l| seen[l as usize] = true);
        assert!(seen.iter().all(|&s| s));
        let again = tempfile::tempdir().unwrap();
        write(again.path(), 200, 50, 1).unwrap();
        assert_eq!(split.train, super::super::idx::load_dir(again.path(), CLASSES).unwrap().train);
    }
}
