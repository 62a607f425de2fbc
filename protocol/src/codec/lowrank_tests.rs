//! Tests of the `lowrank` codec: names, what it keeps, and hostile payloads.

use proptest::prelude::*;

use super::lowrank::MAX_MATRICES;
use super::*;

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A vector of 10 + 60×40 + 7 + 30×20 + 3 values: two matrices among plain values.
fn layout() -> (usize, Vec<Matrix>) {
    let a = Matrix { offset: 10, rows: 60, cols: 40 };
    let b = Matrix { offset: 10 + 2400 + 7, rows: 30, cols: 20 };
    (10 + 2400 + 7 + 600 + 3, vec![a, b])
}

/// Fills each matrix with a sum of `rank` outer products, the rest with noise.
fn low_rank_values(n: usize, matrices: &[Matrix], rank: usize, seed: u64) -> Vec<f32> {
    let mut r = lcg(seed);
    let mut v: Vec<f32> = (0..n).map(|_| r()).collect();
    for m in matrices {
        let us: Vec<Vec<f32>> = (0..rank).map(|_| (0..m.rows).map(|_| r()).collect()).collect();
        let vs: Vec<Vec<f32>> = (0..rank).map(|_| (0..m.cols).map(|_| r()).collect()).collect();
        for i in 0..m.rows {
            for j in 0..m.cols {
                v[m.offset + i * m.cols + j] = (0..rank).map(|k| us[k][i] * vs[k][j]).sum();
            }
        }
    }
    v
}

fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f32 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

#[test]
fn names_parse_and_bad_ranks_are_refused() {
    assert_eq!("lowrank:4".parse::<Codec>().unwrap(), Codec::LowRank { rank: 4, bits: 8 });
    assert_eq!("lowrank:8+4bit".parse::<Codec>().unwrap(), Codec::LowRank { rank: 8, bits: 4 });
    assert_eq!(Codec::LowRank { rank: 16, bits: 8 }.to_string(), "lowrank:16");
    assert_eq!(Codec::LowRank { rank: 16, bits: 4 }.to_string(), "lowrank:16+4bit");
    for bad in
        ["lowrank:0", "lowrank:65", "lowrank:", "lowrank:x", "lowrank:-1", "lowrank:4+2bit", "lowrank:4+8bit"]
    {
        let e = bad.parse::<Codec>().unwrap_err();
        assert!(e.to_string().contains("lowrank:R, lowrank:R+4bit with 1 <= R <= 64"), "{bad}: {e}");
    }
}

#[test]
fn matrices_of_the_codecs_rank_come_back_within_int8_precision() {
    let (n, matrices) = layout();
    for (rank, bits) in [(1u8, 8u8), (2, 8), (3, 8), (1, 4), (3, 4)] {
        let v = low_rank_values(n, &matrices, rank as usize, rank as u64);
        let codec = Codec::LowRank { rank, bits };
        // An 8-bit code is within 1/254 of its column's largest value, a 4-bit one within 1/14.
        let tolerance = if bits == 8 { 0.02 } else { 0.2 };
        let payload = codec.encode_shaped(&v, &matrices);
        assert!(payload.len() <= codec.max_payload_len(n));
        let decoded = codec.decode(&payload, n).unwrap();
        for m in &matrices {
            let range = m.offset..m.offset + m.rows * m.cols;
            let e = relative_error(&decoded[range.clone()], &v[range]);
            assert!(e < tolerance, "{codec}: matrix at {} off by {e}", m.offset);
        }
        // The values outside the matrices travel as int8 (int4 with 4-bit factors), in place.
        let step = if bits == 8 { 1.0 / 127.0 } else { 1.0 / 7.0 };
        for i in (0..10).chain(2410..2417).chain(n - 3..n) {
            assert!((decoded[i] - v[i]).abs() <= step / 2.0 + 1e-6, "value {i}");
        }
    }
}

#[test]
fn a_lower_rank_keeps_the_strongest_directions_and_error_feedback_keeps_the_rest() {
    let (n, matrices) = layout();
    // A strong rank-1 part under rank-3 noise: rank 1 finds the strong part.
    let strong = low_rank_values(n, &matrices, 1, 7);
    let noise = low_rank_values(n, &matrices, 3, 8);
    let v: Vec<f32> = strong.iter().zip(&noise).map(|(s, x)| 10.0 * s + 0.1 * x).collect();
    let codec = Codec::LowRank { rank: 1, bits: 8 };
    let mut residual = Vec::new();
    let payload = codec.encode_with_feedback_shaped(&v, &mut residual, 1.0, &matrices);
    let decoded = codec.decode(&payload, n).unwrap();
    let m = matrices[0];
    let range = m.offset..m.offset + m.rows * m.cols;
    let target: Vec<f32> = strong[range.clone()].iter().map(|s| 10.0 * s).collect();
    assert!(relative_error(&decoded[range.clone()], &target) < 0.05);
    // What was sent plus what is owed is what was trained.
    for (i, ((d, r), x)) in decoded.iter().zip(&residual).zip(&v).enumerate() {
        assert!((d + r - x).abs() < 1e-4, "value {i}");
    }
}

