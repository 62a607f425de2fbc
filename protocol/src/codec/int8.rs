//! `int8`: blocks of values quantized to `i8` with one `f32` scale per block
//! (the block's largest magnitude over 127). Layout: every block's scale, then
//! every value, so each part is a flat array.

use super::{CodecError, INT8_BLOCK};

/// Encoded length for `n` values.
pub(super) fn len(n: usize) -> usize {
    n.div_ceil(INT8_BLOCK) * 4 + n
}

/// Appends the quantized form of `values` to `out`.
pub(super) fn encode_into(values: &[f32], out: &mut Vec<u8>) {
    let mut scales = Vec::with_capacity(values.len().div_ceil(INT8_BLOCK));
    for block in values.chunks(INT8_BLOCK) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max.is_finite() { max / 127.0 } else { 0.0 };
        scales.push(scale);
        out.extend_from_slice(&scale.to_le_bytes());
    }
    for (block, scale) in values.chunks(INT8_BLOCK).zip(&scales) {
        let inv = if *scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend(block.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    }
}

pub(super) fn encode(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len(values.len()));
    encode_into(values, &mut out);
    out
}

/// Splits a payload of `n` values into its scales and its values, checking lengths.
fn split(payload: &[u8], n: usize) -> Result<(&[u8], &[u8]), CodecError> {
    split_blocks(payload, n, n)
}

/// Splits a payload of `n` values in blocks into the blocks' scales and
/// `code_bytes` bytes of codes, checking the length (also for `int4`).
pub(super) fn split_blocks(
    payload: &[u8],
    n: usize,
    code_bytes: usize,
) -> Result<(&[u8], &[u8]), CodecError> {
    let expected = n.div_ceil(INT8_BLOCK) * 4 + code_bytes;
    if payload.len() != expected {
        return Err(CodecError::Length {
            codec: super::Codec::Int8,
            len: payload.len(),
            params: n,
            expected,
        });
    }
    Ok(payload.split_at(n.div_ceil(INT8_BLOCK) * 4))
}

/// Checks the quantized form of `n` values.
pub(super) fn check(payload: &[u8], n: usize) -> Result<(), CodecError> {
    let (scales, _) = split(payload, n)?;
    check_scales(scales)
}

/// Checks that every block's scale is a finite, non-negative `f32`.
pub(super) fn check_scales(scales: &[u8]) -> Result<(), CodecError> {
    match scales
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .position(|s| !(s.is_finite() && s >= 0.0))
    {
        Some(b) => Err(CodecError::BadScale(b)),
        None => Ok(()),
    }
}

/// Calls `f(position, value × weight)` for each of the `n` values.
pub(super) fn for_each(
    payload: &[u8],
    n: usize,
    weight: f32,
    f: impl FnMut(usize, f32),
) -> Result<(), CodecError> {
    let (scales, values) = split(payload, n)?;
    for_each_code(scales, n, weight, |i| values[i] as i8, f);
    Ok(())
}

/// Calls `f(position, code(position) × its block's scale × weight)` for each
/// of `n` values in blocks (also for `int4`, whose codes are packed).
pub(super) fn for_each_code(
    scales: &[u8],
    n: usize,
    weight: f32,
    code: impl Fn(usize) -> i8,
    mut f: impl FnMut(usize, f32),
) {
    for (b, scale) in scales.chunks_exact(4).enumerate() {
        let s = weight * f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        for i in b * INT8_BLOCK..((b + 1) * INT8_BLOCK).min(n) {
            f(i, s * code(i) as f32);
        }
    }
}

pub(super) fn accumulate(payload: &[u8], weight: f32, out: &mut [f32]) -> Result<(), CodecError> {
    let (scales, values) = split(payload, out.len())?;
    for ((scale, block), out) in
        scales.chunks_exact(4).zip(values.chunks(INT8_BLOCK)).zip(out.chunks_mut(INT8_BLOCK))
    {
        let s = weight * f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        for (o, &q) in out.iter_mut().zip(block) {
            *o += s * (q as i8) as f32;
        }
    }
    Ok(())
}
