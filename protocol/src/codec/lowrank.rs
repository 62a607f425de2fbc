//! `lowrank:R` and `lowrank:R+4bit`: each weight matrix of the model as a
//! low-rank product `U·Vᵀ` (PowerSGD's compressor), every other parameter
//! (biases, norm gains) as `int8` (or 4-bit integers). Factors are 8-bit (or
//! 4-bit) integers with one `f32` scale per factor column. R is a budget, not
//! every matrix's rank: a payload holds at most R·Σ(rows + cols) factor codes
//! over the matrices it factors, and the encoder gives each of them rank 1 and
//! the rest of the budget to the factor columns that carry the most of the
//! delta's energy per code ([`allot`]).
//!
//! Why: a language model's pseudo-gradient is close to low rank and far from
//! sparse. On `lm-small` (a node's error-feedback accumulator in rounds 1, 4
//! and 6), rank 4 holds 83–85 % of the matrices' energy (55–86 % by kind of
//! block matrix, attention's `qkv` the least) and rank 1 holds 85–95 % of the
//! token embedding's (every row moves along one direction: the tied head
//! learns the unigram), where the top 32 of each 4096 values hold 2–6 %. The compressor runs a few steps of subspace iteration from a fixed
//! start, so it needs no state of its own; what it misses stays in the error
//! feedback residual.
//!
//! The payload says which ranges are matrices, so a decoder needs no model
//! layout, only the parameter count; the encoder takes the layout
//! ([`Matrix`], from [`crate::ModelSpec::matrices`]). Layout:
//! - `u32` count of matrices, then per matrix `u64` offset, `u32` rows,
//!   `u32` cols, `u32` rank (little-endian), in increasing, non-overlapping
//!   order;
//! - per matrix and each of its ranks r: the `f32` scale of U's column r,
//!   then of V's;
//! - per matrix and each of its ranks r: U's column r (`rows` codes), then V's
//!   (`cols` codes): `i8`, or 4-bit two's complement two to a byte, low half
//!   first, the last byte's unused half zero;
//! - every value outside the matrices, in order, as an `int8` payload (or,
//!   with 4-bit factors, an `int4` one).
//!
//! A matrix is only factored when its entry (header, scales and codes) is
//! smaller than its values would be as `int8` (one byte each); decoding
//! refuses a payload that says otherwise, so no payload is larger than
//! `int8` of the whole model plus 4 bytes.

use super::{int4, int8, Codec, CodecError};

/// The largest rank a codec name may ask for (a matrix whose entry would not
/// be smaller than its values goes as `int8` at any rank).
pub const MAX_RANK: u8 = 64;
/// The most matrices a payload may list.
pub const MAX_MATRICES: usize = 1 << 16;
/// Subspace-iteration steps per matrix. Measured on `lm-small`'s accumulators
/// (rank 4, rounds 1 and 6): 1 step holds 80–83 % of the energy the SVD's top 4
/// hold, 2 steps 98.5 %, 3 steps 99.6 %.
const ITERATIONS: usize = 3;
const HEADER: usize = 20;

/// A weight matrix in the flat parameter vector: `rows × cols` values from
/// `offset`, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    fn len(self) -> usize {
        self.rows * self.cols
    }

    /// The bytes of its entry at `rank` and `bits`: header, scales, codes.
    fn entry_bytes(self, rank: usize, bits: u8) -> usize {
        let codes = rank.saturating_mul(self.rows.saturating_add(self.cols));
        (HEADER + 8 * rank).saturating_add(code_bytes(codes, bits))
    }

    /// Whether its entry is smaller than its values as `int8`.
    fn worth_factoring(self, rank: usize, bits: u8) -> bool {
        self.entry_bytes(rank, bits) < self.rows.saturating_mul(self.cols)
    }
}