#[test]
fn matrices_no_larger_than_their_factors_travel_as_plain_values() {
    // 3 × 3 at rank 2: an entry of 16 + 16 + 12 bytes for 9 values; sent as int8 instead.
    let matrices = [Matrix { offset: 0, rows: 3, cols: 3 }, Matrix { offset: 9, rows: 10, cols: 10 }];
    let v: Vec<f32> = (0..120).map(|i| (i as f32 * 0.37).sin()).collect();
    let codec = Codec::LowRank { rank: 2, bits: 8 };
    let payload = codec.encode_shaped(&v, &matrices);
    assert_eq!(u32::from_le_bytes(payload[..4].try_into().unwrap()), 1, "only the 10 × 10 is factored");
    let decoded = codec.decode(&payload, 120).unwrap();
    assert!(decoded[..9].iter().zip(&v).all(|(d, x)| (d - x).abs() <= 1.0 / 127.0 + 1e-6));
}

/// A payload of `lowrank:1` listing `headers` (offset, rows, cols) at rank
/// 1, with zero factors and values.
fn forged(params: usize, headers: &[(u64, u32, u32)]) -> Vec<u8> {
    let ranked: Vec<_> = headers.iter().map(|&(offset, rows, cols)| (offset, rows, cols, 1)).collect();
    forged_ranked(params, &ranked)
}

/// A payload listing `headers` (offset, rows, cols, rank), with zero factors and values.
fn forged_ranked(params: usize, headers: &[(u64, u32, u32, u32)]) -> Vec<u8> {
    let mut out = (headers.len() as u32).to_le_bytes().to_vec();
    let (mut factors, mut columns, mut covered) = (0usize, 0usize, 0usize);
    for &(offset, rows, cols, rank) in headers {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&rows.to_le_bytes());
        out.extend_from_slice(&cols.to_le_bytes());
        out.extend_from_slice(&rank.to_le_bytes());
        factors += rank as usize * (rows as usize + cols as usize);
        columns += rank as usize;
        covered += (rows as usize).saturating_mul(cols as usize);
    }
    // (Headers that leave the model are refused before the length is looked at.)
    out.extend(std::iter::repeat_n(0u8, columns.min(1 << 16) * 8 + factors.min(1 << 16)));
    let rest = params.saturating_sub(covered);
    out.extend(std::iter::repeat_n(0u8, rest.div_ceil(INT8_BLOCK) * 4 + rest));
    out
}

#[test]
fn payloads_that_misplace_a_matrix_are_refused() {
    let codec = Codec::LowRank { rank: 1, bits: 8 };
    let n = 200;
    assert!(codec.check(&forged(n, &[(0, 8, 8), (64, 8, 8)]), n).is_ok());
    let refused = |headers: &[(u64, u32, u32)]| match codec.check(&forged(n, headers), n) {
        Err(CodecError::LowRank(why)) => why,
        other => panic!("{headers:?}: {other:?}"),
    };
    assert!(refused(&[(0, 8, 8), (60, 8, 8)]).contains("overlaps"));
    assert!(refused(&[(190, 8, 8)]).contains("leaves the model"));
    assert!(refused(&[(u64::MAX, 8, 8)]).contains("leaves the model"));
    assert!(refused(&[(0, u32::MAX, u32::MAX)]).contains("leaves the model"));
    // 1 × 50: 50 bytes as int8, 24 + 51 as a rank-1 entry.
    assert!(refused(&[(0, 1, 50)]).contains("no larger as int8 than its rank-1 entry"));
    let mut many = forged(n, &[]);
    many[..4].copy_from_slice(&(MAX_MATRICES as u32 + 1).to_le_bytes());
    assert!(matches!(codec.check(&many, n), Err(CodecError::LowRank(_))));
    let mut nan = forged(n, &[(0, 8, 8)]);
    nan[4 + 20..4 + 24].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(codec.check(&nan, n), Err(CodecError::BadScale(0)));
    let mut short = forged(n, &[(0, 8, 8)]);
    short.pop();
    assert!(matches!(codec.check(&short, n), Err(CodecError::Length { .. })));
    // Ranks: 1 to 64 each, and no more factor codes in all than the codec's rank allows.
    let rank2 = Codec::LowRank { rank: 2, bits: 8 };
    let ranked = |headers: &[(u64, u32, u32, u32)]| rank2.check(&forged_ranked(400, headers), 400);
    assert!(ranked(&[(0, 12, 12, 3), (144, 12, 12, 1)]).is_ok());
    let why = |r: Result<(), CodecError>| match r {
        Err(CodecError::LowRank(why)) => why,
        other => panic!("{other:?}"),
    };
    assert!(why(ranked(&[(0, 12, 12, 3), (144, 12, 12, 2)])).contains("120 factor codes; rank 2 allows 96"));
    assert!(why(ranked(&[(0, 12, 12, 0)])).contains("has rank 0"));
    assert!(why(ranked(&[(0, 12, 12, 65)])).contains("has rank 65"));
}

