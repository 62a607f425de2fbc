//! `f16`: every value as a little-endian IEEE half float. Values beyond the
//! half range are clamped to it, so a payload never holds an infinity.

use ::half::{f16, slice::HalfBitsSliceExt, slice::HalfFloatSliceExt};

use super::CodecError;

const MAX: f32 = 65504.0;
/// Values converted at a time, on the stack.
const CHUNK: usize = 1024;

pub(super) fn encode(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 2);
    let mut clamped = [0.0f32; CHUNK];
    let mut halves = [f16::ZERO; CHUNK];
    for chunk in values.chunks(CHUNK) {
        let (clamped, halves) = (&mut clamped[..chunk.len()], &mut halves[..chunk.len()]);
        for (c, v) in clamped.iter_mut().zip(chunk) {
            *c = v.clamp(-MAX, MAX);
        }
        // A block at a time: F16C's 8-wide conversion where the CPU has it.
        halves.convert_from_f32_slice(clamped);
        for h in halves.iter() {
            out.extend_from_slice(&h.to_le_bytes());
        }
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
    let mut bits = [0u16; CHUNK];
    let mut buf = [0.0f32; CHUNK];
    for (out, bytes) in out.chunks_mut(CHUNK).zip(payload.chunks(CHUNK * 2)) {
        let (bits, buf) = (&mut bits[..out.len()], &mut buf[..out.len()]);
        for (b, c) in bits.iter_mut().zip(bytes.chunks_exact(2)) {
            *b = u16::from_le_bytes([c[0], c[1]]);
        }
        // One conversion of the block (F16C where the CPU has it): a call
        // per value checked the CPU's features and converted one at a time.
        bits.reinterpret_cast::<f16>().convert_to_f32_slice(buf);
        for (o, b) in out.iter_mut().zip(buf.iter()) {
            *o += weight * b;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block conversions give exactly what one value at a time gives:
    /// every finite half decodes to the same float, and encoding rounds alike.
    #[test]
    fn block_conversions_match_one_value_at_a_time() {
        let finite: Vec<u16> = (0..=u16::MAX).filter(|b| b & 0x7C00 != 0x7C00).collect();
        let payload: Vec<u8> = finite.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut out = vec![0.0f32; finite.len()];
        accumulate(&payload, 1.0, &mut out).unwrap();
        for (b, got) in finite.iter().zip(&out) {
            assert_eq!(got.to_bits(), (0.0 + f16::from_bits(*b).to_f32()).to_bits(), "half {b:#06x}");
        }
        let values: Vec<f32> = (0..5_000)
            .map(|i| (i as f32 - 2_500.0) * 31.7)
            .chain([1e-8, -6e-5, 65519.0, 65520.0, 1e9, -1e9, f32::MIN_POSITIVE, -0.0])
            .collect();
        let want: Vec<u8> =
            values.iter().flat_map(|v| f16::from_f32(v.clamp(-MAX, MAX)).to_le_bytes()).collect();
        assert_eq!(encode(&values), want);
    }
}
