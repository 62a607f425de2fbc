//! `f16`: every value as a little-endian IEEE half float. Values beyond the
//! half range are clamped to it, so a payload never holds an infinity.

use ::half::f16;

use super::CodecError;

const MAX: f32 = 65504.0;
/// Values converted at a time, on the stack.
const CHUNK: usize = 1024;

pub(super) fn encode(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for v in values {
        out.extend_from_slice(&f16::from_f32(v.clamp(-MAX, MAX)).to_le_bytes());
    }
    out
}

fn length(payload: &[u8], params: usize) -> Result<(), CodecError> {
    let expected = params * 2;
    if payload.len() != expected {
        return Err(CodecError::Length { codec: super::Codec::F16, len: payload.len(), params, expected });
    }
    Ok(())
}

pub(super) fn check(payload: &[u8], params: usize) -> Result<(), CodecError> {
    length(payload, params)?;
    // Exponent bits all ones: infinity or NaN.
    match payload.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00) {
        Some(i) => Err(CodecError::NonFinite(i)),
        None => Ok(()),
    }
}

pub(super) fn accumulate(payload: &[u8], weight: f32, out: &mut [f32]) -> Result<(), CodecError> {
    length(payload, out.len())?;
    let mut buf = [0.0f32; CHUNK];
    for (out, bytes) in out.chunks_mut(CHUNK).zip(payload.chunks(CHUNK * 2)) {
        let buf = &mut buf[..out.len()];
        for (b, c) in buf.iter_mut().zip(bytes.chunks_exact(2)) {
            *b = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
        }
        for (o, b) in out.iter_mut().zip(buf.iter()) {
            *o += weight * b;
        }
    }
    Ok(())
}