/// The largest payload for `params` parameters: every factored matrix's
/// entry is smaller than its values as `int8`, so `int8` of them all, plus
/// the count.
pub(super) fn max_len(params: usize) -> usize {
    4 + int8::len(params)
}

/// The matrices of `layout` this codec factors: in range, in order,
/// non-overlapping and worth it; the others' values go as `int8`.
fn factored(layout: &[Matrix], params: usize, rank: usize, bits: u8) -> Vec<Matrix> {
    let mut out: Vec<Matrix> = Vec::new();
    let mut end = 0;
    for &m in layout {
        let fits = m.offset >= end
            && m.rows.checked_mul(m.cols).is_some_and(|n| m.offset.saturating_add(n) <= params);
        if fits && m.worth_factoring(rank, bits) && out.len() < MAX_MATRICES {
            end = m.offset + m.len();
            out.push(m);
        }
    }
    out
}

/// Deterministic start for V: a fixed pseudo-random ±1 pattern.
fn start(cols: usize, rank: usize) -> Vec<f32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..cols * rank)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 1 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

/// Orthonormalizes the `rank` columns of `u` (`rows × rank`, row-major) by
/// modified Gram–Schmidt; a column with nothing left becomes zero.
fn orthonormalize(u: &mut [f32], rows: usize, rank: usize) {
    for r in 0..rank {
        for q in 0..r {
            let dot: f64 = (0..rows).map(|i| u[i * rank + r] as f64 * u[i * rank + q] as f64).sum();
            for i in 0..rows {
                u[i * rank + r] -= (dot as f32) * u[i * rank + q];
            }
        }
        let norm = (0..rows).map(|i| (u[i * rank + r] as f64).powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 1e-30 { (1.0 / norm) as f32 } else { 0.0 };
        for i in 0..rows {
            u[i * rank + r] *= inv;
        }
    }
}

/// Rank-`rank` factors of the `rows × cols` matrix `a`: `U` (`rows × rank`,
/// orthonormal columns) and `V = Aᵀ·U` (`cols × rank`), both row-major, so
/// that `U·Vᵀ` is `a` projected on U's span.
fn factor(a: &[f32], rows: usize, cols: usize, rank: usize) -> (Vec<f32>, Vec<f32>) {
    let mut v = start(cols, rank);
    let mut u = vec![0.0f32; rows * rank];
    for _ in 0..ITERATIONS {
        // U = A·V
        for (i, row) in a.chunks_exact(cols).enumerate() {
            let ui = &mut u[i * rank..(i + 1) * rank];
            ui.fill(0.0);
            for (&x, vj) in row.iter().zip(v.chunks_exact(rank)) {
                for (s, &y) in ui.iter_mut().zip(vj) {
                    *s += x * y;
                }
            }
        }
        orthonormalize(&mut u, rows, rank);
        // V = Aᵀ·U
        v.fill(0.0);
        for (row, ui) in a.chunks_exact(cols).zip(u.chunks_exact(rank)) {
            for (&x, vj) in row.iter().zip(v.chunks_exact_mut(rank)) {
                for (s, &y) in vj.iter_mut().zip(ui) {
                    *s += x * y;
                }
            }
        }
    }
    (u, v)
}

/// The largest code of `bits`-bit factors: 127 or 7.
fn top(bits: u8) -> f32 {
    ((1i32 << (bits - 1)) - 1) as f32
}

/// Column `r` of a row-major `n × rank` factor, as `bits`-bit codes with one scale.
fn quantize_column(f: &[f32], rank: usize, r: usize, bits: u8, codes: &mut Vec<i8>) -> f32 {
    let top = top(bits);
    let max = f.iter().skip(r).step_by(rank).fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if max.is_finite() { max / top } else { 0.0 };
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    codes.extend(f.iter().skip(r).step_by(rank).map(|v| (v * inv).round().clamp(-top, top) as i8));
    scale
}

/// Bytes holding `n` codes of `bits` bits.
fn code_bytes(n: usize, bits: u8) -> usize {
    if bits == 4 {
        n.div_ceil(2)
    } else {
        n
    }
}

/// Code `k` of a packed code section.
fn code(codes: &[u8], bits: u8, k: usize) -> i8 {
    if bits == 4 {
        int4::code(codes, k)
    } else {
        codes[k] as i8
    }
}

/// The most rank a matrix may be given: twice the budget's, within
/// [`MAX_RANK`] and below the size of its values as `int8`. At least `rank`,
/// as [`factored`] only lists matrices worth factoring at it.
fn cap(m: Matrix, rank: usize, bits: u8) -> usize {
    let mut cap = (2 * rank).min(MAX_RANK as usize);
    while cap > rank && !m.worth_factoring(cap, bits) {
        cap -= 1;
    }
    cap
}

/// Each matrix's rank within the budget of `rank`·Σ(rows + cols) codes:
/// rank 1 each, then factor columns one at a time in order of the energy
/// they carry per code (`strength[m][k]` is column k's squared singular value,
/// strongest first), each while the budget holds. So a matrix's columns are
/// taken strongest first, and a matrix whose top directions carry more of the
/// delta for their bytes gets more of them.
///
/// Why: late in training a node's own top directions are more and more its
/// own noise, and rank is what keeps what the nodes share; this spends the
/// rank where it carries the most per byte (on `lm-small`, attention's `qkv`
/// and the first layers get 10–16, the token embedding 3–4).
/// `docs/compression.md` has the 20-round figures against rank 8 for every
/// matrix.
fn allot(matrices: &[Matrix], strength: &[Vec<f64>], rank: usize) -> Vec<usize> {
    let codes = |m: &Matrix| m.rows + m.cols;
    let mut budget: usize = matrices.iter().map(|m| (rank - 1) * codes(m)).sum();
    let mut ranks = vec![1usize; matrices.len()];
    let mut columns: Vec<(f64, usize, usize)> = Vec::new();
    for (i, (m, s)) in matrices.iter().zip(strength).enumerate() {
        columns.extend(s.iter().enumerate().skip(1).map(|(k, e)| (e / codes(m) as f64, i, k)));
    }
    columns.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, i, k) in columns {
        let cost = codes(&matrices[i]);
        if ranks[i] == k && cost <= budget {
            ranks[i] += 1;
            budget -= cost;
        }
    }
    ranks
}

