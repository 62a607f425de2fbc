//! Payload codecs: how a delta's `f32` values become bytes and back.
//!
//! `dense` sends every value as an `f32`; `f16` as a half float; `int8` as
//! blockwise 8-bit integers with one `f32` scale per block; `topk:F` only the
//! fraction F of coordinates largest in magnitude, their indices delta-encoded
//! as varints, and `topk:F+int8` those values quantized to int8;
//! `sparse:K/C+2bit` (or `+4bit`) the K largest of each chunk of C coordinates,
//! indices bit-packed within the chunk, values in 2 or 4 bits. Lossy codecs
//! are used with error feedback ([`Codec::encode_with_feedback`]): what a round
//! did not send is added to the next round's delta.
//!
//! Decoding checks every length, index and value against the model's shape and
//! refuses what does not fit; it never panics and never allocates for hostile
//! input. [`Codec::accumulate`] decodes straight into an aggregation buffer, so
//! a round densifies each payload at most once.

mod dense;
mod half;
mod int4;
mod int8;
mod lowrank;
mod sparse;
mod topk;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use lowrank::Matrix;

/// Values per int8 block (one `f32` scale each).
pub const INT8_BLOCK: usize = 256;

/// A payload encoding, named in the RunSpec and in every delta header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Every value as a little-endian `f32`.
    Dense,
    /// Every value as a little-endian IEEE half float.
    F16,
    /// Blocks of [`INT8_BLOCK`] values as `i8`, each block with an `f32` scale.
    Int8,
    /// The largest `ppm` parts per million of coordinates, as `f32` or int8 values.
    TopK { ppm: u32, int8: bool },
    /// Per chunk of `chunk` coordinates, the `k` largest in magnitude, with
    /// chunk-local bit-packed indices and `bits` (2 or 4) bits per value.
    Sparse { k: u32, chunk: u32, bits: u8 },
    /// Each weight matrix as low-rank factors of `bits` (8 or 4) bits within a
    /// budget of rank `rank` per matrix, the other values as `bits`-bit
    /// integers: PowerSGD's compressor.
    LowRank { rank: u8, bits: u8 },
}

/// Why a payload could not be decoded, or a codec name not parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("{codec} payload is {len} bytes; a model of {params} parameters needs {expected}")]
    Length { codec: Codec, len: usize, params: usize, expected: usize },
    #[error("payload holds a non-finite value at position {0}")]
    NonFinite(usize),
    #[error("payload holds an invalid scale at block {0}")]
    BadScale(usize),
    #[error("sparse payload is malformed: {0}")]
    Sparse(String),
    #[error("low-rank payload is malformed: {0}")]
    LowRank(String),
    #[error(
        "unknown codec `{0}` (known: dense, f16, int8, topk:F, topk:F+int8 with 0 < F <= 1, \
         sparse:K/C+2bit, sparse:K/C+4bit, lowrank:R, lowrank:R+4bit with 1 <= R <= {max})", max = lowrank::MAX_RANK
    )]
    Unknown(String),
    #[error("codec `{name}`: {problem} (write sparse:K/C+2bit or sparse:K/C+4bit: keep K of each chunk of C values, 1 <= K <= C <= {max})", max = sparse::MAX_CHUNK)]
    SparseName { name: String, problem: String },
}

