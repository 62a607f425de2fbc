use proptest::prelude::*;

use super::*;

fn close(a: &[f32], b: &[f32], tolerance: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
}

#[test]
fn names_round_trip() {
    for codec in Codec::examples() {
        assert_eq!(codec.to_string().parse::<Codec>().unwrap(), codec);
    }
    assert_eq!("topk:0.05+int8".parse::<Codec>().unwrap(), Codec::TopK { ppm: 50_000, int8: true });
    for bad in ["zip", "topk:", "topk:0", "topk:1.5", "topk:abc", "topk:0.1+int4"] {
        assert!(bad.parse::<Codec>().is_err(), "{bad}");
    }
    assert_eq!(
        "sparse:64/4096+2bit".parse::<Codec>().unwrap(),
        Codec::Sparse { k: 64, chunk: 4096, bits: 2 }
    );
    assert_eq!("sparse:3/10+4bit".parse::<Codec>().unwrap(), Codec::Sparse { k: 3, chunk: 10, bits: 4 });
}

#[test]
fn sparse_name_errors_say_which_field_is_wrong() {
    let problem = |name: &str| match name.parse::<Codec>() {
        Err(CodecError::SparseName { problem, .. }) => problem,
        other => panic!("{name}: {other:?}"),
    };
    assert!(problem("sparse:64/4096").contains("bits per value are missing"));
    assert!(problem("sparse:64+2bit").contains("chunk size is missing"));
    assert!(problem("sparse:x/4096+2bit").contains("K (values kept per chunk) `x`"));
    assert!(problem("sparse:64/-1+2bit").contains("C (the chunk size) `-1`"));
    assert!(problem("sparse:64/4096+3bit").contains("`3bit` must be `2bit` or `4bit`"));
    assert!(problem("sparse:0/4096+2bit").contains("K = 0"));
    assert!(
        problem("sparse:65/64+2bit").contains("K = 65 values per chunk is more than the chunk size C = 64")
    );
    assert!(problem("sparse:1/0+2bit").contains("C = 0"));
    assert!(problem("sparse:1/2000000+2bit").contains("C = 2000000"));
    let message = "sparse:65/64+2bit".parse::<Codec>().unwrap_err().to_string();
    assert!(message.contains("sparse:65/64+2bit") && message.contains("sparse:K/C+2bit"), "{message}");
}

#[test]
fn dense_is_exact_and_f16_int8_are_close() {
    let v: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
    assert_eq!(Codec::Dense.decode(&Codec::Dense.encode(&v), v.len()).unwrap(), v);
    assert!(close(&Codec::F16.decode(&Codec::F16.encode(&v), v.len()).unwrap(), &v, 1e-3));
    assert!(close(&Codec::Int8.decode(&Codec::Int8.encode(&v), v.len()).unwrap(), &v, 1.0 / 127.0));
}

#[test]
fn topk_keeps_the_largest_coordinates() {
    let v = vec![0.1, -5.0, 0.2, 3.0, -0.3, 0.0, 4.0, 0.05, 0.0, 0.0];
    let codec = Codec::TopK { ppm: 300_000, int8: false };
    let decoded = codec.decode(&codec.encode(&v), v.len()).unwrap();
    assert_eq!(decoded, vec![0.0, -5.0, 0.0, 3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0]);
}

#[test]
fn error_feedback_loses_nothing() {
    let v: Vec<f32> = (0..500).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
    for codec in Codec::examples() {
        let mut residual = Vec::new();
        let mut sent = vec![0.0f32; v.len()];
        for _ in 0..5 {
            let payload = codec.encode_with_feedback(&v, &mut residual, 1.0);
            codec.accumulate(&payload, v.len(), 1.0, &mut sent).unwrap();
        }
        // What was sent plus what is still owed equals everything trained.
        let total: Vec<f32> = sent.iter().zip(&residual).map(|(s, r)| s + r).collect();
        let expected: Vec<f32> = v.iter().map(|x| x * 5.0).collect();
        assert!(close(&total, &expected, 1e-4), "{codec}");
        if codec.is_lossless() {
            assert!(residual.iter().all(|r| *r == 0.0));
        }
    }
}

