//! Blocks of values as 4-bit integers with one `f32` scale per block (the
//! block's largest magnitude over 7): the plain values of `lowrank:R+4bit`.
//! Layout: every block's scale, then every value's code, two to a byte, low
//! half first, the last byte's unused half zero.

use super::{int8, CodecError, INT8_BLOCK};

/// Encoded length for `n` values.
pub(super) fn len(n: usize) -> usize {
    n.div_ceil(INT8_BLOCK) * 4 + n.div_ceil(2)
}

/// Appends the quantized form of `values` to `out`.
pub(super) fn encode_into(values: &[f32], out: &mut Vec<u8>) {
    let mut codes = Vec::with_capacity(values.len());
    for block in values.chunks(INT8_BLOCK) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max.is_finite() { max / 7.0 } else { 0.0 };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend_from_slice(&scale.to_le_bytes());
        codes.extend(block.iter().map(|v| (v * inv).round().clamp(-7.0, 7.0) as i8));
    }
    pack(&codes, out);
}

/// Appends 4-bit two's-complement `codes` (each in -8..=7), two to a byte, low
/// half first, the last byte's unused half zero.
pub(super) fn pack(codes: &[i8], out: &mut Vec<u8>) {
    out.extend(codes.chunks(2).map(|p| (p[0] as u8 & 0x0F) | (p.get(1).map_or(0, |&c| c as u8) << 4)));
}

/// Splits a payload of `n` values into its scales and its codes, checking
/// the length, the scales and the last byte's unused half.
fn split(payload: &[u8], n: usize) -> Result<(&[u8], &[u8]), CodecError> {
    let (scales, codes) = int8::split_blocks(payload, n, n.div_ceil(2))?;
    int8::check_scales(scales)?;
    if n % 2 == 1 && codes.last().is_some_and(|b| b >> 4 != 0) {
        return Err(CodecError::LowRank("the last plain value byte's unused half is not zero".into()));
    }
    Ok((scales, codes))
}

/// Checks the quantized form of `n` values.
pub(super) fn check(payload: &[u8], n: usize) -> Result<(), CodecError> {
    split(payload, n).map(|_| ())
}

/// Code `k` of a packed section of 4-bit two's-complement codes.
pub(super) fn code(codes: &[u8], k: usize) -> i8 {
    let byte = codes[k / 2];
    let nibble = if k.is_multiple_of(2) { byte << 4 } else { byte & 0xF0 };
    (nibble as i8) >> 4
}

/// Calls `f(position, value × weight)` for each of the `n` values.
pub(super) fn for_each(
    payload: &[u8],
    n: usize,
    weight: f32,
    f: impl FnMut(usize, f32),
) -> Result<(), CodecError> {
    let (scales, codes) = split(payload, n)?;
    int8::for_each_code(scales, n, weight, |i| code(codes, i), f);
    Ok(())
}
