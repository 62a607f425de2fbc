//! `dense`: every value as a little-endian `f32`.

use super::CodecError;

pub(super) fn encode(values: &[f32]) -> Vec<u8> {
    crate::wire::primitives::f32s_to_le_bytes(values)
}

fn length(payload: &[u8], params: usize) -> Result<(), CodecError> {
    let expected = params * 4;
    if payload.len() != expected {
        return Err(CodecError::Length { codec: super::Codec::Dense, len: payload.len(), params, expected });
    }
    Ok(())
}

pub(super) fn check(payload: &[u8], params: usize) -> Result<(), CodecError> {
    length(payload, params)?;
    // A block at a time with no early exit inside it, so the test vectorises;
    // the first bad value is looked for only in a block that has one.
    const BLOCK: usize = 4096 * 4;
    for (b, block) in payload.chunks(BLOCK).enumerate() {
        let exponents = block.chunks_exact(4).fold(0u32, |seen, c| {
            let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            seen | u32::from(bits & 0x7f80_0000 == 0x7f80_0000)
        });
        if exponents != 0 {
            let i =
                block.chunks_exact(4).position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite());
            return Err(CodecError::NonFinite(
                b * (BLOCK / 4) + i.expect("the block has a value that is not finite"),
            ));
        }
    }
    Ok(())
}

pub(super) fn accumulate(payload: &[u8], weight: f32, out: &mut [f32]) -> Result<(), CodecError> {
    length(payload, out.len())?;
    for (o, c) in out.iter_mut().zip(payload.chunks_exact(4)) {
        *o += weight * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// `out = Σ weightᵢ × payloadᵢ`, summed in the order given, a cache-sized
/// block of `out` at a time: `out` is written once, not once per payload, and
/// each sum is the one zeroing `out` and [`accumulate`] of each would give.
/// Lengths are checked first; the error names the input.
pub(super) fn weighted_sum(inputs: &[(&[u8], f32)], out: &mut [f32]) -> Result<(), (usize, CodecError)> {
    for (i, (payload, _)) in inputs.iter().enumerate() {
        length(payload, out.len()).map_err(|e| (i, e))?;
    }
    const BLOCK: usize = 8192;
    for (b, block) in out.chunks_mut(BLOCK).enumerate() {
        block.fill(0.0);
        let bytes = b * BLOCK * 4..(b * BLOCK + block.len()) * 4;
        for (payload, weight) in inputs {
            accumulate(&payload[bytes.clone()], *weight, block).expect("lengths checked above");
        }
    }
    Ok(())
}