#[test]
fn payloads_of_the_wrong_shape_are_refused() {
    let v = vec![1.0f32; 600];
    for codec in Codec::examples() {
        let payload = codec.encode(&v);
        assert!(codec.check(&payload, 600).is_ok(), "{codec}");
        assert!(codec.check(&payload, 601).is_err() || codec.is_sparse(), "{codec}");
        assert!(codec.check(&payload[..payload.len() - 1], 600).is_err(), "{codec}");
        let mut longer = payload.clone();
        longer.push(0);
        assert!(codec.check(&longer, 600).is_err(), "{codec}");
    }
}

#[test]
fn topk_refuses_out_of_range_and_repeated_indices() {
    let codec = Codec::TopK { ppm: 500_000, int8: false };
    // k = 2 of 4: gaps then two f32 values.
    let mut payload = vec![3u8, 1];
    payload.extend_from_slice(&1.0f32.to_le_bytes());
    payload.extend_from_slice(&2.0f32.to_le_bytes());
    assert!(matches!(codec.check(&payload, 4), Err(CodecError::Sparse(_))), "index 4 of 4");
    payload[0] = 1;
    payload[1] = 0;
    assert!(matches!(codec.check(&payload, 4), Err(CodecError::Sparse(_))), "repeated index");
    payload[1] = 2;
    assert!(codec.check(&payload, 4).is_ok());
}