/// Reorders the `rank` columns of `u` and `v` strongest first (by V's column
/// norms, V = Aᵀ·U with U orthonormal: the singular values) and returns their
/// squared norms in that order.
fn strongest_first(u: &mut [f32], v: &mut [f32], rank: usize) -> Vec<f64> {
    let norm = |f: &[f32], k: usize| f.iter().skip(k).step_by(rank).map(|x| (*x as f64).powi(2)).sum::<f64>();
    let mut order: Vec<usize> = (0..rank).collect();
    let strength: Vec<f64> = (0..rank).map(|k| norm(v, k)).collect();
    order.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]).then(a.cmp(&b)));
    let mut old = vec![0.0f32; rank];
    for f in [u, v] {
        for row in f.chunks_exact_mut(rank) {
            old.copy_from_slice(row);
            for (x, &k) in row.iter_mut().zip(&order) {
                *x = old[k];
            }
        }
    }
    order.iter().map(|&k| strength[k]).collect()
}

pub(super) fn encode(values: &[f32], layout: &[Matrix], rank: u8, bits: u8) -> Vec<u8> {
    let rank = rank as usize;
    let matrices = factored(layout, values.len(), rank, bits);
    let mut factors = Vec::with_capacity(matrices.len());
    let mut strength = Vec::with_capacity(matrices.len());
    for m in &matrices {
        let r = cap(*m, rank, bits);
        let (mut u, mut v) = factor(&values[m.offset..m.offset + m.len()], m.rows, m.cols, r);
        strength.push(strongest_first(&mut u, &mut v, r));
        factors.push((u, v, r));
    }
    let ranks = allot(&matrices, &strength, rank);
    let mut out = Vec::new();
    out.extend_from_slice(&(matrices.len() as u32).to_le_bytes());
    for (m, r) in matrices.iter().zip(&ranks) {
        out.extend_from_slice(&(m.offset as u64).to_le_bytes());
        out.extend_from_slice(&(m.rows as u32).to_le_bytes());
        out.extend_from_slice(&(m.cols as u32).to_le_bytes());
        out.extend_from_slice(&(*r as u32).to_le_bytes());
    }
    let mut codes = Vec::new();
    for ((u, v, stride), &rank) in factors.iter().zip(&ranks) {
        for r in 0..rank {
            let su = quantize_column(u, *stride, r, bits, &mut codes);
            let sv = quantize_column(v, *stride, r, bits, &mut codes);
            out.extend_from_slice(&su.to_le_bytes());
            out.extend_from_slice(&sv.to_le_bytes());
        }
    }
    if bits == 4 {
        int4::pack(&codes, &mut out);
    } else {
        out.extend(codes.iter().map(|&c| c as u8));
    }
    let rest: Vec<f32> = gaps(&matrices, values.len()).flat_map(|gap| &values[gap]).copied().collect();
    if bits == 4 {
        int4::encode_into(&rest, &mut out);
    } else {
        int8::encode_into(&rest, &mut out);
    }
    out
}

