//! Payload codecs: how a delta's `f32` values become bytes and back.
//!
//! Decoding checks every length against the model's shape and refuses what
//! does not fit; it never panics on hostile input.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::wire::{f32s_to_le_bytes, le_bytes_to_f32s};

/// A payload encoding, named in the RunSpec and in every delta header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Every value as a little-endian `f32`.
    Dense,
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("{codec} payload is {len} bytes; a model of {params} parameters needs {expected}")]
    Length { codec: Codec, len: usize, params: usize, expected: usize },
    #[error("payload holds a non-finite value at index {0}")]
    NonFinite(usize),
    #[error("unknown codec `{0}` (known: dense)")]
    Unknown(String),
}

impl Codec {
    /// Encodes a delta.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Codec::Dense => f32s_to_le_bytes(values),
        }
    }

    /// Decodes a payload for a model of `params` parameters.
    pub fn decode(self, payload: &[u8], params: usize) -> Result<Vec<f32>, CodecError> {
        match self {
            Codec::Dense => {
                let expected = params * 4;
                if payload.len() != expected {
                    return Err(CodecError::Length { codec: self, len: payload.len(), params, expected });
                }
                let values = le_bytes_to_f32s(payload);
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(CodecError::NonFinite(i));
                }
                Ok(values)
            }
        }
    }

    /// Checks that a payload decodes for `params` parameters, without keeping the values.
    pub fn check(self, payload: &[u8], params: usize) -> Result<(), CodecError> {
        match self {
            Codec::Dense => {
                let expected = params * 4;
                if payload.len() != expected {
                    return Err(CodecError::Length { codec: self, len: payload.len(), params, expected });
                }
                match payload
                    .chunks_exact(4)
                    .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
                {
                    Some(i) => Err(CodecError::NonFinite(i)),
                    None => Ok(()),
                }
            }
        }
    }

    /// The largest payload this codec produces for `params` parameters.
    pub fn max_payload_len(self, params: usize) -> usize {
        match self {
            Codec::Dense => params * 4,
        }
    }

    /// The codec's name, as in the RunSpec and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Dense => "dense",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dense" => Ok(Codec::Dense),
            other => Err(CodecError::Unknown(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_round_trips() {
        let v = vec![1.0, -0.5, 3.25e-7, 0.0];
        assert_eq!(Codec::Dense.decode(&Codec::Dense.encode(&v), 4).unwrap(), v);
    }

    #[test]
    fn dense_refuses_wrong_lengths_and_non_finite_values() {
        let bytes = Codec::Dense.encode(&[1.0, 2.0]);
        assert!(matches!(Codec::Dense.decode(&bytes, 3), Err(CodecError::Length { .. })));
        assert!(matches!(Codec::Dense.decode(&bytes[..7], 2), Err(CodecError::Length { .. })));
        let nan = Codec::Dense.encode(&[1.0, f32::NAN]);
        assert_eq!(Codec::Dense.decode(&nan, 2), Err(CodecError::NonFinite(1)));
    }

    #[test]
    fn names_parse_back() {
        assert_eq!("dense".parse::<Codec>().unwrap(), Codec::Dense);
        assert!("zip".parse::<Codec>().is_err());
    }
}