#[test]
fn non_finite_values_are_refused() {
    let v = vec![1.0, f32::NAN, 2.0];
    assert_eq!(Codec::Dense.check(&Codec::Dense.encode(&v), 3), Err(CodecError::NonFinite(1)));
    let mut f16 = Codec::F16.encode(&[1.0, 2.0]);
    f16[2] = 0x00;
    f16[3] = 0x7C; // +inf
    assert_eq!(Codec::F16.check(&f16, 2), Err(CodecError::NonFinite(1)));
    let mut int8 = Codec::Int8.encode(&[1.0, 2.0]);
    int8[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(Codec::Int8.check(&int8, 2), Err(CodecError::BadScale(0)));
}

#[test]
fn dense_check_names_the_first_non_finite_value_in_any_block() {
    let n = 3 * 4096 + 17;
    let clean = vec![0.5f32; n];
    assert_eq!(Codec::Dense.check(&Codec::Dense.encode(&clean), n), Ok(()));
    for (at, bad) in [(0, f32::NAN), (4095, f32::INFINITY), (4096, f32::NEG_INFINITY), (n - 1, f32::NAN)] {
        let mut v = clean.clone();
        v[at] = bad;
        v[n - 1] = if at == n - 1 { bad } else { f32::NAN };
        assert_eq!(Codec::Dense.check(&Codec::Dense.encode(&v), n), Err(CodecError::NonFinite(at)), "{at}");
    }
    let mut v = clean;
    v[9000] = f32::MAX;
    v[9001] = f32::MIN_POSITIVE / 2.0;
    assert_eq!(
        Codec::Dense.check(&Codec::Dense.encode(&v), n),
        Ok(()),
        "large and subnormal values are finite"
    );
}

#[test]
fn weighted_sums_equal_accumulating_each_payload_in_turn() {
    let n = 2 * 8192 + 5;
    let mut next = lcg(7);
    let inputs: Vec<Vec<f32>> = (0..3).map(|_| (0..n).map(|_| next()).collect()).collect();
    for codec in [Codec::Dense, Codec::Int8, "sparse:16/4096+2bit".parse().unwrap()] {
        let payloads: Vec<Vec<u8>> = inputs.iter().map(|v| codec.encode(v)).collect();
        let weighted: Vec<(&[u8], f32)> =
            payloads.iter().zip([0.5, 0.25, 0.25]).map(|(p, w)| (&p[..], w)).collect();
        let mut expected = vec![0.0f32; n];
        for (payload, weight) in &weighted {
            codec.accumulate(payload, n, *weight, &mut expected).unwrap();
        }
        let mut out = vec![9.0f32; n];
        codec.weighted_sum(&weighted, n, &mut out).unwrap();
        assert!(
            out.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{codec}: not bit for bit"
        );
    }
    let short = Codec::Dense.encode(&inputs[0][..n - 1]);
    let inputs = [(&Codec::Dense.encode(&inputs[0])[..], 0.5), (&short[..], 0.5)];
    let error = Codec::Dense.weighted_sum(&inputs, n, &mut vec![0.0; n]).unwrap_err();
    assert_eq!(error.0, 1, "the error names the short payload");
}

proptest! {
    #[test]
    fn random_payloads_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), n in 1usize..300) {
        for codec in Codec::examples() {
            let mut out = vec![0.0; n];
            if codec.check(&bytes, n).is_ok() {
                prop_assert!(codec.accumulate(&bytes, n, 1.0, &mut out).is_ok());
            }
        }
    }

    #[test]
    fn every_codec_round_trips_within_its_precision(v in prop::collection::vec(-100f32..100.0, 1..700)) {
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for codec in Codec::examples() {
            let decoded = codec.decode(&codec.encode(&v), v.len()).unwrap();
            match codec {
                Codec::Dense => prop_assert_eq!(&decoded, &v),
                Codec::F16 => prop_assert!(close(&decoded, &v, 0.1)),
                // Without the model's matrices, lowrank sends every value as int8 (int4 with 4-bit factors).
                Codec::Int8 | Codec::LowRank { bits: 8, .. } => prop_assert!(close(&decoded, &v, max / 127.0 + 1e-4)),
                Codec::LowRank { .. } => prop_assert!(close(&decoded, &v, max / 14.0 + 1e-4)),
                Codec::Sparse { k, chunk, .. } => prop_assert!(sparse_round_trip_holds(&v, &decoded, k, chunk)),
                Codec::TopK { .. } => {
                    // Every kept value is exact (f32) or within a quantum (int8); the rest are zero.
                    let tolerance = if matches!(codec, Codec::TopK { int8: true, .. }) { max / 127.0 + 1e-4 } else { 0.0 };
                    for (d, x) in decoded.iter().zip(&v) {
                        prop_assert!(*d == 0.0 || (d - x).abs() <= tolerance);
                    }
                }
            }
            prop_assert!(codec.encode(&v).len() <= codec.max_payload_len(v.len()));
        }
    }
}

#[test]
fn fast_topk_selection_matches_a_full_selection() {
    // Large enough to take the sampled-threshold path, with ties at the boundary.
    let n = 600_000;
    let values: Vec<f32> = (0..n as u64).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 100.0).collect();
    for k in [1, 1000, 6000, 60_000] {
        let fast = topk::select(&values, k);
        let mut full: Vec<u32> = (0..n as u32).collect();
        full.select_nth_unstable_by(k - 1, |a, b| {
            values[*b as usize].abs().total_cmp(&values[*a as usize].abs()).then(a.cmp(b))
        });
        full.truncate(k);
        full.sort_unstable();
        assert_eq!(fast, full, "k = {k}");
    }
}

#[test]
fn fused_topk_feedback_matches_updating_then_encoding() {
    // A small LCG: the fused path must match whatever the values are.
    let mut state = 11u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    for n in [1_000usize, 400_000] {
        for codec in [Codec::TopK { ppm: 10_000, int8: true }, Codec::TopK { ppm: 50_000, int8: false }] {
            let mut fused = Vec::new();
            let mut reference = vec![0.0f32; n];
            for _ in 0..3 {
                let delta: Vec<f32> = (0..n).map(|_| next()).collect();
                let payload = codec.encode_with_feedback(&delta, &mut fused, 0.8);
                for (r, d) in reference.iter_mut().zip(&delta) {
                    *r = 0.8 * *r + d;
                }
                let expected = codec.encode(&reference);
                codec.accumulate(&expected, n, -1.0, &mut reference).unwrap();
                assert_eq!(payload, expected, "{codec} at {n}");
                assert_eq!(fused, reference, "{codec} at {n}");
            }
        }
    }
}