/// The ranges of `params` no matrix covers, in order: where the plain values go.
fn gaps(matrices: &[Matrix], params: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let starts = std::iter::once(0).chain(matrices.iter().map(|m| m.offset + m.len()));
    let ends = matrices.iter().map(|m| m.offset).chain(std::iter::once(params));
    starts.zip(ends).map(|(start, end)| start..end)
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A payload's parts, every one checked against `params`.
struct Parts<'a> {
    matrices: Vec<Matrix>,
    ranks: Vec<usize>,
    scales: &'a [u8],
    codes: &'a [u8],
    rest: &'a [u8],
    rest_len: usize,
}

fn parse(payload: &[u8], params: usize, rank: u8, bits: u8) -> Result<Parts<'_>, CodecError> {
    let codec = Codec::LowRank { rank, bits };
    let rank = rank as usize;
    let bad = |what: String| CodecError::LowRank(what);
    let short = |len| CodecError::Length { codec, len, params, expected: max_len(params) };
    if payload.len() < 4 {
        return Err(short(payload.len()));
    }
    let count = read_u32(payload) as usize;
    if count > MAX_MATRICES.min(params) {
        return Err(bad(format!("{count} matrices for a model of {params} parameters")));
    }
    let header_end = 4 + count * HEADER;
    if payload.len() < header_end {
        return Err(short(payload.len()));
    }
    let mut matrices = Vec::with_capacity(count);
    let mut ranks = Vec::with_capacity(count);
    let (mut end, mut factor_values, mut budget, mut columns) = (0usize, 0usize, 0usize, 0usize);
    for (n, h) in payload[4..header_end].chunks_exact(HEADER).enumerate() {
        let offset = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        let (rows, cols) = (read_u32(&h[8..]) as usize, read_u32(&h[12..]) as usize);
        let matrix_rank = read_u32(&h[16..]) as usize;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let m = Matrix { offset, rows, cols };
        let inside =
            rows.checked_mul(cols).is_some_and(|len| offset.checked_add(len).is_some_and(|e| e <= params));
        if offset < end || !inside {
            return Err(bad(format!(
                "matrix {n} ({rows} × {cols} at {offset}) overlaps another or leaves the model"
            )));
        }
        if !(1..=MAX_RANK as usize).contains(&matrix_rank) {
            return Err(bad(format!("matrix {n} has rank {matrix_rank}; a rank is 1 to {MAX_RANK}")));
        }
        if !m.worth_factoring(matrix_rank, bits) {
            return Err(bad(format!(
                "matrix {n} ({rows} × {cols}) is no larger as int8 than its rank-{matrix_rank} entry"
            )));
        }
        end = offset + m.len();
        factor_values += matrix_rank * (rows + cols);
        budget += rank * (rows + cols);
        columns += matrix_rank;
        matrices.push(m);
        ranks.push(matrix_rank);
    }
    if factor_values > budget {
        return Err(bad(format!(
            "{factor_values} factor codes; rank {rank} allows {budget} for these matrices"
        )));
    }
    let rest_len = params - matrices.iter().map(|m| m.len()).sum::<usize>();
    let scales_len = columns * 8;
    let rest_bytes = if bits == 4 { int4::len(rest_len) } else { int8::len(rest_len) };
    let expected = header_end + scales_len + code_bytes(factor_values, bits) + rest_bytes;
    if payload.len() != expected {
        return Err(CodecError::Length { codec, len: payload.len(), params, expected });
    }
    let (scales, tail) = payload[header_end..].split_at(scales_len);
    let (codes, rest) = tail.split_at(code_bytes(factor_values, bits));
    if bits == 4 && factor_values % 2 == 1 && codes.last().is_some_and(|b| b >> 4 != 0) {
        return Err(bad("the last factor byte's unused half is not zero".into()));
    }
    for (i, s) in scales.chunks_exact(4).enumerate() {
        let s = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        if !(s.is_finite() && s >= 0.0) {
            return Err(CodecError::BadScale(i));
        }
    }
    if bits == 4 {
        int4::check(rest, rest_len)?;
    } else {
        int8::check(rest, rest_len)?;
    }
    Ok(Parts { matrices, ranks, scales, codes, rest, rest_len })
}

