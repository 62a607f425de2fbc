//! bincode itself, under the one configuration every encoding uses, and the
//! byte conversions beneath it: what the types' own modules may call (a run
//! id's hash, a header's digest) without depending on the message encodings
//! in [`crate::wire`], which depend on them.

use serde::{Deserialize, Serialize};

pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

pub(crate) type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

pub(crate) const CONFIG: Config = bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>();

/// Why bytes could not be decoded.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message is {len} bytes, over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message has {0} trailing bytes after its end")]
    TrailingBytes(usize),
}

/// Encodes a value. Encoding our own types cannot fail except by running out of
/// memory, so this panics only on a bug (a type serde cannot express in bincode).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, CONFIG).expect("starling types always encode")
}

/// Decodes a value from untrusted bytes of at most `limit` bytes. Types with byte
/// fields should borrow them (`&'a [u8]`) so that decoding never allocates.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, WireError> {
    let limit = limit.min(MAX_MESSAGE_BYTES);
    if bytes.len() > limit {
        return Err(WireError::TooLarge { len: bytes.len(), limit });
    }
    let (value, read) = bincode::serde::borrow_decode_from_slice(bytes, CONFIG)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

/// Little-endian bytes of an `f32` slice.
pub fn f32s_to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    extend_le_bytes(&mut out, values);
    out
}

/// Appends `values` to `out` as little-endian `f32`s.
pub fn extend_le_bytes(out: &mut Vec<u8>, values: &[f32]) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(bytemuck::cast_slice(values));
    #[cfg(not(target_endian = "little"))]
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// `f32`s from little-endian bytes; the length must be a multiple of 4 (callers check).
pub fn le_bytes_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