/// `decoded` is the sparse coding of `v` with K = `k` per chunk of `chunk`: each
/// chunk holds its K largest magnitudes (ties to the lower index) with their
/// sign, every magnitude within [min, max] of the kept ones, and nothing else.
fn sparse_round_trip_holds(v: &[f32], decoded: &[f32], k: u32, chunk: u32) -> bool {
    v.chunks(chunk as usize).zip(decoded.chunks(chunk as usize)).all(|(v, d)| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|a, b| v[*b].abs().total_cmp(&v[*a].abs()).then(a.cmp(b)));
        let kept = &order[..(k as usize).min(v.len())];
        let min = kept.iter().map(|&i| v[i].abs()).fold(f32::INFINITY, f32::min);
        let max = kept.iter().map(|&i| v[i].abs()).fold(0.0, f32::max);
        (0..v.len()).all(|i| {
            if kept.contains(&i) {
                let same_sign = d[i] == 0.0 || v[i] == 0.0 || (d[i] < 0.0) == (v[i] < 0.0);
                same_sign && d[i].abs() >= min && d[i].abs() <= max
            } else {
                d[i] == 0.0
            }
        })
    })
}

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[test]
fn sparse_keeps_exactly_the_top_k_of_each_chunk() {
    let mut next = lcg(3);
    // 4 whole chunks of 1000 (not a power of two: 10-bit indices) and a last one of 500.
    let v: Vec<f32> = (0..4500).map(|_| next()).collect();
    for bits in [2, 4] {
        let codec = Codec::Sparse { k: 20, chunk: 1000, bits };
        let payload = codec.encode(&v);
        // 5 pairs of scales, 4·20 + 20 indices of 10 bits, as many values of `bits` bits.
        assert_eq!(payload.len(), 5 * 8 + 100 * 10 / 8 + (100 * bits as usize).div_ceil(8));
        assert_eq!(payload.len(), codec.max_payload_len(v.len()));
        let decoded = codec.decode(&payload, v.len()).unwrap();
        assert!(sparse_round_trip_holds(&v, &decoded, 20, 1000), "{codec}");
        assert_eq!(decoded.iter().filter(|d| **d != 0.0).count(), 100, "{codec}");
    }
}

#[test]
fn sparse_last_chunk_shorter_than_k_keeps_all_of_it() {
    let codec = Codec::Sparse { k: 4, chunk: 8, bits: 4 };
    let v = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 0.5, -0.25];
    let decoded = codec.decode(&codec.encode(&v), v.len()).unwrap();
    assert_eq!(&decoded[..4], &[0.0; 4]);
    assert!(decoded[4] > 0.0 && decoded[5] < 0.0 && decoded[6] > 0.0 && decoded[7] < 0.0);
    // Both values of the 2-value last chunk are kept; on a grid spanning exactly them.
    assert!(close(&decoded[8..], &[0.5, -0.25], 1e-6), "{decoded:?}");
}

#[test]
fn sparse_values_are_within_the_quantization_error() {
    let mut next = lcg(5);
    let v: Vec<f32> = (0..40_960).map(|_| next()).collect();
    let kept_energy = |codec: Codec| {
        let decoded = codec.decode(&codec.encode(&v), v.len()).unwrap();
        let (mut error, mut energy) = (0.0f64, 0.0f64);
        for (d, x) in decoded.iter().zip(&v) {
            if *d != 0.0 {
                error += ((d - x) as f64).powi(2);
                energy += (*x as f64).powi(2);
            }
        }
        error / energy
    };
    // Uniform values: the kept magnitudes of 64 of 4096 lie in [0.984, 1], so
    // the relative error is tiny, and 4 bits beat 2.
    let two = kept_energy(Codec::Sparse { k: 64, chunk: 4096, bits: 2 });
    let four = kept_energy(Codec::Sparse { k: 64, chunk: 4096, bits: 4 });
    assert!(two < 1e-4 && four < two / 10.0, "2 bits {two:e}, 4 bits {four:e}");
}

