//! `topk:F` and `topk:F+int8`: only the k = ⌈F·n⌉ coordinates largest in
//! magnitude. Layout: k indices in increasing order as LEB128 varint gaps
//! (the first gap is the first index), then the k values, as `f32` or in the
//! int8 block layout. k follows from the codec and the model, so it is not sent.

use super::{int8, CodecError};

fn values_len(k: usize, int8: bool) -> usize {
    if int8 {
        int8::len(k)
    } else {
        k * 4
    }
}

/// Largest payload: every gap in its longest (5-byte) form.
pub(super) fn max_len(k: usize, int8: bool) -> usize {
    k * 5 + values_len(k, int8)
}

fn write_varint(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint of at most 5 bytes; returns the value and the bytes used.
fn read_varint(bytes: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        value |= ((b & 0x7F) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(CodecError::Sparse("index gap is truncated or longer than 5 bytes".into()))
}

/// The indices of the `k` values largest in magnitude, in increasing order; ties
/// go to the lower index, so the choice is canonical.
///
/// A full selection over millions of coordinates is slow (random access through
/// an index array), so a threshold is first estimated from an evenly strided
/// sample, set low enough that at least `k` values clear it; the exact selection
/// then runs over those candidates only. The result is the same as a full
/// selection: every top-k value is at least the k-th largest magnitude, which is
/// at least any threshold that `k` values clear.
pub(super) fn select(values: &[f32], k: usize) -> Vec<u32> {
    let candidates = match threshold(values.len(), k, |i| values[i]) {
        Some(t) => (0..values.len() as u32).filter(|&i| values[i as usize].abs() >= t).collect(),
        None => Vec::new(),
    };
    select_from(values, k, candidates)
}

/// The exact top `k` of `values` among `candidates` (all indices if there are
/// fewer than `k` candidates), in increasing order.
fn select_from(values: &[f32], k: usize, mut candidates: Vec<u32>) -> Vec<u32> {
    let n = values.len();
    if k >= n {
        return (0..n as u32).collect();
    }
    if candidates.len() < k {
        candidates = (0..n as u32).collect();
    }
    let by_magnitude =
        |a: &u32, b: &u32| values[*b as usize].abs().total_cmp(&values[*a as usize].abs()).then(a.cmp(b));
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, by_magnitude);
    }
    candidates.truncate(k);
    candidates.sort_unstable();
    candidates
}

/// A magnitude that somewhat more than `k` of the `n` values `value(i)` likely
/// reach, estimated from an evenly strided sample; `None` when `n` is small
/// enough to select directly.
fn threshold(n: usize, k: usize, value: impl Fn(usize) -> f32) -> Option<f32> {
    const SAMPLE: usize = 1 << 16;
    if n <= 4 * SAMPLE || k == 0 || k >= n {
        return None;
    }
    let stride = n / SAMPLE;
    let mut sample: Vec<f32> = (0..n).step_by(stride).map(|i| value(i).abs()).collect();
    let m = sample.len();
    let expected = (k as f64 * m as f64 / n as f64).ceil();
    // Aim several standard deviations below the expected count's position.
    let want = (expected + 4.0 * expected.sqrt() + 16.0).min(m as f64) as usize;
    let position = m - want;
    let (_, t, _) = sample.select_nth_unstable_by(position, |a, b| a.total_cmp(b));
    Some(*t)
}

pub(super) fn encode(values: &[f32], k: usize, int8: bool) -> Vec<u8> {
    write(values, &select(values, k), int8)
}