impl Codec {
    /// Encodes a delta. `lowrank` sends every value as `int8` (or 4-bit
    /// integers) here, for want of the model's matrices: see
    /// [`Codec::encode_shaped`].
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        self.encode_shaped(values, &[])
    }

    /// Encodes a delta of a model whose weight matrices are `matrices` (in the
    /// flat order: [`crate::ModelSpec::matrices`]). Only `lowrank` uses them.
    pub fn encode_shaped(self, values: &[f32], matrices: &[Matrix]) -> Vec<u8> {
        match self {
            Codec::Dense => dense::encode(values),
            Codec::F16 => half::encode(values),
            Codec::Int8 => int8::encode(values),
            Codec::TopK { ppm, int8 } => topk::encode(values, self.kept(values.len(), ppm), int8),
            Codec::Sparse { k, chunk, bits } => sparse::encode(values, sparse::Params { k, chunk, bits }),
            Codec::LowRank { rank, bits } => lowrank::encode(values, matrices, rank, bits),
        }
    }

    /// Encodes `delta + decay × residual` and leaves in `residual` what the
    /// payload does not carry (error feedback): what a node trained is delayed,
    /// not lost. `decay` = 1 is classic error feedback; below 1 the unsent part
    /// fades, which keeps stale directions from piling up over the rounds it
    /// waits (it then plays the part of outer momentum). A lossless codec leaves
    /// the residual at zero.
    pub fn encode_with_feedback(self, delta: &[f32], residual: &mut Vec<f32>, decay: f32) -> Vec<u8> {
        self.encode_with_feedback_shaped(delta, residual, decay, &[])
    }

    /// [`Codec::encode_with_feedback`] for a model whose weight matrices are
    /// `matrices` (see [`Codec::encode_shaped`]).
    pub fn encode_with_feedback_shaped(
        self,
        delta: &[f32],
        residual: &mut Vec<f32>,
        decay: f32,
        matrices: &[Matrix],
    ) -> Vec<u8> {
        if residual.len() != delta.len() {
            *residual = vec![0.0; delta.len()];
        }
        if let Codec::TopK { ppm, int8 } = self {
            return topk::encode_with_feedback(delta, residual, decay, self.kept(delta.len(), ppm), int8);
        }
        for (r, d) in residual.iter_mut().zip(delta) {
            *r = decay * *r + d;
        }
        let payload = self.encode_shaped(residual, matrices);
        // residual ← v − decode(payload): subtract what was sent.
        self.accumulate(&payload, delta.len(), -1.0, residual).expect("a payload we just encoded decodes");
        payload
    }

    /// Decodes a payload for a model of `params` parameters.
    pub fn decode(self, payload: &[u8], params: usize) -> Result<Vec<f32>, CodecError> {
        self.check(payload, params)?;
        let mut out = vec![0.0; params];
        self.accumulate(payload, params, 1.0, &mut out)?;
        Ok(out)
    }

    /// Checks that a payload decodes for `params` parameters, without allocating.
    pub fn check(self, payload: &[u8], params: usize) -> Result<(), CodecError> {
        match self {
            Codec::Dense => dense::check(payload, params),
            Codec::F16 => half::check(payload, params),
            Codec::Int8 => int8::check(payload, params),
            Codec::TopK { ppm, int8 } => topk::check(payload, params, self.kept(params, ppm), int8),
            Codec::Sparse { k, chunk, bits } => {
                sparse::check(payload, params, sparse::Params { k, chunk, bits })
            }
            Codec::LowRank { rank, bits } => lowrank::check(payload, params, rank, bits),
        }
        .map_err(|e| e.with_codec(self))
    }

    /// Adds `weight ×` the decoded payload to `out` (length `params`): decoding
    /// fused with aggregation. Call [`Codec::check`] first on untrusted payloads:
    /// an error here may leave `out` partly updated.
    pub fn accumulate(
        self,
        payload: &[u8],
        params: usize,
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), CodecError> {
        if out.len() != params {
            return Err(CodecError::Length { codec: self, len: out.len(), params, expected: params });
        }
        match self {
            Codec::Dense => dense::accumulate(payload, weight, out),
            Codec::F16 => half::accumulate(payload, weight, out),
            Codec::Int8 => int8::accumulate(payload, weight, out),
            Codec::TopK { ppm, int8 } => topk::accumulate(payload, self.kept(params, ppm), int8, weight, out),
            Codec::Sparse { k, chunk, bits } => {
                sparse::accumulate(payload, sparse::Params { k, chunk, bits }, weight, out)
            }
            Codec::LowRank { rank, bits } => lowrank::accumulate(payload, rank, bits, weight, out),
        }
        .map_err(|e| e.with_codec(self))
    }

    /// Sets `out` (length `params`) to `Σ weightᵢ × payloadᵢ`, adding in the
    /// order given: the same values as zeroing `out` and [`Codec::accumulate`]
    /// of each input in turn. Dense payloads are summed a block of `out` at a
    /// time, so `out` is written once. The error names the input that failed.
    /// Call [`Codec::check`] first on untrusted payloads.
    pub fn weighted_sum(
        self,
        inputs: &[(&[u8], f32)],
        params: usize,
        out: &mut [f32],
    ) -> Result<(), (usize, CodecError)> {
        if self == Codec::Dense && out.len() == params {
            return dense::weighted_sum(inputs, out).map_err(|(i, e)| (i, e.with_codec(self)));
        }
        out.fill(0.0);
        for (i, (payload, weight)) in inputs.iter().enumerate() {
            self.accumulate(payload, params, *weight, out).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// The largest payload this codec produces for `params` parameters.
    pub fn max_payload_len(self, params: usize) -> usize {
        match self {
            Codec::Dense => params * 4,
            Codec::F16 => params * 2,
            Codec::Int8 => int8::len(params),
            Codec::TopK { ppm, int8 } => topk::max_len(self.kept(params, ppm), int8),
            Codec::Sparse { k, chunk, bits } => sparse::Params { k, chunk, bits }.len(params),
            Codec::LowRank { .. } => lowrank::max_len(params),
        }
    }

    /// Whether a payload carries only some coordinates (top-k and sparse) or
    /// only a low-rank view of each matrix, so it cannot carry a whole model.
    pub fn is_sparse(self) -> bool {
        matches!(self, Codec::TopK { .. } | Codec::Sparse { .. } | Codec::LowRank { .. })
    }

    /// How many coordinates a top-k codec keeps of `params`.
    fn kept(self, params: usize, ppm: u32) -> usize {
        if params == 0 {
            return 0;
        }
        ((params as u128 * ppm as u128).div_ceil(1_000_000) as usize).clamp(1, params)
    }

    /// Whether decoding gives back exactly what was encoded.
    pub fn is_lossless(self) -> bool {
        self == Codec::Dense
    }

    /// Every codec family, with the fraction used for top-k (for tables and tests).
    pub fn examples() -> Vec<Codec> {
        vec![
            Codec::Dense,
            Codec::F16,
            Codec::Int8,
            Codec::TopK { ppm: 10_000, int8: false },
            Codec::TopK { ppm: 10_000, int8: true },
            Codec::Sparse { k: 64, chunk: 4096, bits: 2 },
            Codec::Sparse { k: 3, chunk: 10, bits: 4 },
            Codec::LowRank { rank: 2, bits: 8 },
            Codec::LowRank { rank: 3, bits: 4 },
        ]
    }
}

impl CodecError {
    /// Fills in the codec of a length error raised by a codec's own module.
    fn with_codec(self, codec: Codec) -> Self {
        match self {
            CodecError::Length { len, params, expected, .. } => {
                CodecError::Length { codec, len, params, expected }
            }
            other => other,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Dense => f.write_str("dense"),
            Codec::F16 => f.write_str("f16"),
            Codec::Int8 => f.write_str("int8"),
            Codec::TopK { ppm, int8 } => {
                write!(f, "topk:{}", *ppm as f64 / 1e6)?;
                if *int8 {
                    f.write_str("+int8")?;
                }
                Ok(())
            }
            Codec::Sparse { k, chunk, bits } => write!(f, "sparse:{k}/{chunk}+{bits}bit"),
            Codec::LowRank { rank, bits: 8 } => write!(f, "lowrank:{rank}"),
            Codec::LowRank { rank, bits } => write!(f, "lowrank:{rank}+{bits}bit"),
        }
    }
}

/// Parses the part of `sparse:K/C+Nbit` after `sparse:`, naming the field that is wrong.
fn parse_sparse(name: &str, rest: &str) -> Result<Codec, CodecError> {
    let problem = |problem: String| CodecError::SparseName { name: name.to_string(), problem };
    let (sizes, bits) = rest
        .split_once('+')
        .ok_or_else(|| problem("the bits per value are missing (`+2bit` or `+4bit`)".into()))?;
    let (k, chunk) = sizes
        .split_once('/')
        .ok_or_else(|| problem("the chunk size is missing (`K/C`, e.g. 64/4096)".into()))?;
    let k: u32 =
        k.parse().map_err(|_| problem(format!("K (values kept per chunk) `{k}` is not a whole number")))?;
    let chunk: u32 =
        chunk.parse().map_err(|_| problem(format!("C (the chunk size) `{chunk}` is not a whole number")))?;
    let bits: u8 = match bits {
        "2bit" => 2,
        "4bit" => 4,
        other => return Err(problem(format!("bits per value `{other}` must be `2bit` or `4bit`"))),
    };
    sparse::Params::validate(k, chunk, bits).map_err(problem)?;
    Ok(Codec::Sparse { k, chunk, bits })
}

impl FromStr for Codec {
    type Err = CodecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || CodecError::Unknown(s.to_string());
        match s {
            "dense" => return Ok(Codec::Dense),
            "f16" => return Ok(Codec::F16),
            "int8" => return Ok(Codec::Int8),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("sparse:") {
            return parse_sparse(s, rest);
        }
        if let Some(rest) = s.strip_prefix("lowrank:") {
            let (rank, bits) = match rest.strip_suffix("+4bit") {
                Some(rank) => (rank, 4),
                None => (rest, 8),
            };
            return match rank.parse::<u8>() {
                Ok(rank) if (1..=lowrank::MAX_RANK).contains(&rank) => Ok(Codec::LowRank { rank, bits }),
                _ => Err(unknown()),
            };
        }
        let rest = s.strip_prefix("topk:").ok_or_else(unknown)?;
        let (fraction, int8) = match rest.strip_suffix("+int8") {
            Some(f) => (f, true),
            None => (rest, false),
        };
        let fraction: f64 = fraction.parse().map_err(|_| unknown())?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(unknown());
        }
        let ppm = (fraction * 1e6).round().max(1.0) as u32;
        Ok(Codec::TopK { ppm, int8 })
    }
}

impl Serialize for Codec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Codec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a codec name such as dense, f16, int8, topk:0.01, topk:0.01+int8 or sparse:64/4096+2bit",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Codec, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod lowrank_tests;
#[cfg(test)]
mod tests;
