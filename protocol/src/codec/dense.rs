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
    match payload.chunks_exact(4).position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()) {
        Some(i) => Err(CodecError::NonFinite(i)),
        None => Ok(()),
    }
}

pub(super) fn accumulate(payload: &[u8], weight: f32, out: &mut [f32]) -> Result<(), CodecError> {
    length(payload, out.len())?;
    for (o, c) in out.iter_mut().zip(payload.chunks_exact(4)) {
        *o += weight * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}