#[test]
fn sparse_grid_is_no_worse_than_min_max() {
    // Heavy-tailed values, where the fitted grid matters most.
    let mut next = lcg(9);
    let v: Vec<f32> = (0..8192).map(|_| next().powi(7) * 10.0).collect();
    for bits in [2u8, 4] {
        let codec = Codec::Sparse { k: 256, chunk: 4096, bits };
        let decoded = codec.decode(&codec.encode(&v), v.len()).unwrap();
        let levels = 1u32 << (bits - 1);
        for (x, d) in v.chunks(4096).zip(decoded.chunks(4096)) {
            let kept: Vec<(f32, f32)> =
                x.iter().zip(d).filter(|(_, d)| **d != 0.0).map(|(x, d)| (x.abs(), d.abs())).collect();
            let (lo, hi) = kept.iter().fold((f32::INFINITY, 0.0f32), |(l, h), (a, _)| (l.min(*a), h.max(*a)));
            let step = (hi - lo) / (levels - 1) as f32;
            let min_max: f64 = kept
                .iter()
                .map(|(a, _)| {
                    let q = ((a - lo) / step).round();
                    ((lo + q * step - a) as f64).powi(2)
                })
                .sum();
            let fitted: f64 = kept.iter().map(|(a, d)| ((d - a) as f64).powi(2)).sum();
            assert!(fitted <= min_max * 1.0001, "{bits} bits: fitted {fitted:e}, min-max {min_max:e}");
            if bits == 2 {
                assert!(fitted < min_max * 0.8, "the fit gains little: {fitted:e} against {min_max:e}");
            }
        }
    }
}

