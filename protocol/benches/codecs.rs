//! Throughput of the path from a trained delta to merged parameters: encode,
//! sign, verify, decode and aggregate, at 1M and 10M parameters, for every codec.
//! Criterion prints bytes per second of the dense (f32) delta processed, so
//! codecs compare on the same footing.
//!
//! `lowrank` is timed apart, on the matrices of the GPT presets `lm-small`
//! (8.5M parameters) and `gpt2-small` (124M): `cargo bench -p
//! starling-protocol -- lowrank`.
//!
//! `cargo bench -p starling-protocol`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use starling_protocol::{
    model_spec::GptSpec, AggregationRule, Codec, DeltaRules, ModelSpec, RunId, SignedDelta,
};

const SIZES: [usize; 2] = [1_000_000, 10_000_000];
/// Deltas merged per aggregate (a 4-node swarm).
const PEERS: usize = 4;

fn delta(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1e-2f32..1e-2)).collect()
}

fn codecs(c: &mut Criterion) {
    for n in SIZES {
        let values = delta(n, 1);
        let mut group = c.benchmark_group(format!("codec/{n}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes((n * 4) as u64));
        for codec in Codec::examples() {
            group.bench_with_input(BenchmarkId::new("encode", codec), &codec, |b, codec| {
                b.iter(|| codec.encode(&values))
            });
            let payload = codec.encode(&values);
            group.bench_with_input(BenchmarkId::new("decode", codec), &codec, |b, codec| {
                b.iter(|| codec.decode(&payload, n).unwrap())
            });
        }
        group.finish();
    }
}

fn signatures(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[1; 32]);
    for n in SIZES {
        let payload = Codec::Dense.encode(&delta(n, 2));
        let mut group = c.benchmark_group(format!("signature/{n}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_function("sign", |b| {
            b.iter(|| SignedDelta::sign(&key, RunId([0; 32]), 1, [0; 32], 64, Codec::Dense, payload.clone()))
        });
        let signed = SignedDelta::sign(&key, RunId([0; 32]), 1, [0; 32], 64, Codec::Dense, payload.clone());
        group.bench_function("verify", |b| b.iter(|| signed.verify().unwrap()));
        let bytes = signed.to_bytes();
        group.bench_function("receive (decode, verify, check)", |b| {
            b.iter(|| {
                SignedDelta::from_untrusted(&bytes, &DeltaRules::new(RunId([0; 32]), Codec::Dense, n))
                    .unwrap()
            })
        });
        group.finish();
    }
}

fn aggregate(c: &mut Criterion) {
    for n in SIZES {
        let mut group = c.benchmark_group(format!("aggregate/{n}x{PEERS}"));
        group.sample_size(10);
        // Dense-equivalent bytes merged: PEERS deltas of n floats.
        group.throughput(Throughput::Bytes((PEERS * n * 4) as u64));
        for codec in Codec::examples() {
            let deltas: Vec<SignedDelta> = (0..PEERS)
                .map(|i| {
                    let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
                    SignedDelta::sign(
                        &key,
                        RunId([0; 32]),
                        1,
                        [0; 32],
                        64,
                        codec,
                        codec.encode(&delta(n, i as u64)),
                    )
                })
                .collect();
            group.bench_with_input(BenchmarkId::new("decode+aggregate", codec), &codec, |b, codec| {
                b.iter(|| AggregationRule::WeightedMean.aggregate_deltas(&deltas, *codec, n).unwrap())
            });
        }
        group.finish();
    }
}

/// `lowrank` encodes (subspace iteration on every matrix) and decodes (the
/// factors' products) at the sizes of real language models.
fn lowrank(c: &mut Criterion) {
    for preset in ["lm-small", "gpt2-small"] {
        let model = ModelSpec::Gpt(GptSpec::preset(preset).expect("a preset"));
        let (n, matrices) = (model.param_count(), model.matrices());
        let values = delta(n, 4);
        let mut group = c.benchmark_group(format!("lowrank/{preset}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes((n * 4) as u64));
        for codec in ["lowrank:4", "lowrank:8+4bit"] {
            let codec: Codec = codec.parse().expect("a codec");
            group.bench_with_input(BenchmarkId::new("encode", codec), &codec, |b, codec| {
                b.iter(|| codec.encode_shaped(&values, &matrices))
            });
            let payload = codec.encode_shaped(&values, &matrices);
            group.bench_with_input(BenchmarkId::new("decode", codec), &codec, |b, codec| {
                b.iter(|| codec.decode(&payload, n).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codecs, signatures, aggregate, lowrank);
criterion_main!(benches);