pub(super) fn check(payload: &[u8], params: usize, rank: u8, bits: u8) -> Result<(), CodecError> {
    parse(payload, params, rank, bits).map(|_| ())
}

pub(super) fn accumulate(
    payload: &[u8],
    rank: u8,
    bits: u8,
    weight: f32,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let parts = parse(payload, out.len(), rank, bits)?;
    let scale = |i: usize| {
        let s = &parts.scales[i * 4..i * 4 + 4];
        f32::from_le_bytes([s[0], s[1], s[2], s[3]])
    };
    let (mut k, mut column, mut u, mut v) = (0usize, 0usize, Vec::new(), Vec::new());
    for (m, &rank) in parts.matrices.iter().zip(&parts.ranks) {
        // U and V as f32, row-major, weight folded into U.
        u.clear();
        u.resize(m.rows * rank, 0.0);
        v.clear();
        v.resize(m.cols * rank, 0.0);
        for r in 0..rank {
            let (su, sv) = (scale(column * 2) * weight, scale(column * 2 + 1));
            column += 1;
            for i in 0..m.rows {
                u[i * rank + r] = code(parts.codes, bits, k + i) as f32 * su;
            }
            k += m.rows;
            for j in 0..m.cols {
                v[j * rank + r] = code(parts.codes, bits, k + j) as f32 * sv;
            }
            k += m.cols;
        }
        let block = &mut out[m.offset..m.offset + m.len()];
        for (row, ui) in block.chunks_exact_mut(m.cols).zip(u.chunks_exact(rank)) {
            for (x, vj) in row.iter_mut().zip(v.chunks_exact(rank)) {
                *x += ui.iter().zip(vj).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    // The plain values, in order, into the positions no matrix covers.
    let mut positions = gaps(&parts.matrices, out.len()).flatten();
    let add = |_, x| {
        if let Some(i) = positions.next() {
            out[i] += x;
        }
    };
    if bits == 4 {
        int4::for_each(parts.rest, parts.rest_len, weight, add)
    } else {
        int8::for_each(parts.rest, parts.rest_len, weight, add)
    }
}