#[test]
fn the_budget_goes_to_the_matrix_whose_directions_carry_most_per_code() {
    // Two 40 × 40 matrices, one of rank 3 and one of rank 1; the budget of
    // `lowrank:2` (2 × 80 codes each) gives the first rank 3 and the second
    // rank 1, so both come back whole where rank 2 each would lose one.
    let (a, b) = (Matrix { offset: 0, rows: 40, cols: 40 }, Matrix { offset: 1600, rows: 40, cols: 40 });
    let n = 3200;
    let mut v = low_rank_values(n, &[a], 3, 11);
    v[1600..].copy_from_slice(&low_rank_values(n, &[b], 1, 12)[1600..]);
    let codec = Codec::LowRank { rank: 2, bits: 8 };
    let payload = codec.encode_shaped(&v, &[a, b]);
    let rank_of =
        |i: usize| u32::from_le_bytes(payload[4 + i * 20 + 16..4 + i * 20 + 20].try_into().unwrap());
    assert_eq!((rank_of(0), rank_of(1)), (3, 1));
    let decoded = codec.decode(&payload, n).unwrap();
    assert!(relative_error(&decoded, &v) < 0.02, "{}", relative_error(&decoded, &v));
}

#[test]
fn a_4bit_payload_with_a_stray_half_byte_is_refused() {
    // A 7 × 8 matrix at rank 1: 15 codes in 8 bytes, the last byte's high half unused.
    let matrices = [Matrix { offset: 0, rows: 7, cols: 8 }];
    let v: Vec<f32> = (0..70).map(|i| (i as f32 * 0.37).sin()).collect();
    let codec = Codec::LowRank { rank: 1, bits: 4 };
    let mut payload = codec.encode_shaped(&v, &matrices);
    assert_eq!(u32::from_le_bytes(payload[..4].try_into().unwrap()), 1);
    assert!(codec.check(&payload, 70).is_ok());
    // After the header (4 + 20) and the two scales (8).
    payload[4 + 20 + 8 + 7] |= 0x10;
    assert!(
        matches!(codec.check(&payload, 70), Err(CodecError::LowRank(why)) if why.contains("unused half"))
    );
    // The same for the last of an odd number of 4-bit plain values (71 - 56 of them).
    let v: Vec<f32> = (0..71).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut payload = codec.encode_shaped(&v, &matrices);
    assert!(codec.check(&payload, 71).is_ok());
    *payload.last_mut().unwrap() |= 0x10;
    assert!(
        matches!(codec.check(&payload, 71), Err(CodecError::LowRank(why)) if why.contains("unused half"))
    );
}

proptest! {
    #[test]
    fn lowrank_payloads_with_a_changed_byte_decode_or_are_refused(seed in 0u64..1000, at in 0usize..100_000, byte in any::<u8>()) {
        let (n, matrices) = layout();
        let v = low_rank_values(n, &matrices, 2, seed);
        let codec = Codec::LowRank { rank: 2, bits: if seed % 2 == 0 { 8 } else { 4 } };
        let mut payload = codec.encode_shaped(&v, &matrices);
        let at = at % payload.len();
        payload[at] = byte;
        let mut out = vec![0.0; n];
        if codec.check(&payload, n).is_ok() {
            prop_assert!(codec.accumulate(&payload, n, 1.0, &mut out).is_ok());
        }
    }

    #[test]
    fn lowrank_headers_of_any_shape_are_an_error_not_a_panic(
        headers in prop::collection::vec((0u64..400, 0u32..40, 0u32..40), 0..5),
        n in 1usize..400,
    ) {
        let codec = Codec::LowRank { rank: 1, bits: 8 };
        let payload = forged(n, &headers);
        let mut out = vec![0.0; n];
        if codec.check(&payload, n).is_ok() {
            prop_assert!(codec.accumulate(&payload, n, 1.0, &mut out).is_ok());
        }
    }
}
