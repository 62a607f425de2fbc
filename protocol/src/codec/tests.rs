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
        assert!(codec.check(&payload, 601).is_err() || matches!(codec, Codec::TopK { .. }), "{codec}");
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
                Codec::Int8 => prop_assert!(close(&decoded, &v, max / 127.0 + 1e-4)),
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