#[test]
fn sparse_refuses_bad_indices_scales_and_padding() {
    // k = 2 of chunks of 3 (2-bit indices), 4 bits per value, 5 parameters:
    // chunks of 3 and 2, 4 kept values, 8 bits of indices then 16 bits of codes.
    let codec = Codec::Sparse { k: 2, chunk: 3, bits: 4 };
    let good = codec.encode(&[1.0, -3.0, 2.0, 0.5, -0.5]);
    assert_eq!(good.len(), 16 + 1 + 2);
    assert_eq!(good[16], 0b01_00_10_01, "indices 1, 2 | 0, 1");
    assert!(codec.check(&good, 5).is_ok());
    let with = |at: usize, byte: u8| {
        let mut p = good.clone();
        p[at] = byte;
        codec.check(&p, 5)
    };
    // Index 3 is outside a chunk of 3; index 2 outside the last chunk of 2.
    assert!(matches!(with(16, 0b01_00_11_01), Err(CodecError::Sparse(_))));
    assert!(matches!(with(16, 0b10_00_10_01), Err(CodecError::Sparse(_))));
    // Repeated and decreasing indices.
    assert!(matches!(with(16, 0b01_00_01_01), Err(CodecError::Sparse(_))));
    assert!(matches!(with(16, 0b01_00_01_10), Err(CodecError::Sparse(_))));
    let mut scales = good.clone();
    scales[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(codec.check(&scales, 5), Err(CodecError::BadScale(0)));
    scales[0..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert_eq!(codec.check(&scales, 5), Err(CodecError::BadScale(0)));
    // lo above hi.
    scales[0..4].copy_from_slice(&4.0f32.to_le_bytes());
    assert_eq!(codec.check(&scales, 5), Err(CodecError::BadScale(0)));
    scales = good.clone();
    scales[12..16].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_eq!(codec.check(&scales, 5), Err(CodecError::BadScale(1)));
    // Padding bits must be zero: 3 parameters of 2-bit values leave 2 bits over.
    let codec = Codec::Sparse { k: 3, chunk: 3, bits: 2 };
    let mut p = codec.encode(&[1.0, 2.0, 3.0]);
    assert!(codec.check(&p, 3).is_ok());
    *p.last_mut().unwrap() |= 0b1100_0000;
    assert!(matches!(codec.check(&p, 3), Err(CodecError::Sparse(_))));
    assert!(matches!(codec.check(&p, 4), Err(CodecError::Length { .. })));
}

#[test]
fn sparse_chunk_of_one_and_whole_model_chunks_work() {
    let v = [3.0f32, -1.0, 0.0, 2.0];
    // C = 1: indices take no bits, every value is kept.
    let codec = Codec::Sparse { k: 1, chunk: 1, bits: 2 };
    assert_eq!(codec.decode(&codec.encode(&v), 4).unwrap(), v);
    // One chunk larger than the model.
    let codec = Codec::Sparse { k: 2, chunk: 1 << 20, bits: 2 };
    assert_eq!(codec.decode(&codec.encode(&v), 4).unwrap(), [3.0, 0.0, 0.0, 2.0]);
    assert!(codec.encode(&[]).is_empty());
    assert_eq!(codec.decode(&[], 0).unwrap(), Vec::<f32>::new());
}

#[test]
fn sparse_non_finite_chunks_send_zeros() {
    let codec = Codec::Sparse { k: 2, chunk: 4, bits: 2 };
    let v = [f32::NAN, 1.0, 2.0, 3.0, 4.0, -5.0, 0.0, 1.0];
    let mut residual = Vec::new();
    let payload = codec.encode_with_feedback(&v, &mut residual, 1.0);
    let decoded = codec.decode(&payload, v.len()).unwrap();
    assert_eq!(&decoded[..4], &[0.0; 4]);
    assert_eq!(&decoded[4..], &[4.0, -5.0, 0.0, 0.0]);
}

proptest! {
    #[test]
    fn sparse_payloads_of_the_right_length_are_an_error_not_a_panic(
        seed in any::<u64>(),
        n in 0usize..400,
        k in 1u32..40,
        extra in 0u32..40,
        four in any::<bool>(),
    ) {
        let codec = Codec::Sparse { k, chunk: k + extra, bits: if four { 4 } else { 2 } };
        let len = codec.max_payload_len(n);
        let mut state = seed;
        let bytes: Vec<u8> = (0..len).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        }).collect();
        let mut out = vec![0.0; n];
        if codec.check(&bytes, n).is_ok() {
            prop_assert!(codec.accumulate(&bytes, n, 1.0, &mut out).is_ok());
            prop_assert!(out.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn sparse_payloads_with_a_changed_byte_decode_or_are_refused(
        v in prop::collection::vec(-100f32..100.0, 1..300),
        k in 1u32..20,
        extra in 0u32..20,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let codec = Codec::Sparse { k, chunk: k + extra, bits: 2 };
        let mut payload = codec.encode(&v);
        let i = at.index(payload.len());
        payload[i] = byte;
        let mut out = vec![0.0; v.len()];
        if codec.check(&payload, v.len()).is_ok() {
            prop_assert!(codec.accumulate(&payload, v.len(), 1.0, &mut out).is_ok());
        }
    }

    #[test]
    fn sparse_round_trips_for_any_chunking(
        v in prop::collection::vec(-100f32..100.0, 1..500),
        k in 1u32..20,
        extra in 0u32..50,
        four in any::<bool>(),
    ) {
        let codec = Codec::Sparse { k, chunk: k + extra, bits: if four { 4 } else { 2 } };
        let payload = codec.encode(&v);
        prop_assert_eq!(payload.len(), codec.max_payload_len(v.len()));
        let decoded = codec.decode(&payload, v.len()).unwrap();
        prop_assert!(sparse_round_trip_holds(&v, &decoded, k, k + extra));
        prop_assert_eq!(codec.to_string().parse::<Codec>().unwrap(), codec);
    }
}