/// Error feedback fused into one pass: `residual ← decay·residual + delta`
/// while collecting the coordinates above the sampled threshold, then the
/// top-k of the result is encoded and what it carries is taken out of the
/// residual. Same payload and residual as updating first and encoding after,
/// with one pass over the model instead of two.
pub(super) fn encode_with_feedback(
    delta: &[f32],
    residual: &mut [f32],
    decay: f32,
    k: usize,
    int8: bool,
) -> Vec<u8> {
    let n = delta.len();
    let candidates = match threshold(n, k, |i| decay * residual[i] + delta[i]) {
        Some(t) => {
            let mut candidates = Vec::with_capacity(k + k / 2 + 64);
            for (i, (r, d)) in residual.iter_mut().zip(delta).enumerate() {
                *r = decay * *r + d;
                if r.abs() >= t {
                    candidates.push(i as u32);
                }
            }
            candidates
        }
        None => {
            for (r, d) in residual.iter_mut().zip(delta) {
                *r = decay * *r + d;
            }
            Vec::new()
        }
    };
    let idx = select_from(residual, k, candidates);
    let payload = write(residual, &idx, int8);
    accumulate(&payload, k, int8, -1.0, residual).expect("a payload we just encoded decodes");
    payload
}

/// The payload carrying `values` at the increasing indices `idx`.
fn write(values: &[f32], idx: &[u32], int8: bool) -> Vec<u8> {
    let k = idx.len();
    let mut out = Vec::with_capacity(max_len(k, int8));
    let mut prev = 0;
    for (j, &i) in idx.iter().enumerate() {
        write_varint(if j == 0 { i } else { i - prev }, &mut out);
        prev = i;
    }
    let kept: Vec<f32> = idx.iter().map(|&i| values[i as usize]).collect();
    if int8 {
        int8::encode_into(&kept, &mut out);
    } else {
        for v in kept {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Splits a payload into its index section and its value section.
fn split(payload: &[u8], k: usize, int8: bool) -> Result<(&[u8], &[u8]), CodecError> {
    let values = values_len(k, int8);
    if payload.len() < values + k || payload.len() > max_len(k, int8) {
        return Err(CodecError::Sparse(format!(
            "{} bytes cannot hold {k} indices and their values ({values} bytes)",
            payload.len()
        )));
    }
    Ok(payload.split_at(payload.len() - values))
}

/// Calls `f(j, index)` for the k indices, checking that they increase and stay below `n`.
fn for_each_index(
    section: &[u8],
    k: usize,
    n: usize,
    mut f: impl FnMut(usize, usize),
) -> Result<(), CodecError> {
    let mut pos = 0;
    let mut prev = 0u64;
    for j in 0..k {
        let (gap, used) = read_varint(&section[pos..])?;
        pos += used;
        if j > 0 && gap == 0 {
            return Err(CodecError::Sparse(format!("index {j} repeats the one before it")));
        }
        let index = if j == 0 { gap } else { prev + gap };
        if index >= n as u64 {
            return Err(CodecError::Sparse(format!("index {index} is outside a model of {n} parameters")));
        }
        f(j, index as usize);
        prev = index;
    }
    if pos != section.len() {
        return Err(CodecError::Sparse(format!("{} bytes after the last index", section.len() - pos)));
    }
    Ok(())
}

pub(super) fn check(payload: &[u8], n: usize, k: usize, int8: bool) -> Result<(), CodecError> {
    let (indices, values) = split(payload, k, int8)?;
    for_each_index(indices, k, n, |_, _| {})?;
    if int8 {
        int8::check(values, k)
    } else {
        match values.chunks_exact(4).position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()) {
            Some(i) => Err(CodecError::NonFinite(i)),
            None => Ok(()),
        }
    }
}

pub(super) fn accumulate(
    payload: &[u8],
    k: usize,
    int8: bool,
    weight: f32,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let (indices, values) = split(payload, k, int8)?;
    let n = out.len();
    if int8 {
        let mut positions = Vec::with_capacity(k);
        for_each_index(indices, k, n, |_, i| positions.push(i))?;
        int8::for_each(values, k, weight, |j, v| out[positions[j]] += v)
    } else {
        for_each_index(indices, k, n, |j, i| {
            let c = &values[4 * j..4 * j + 4];
            out[i] += weight * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        })
    }
}
