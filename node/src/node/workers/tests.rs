use std::sync::Arc;

use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use starling_protocol::{Codec, DeltaRules, ModelState, RunId, SignedDelta};
use tokio::sync::mpsc;

use super::*;

fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn encoding_beside_the_residual_gives_the_payload_and_residual_of_encoding_into_it() {
    // Large enough for top-k's sampled threshold.
    let n = 300_000;
    let matrices =
        [Matrix { offset: 1000, rows: 500, cols: 400 }, Matrix { offset: 250_000, rows: 100, cols: 300 }];
    for codec in ["dense", "f16", "int8", "topk:0.01", "topk:0.05+int8", "sparse:64/4096+2bit", "lowrank:4"] {
        let codec: Codec = codec.parse().unwrap();
        for residual in [Vec::new(), values(2, n)] {
            let delta = values(1, n);
            let mut in_place = residual.clone();
            let expected = codec.encode_with_feedback_shaped(&delta, &mut in_place, 0.8, &matrices);
            let mut beside = delta.clone();
            let payload = encode_keeping_residual(codec, &matrices, &mut beside, &residual, 0.8);
            assert_eq!(payload, expected, "{codec}: payload");
            assert_eq!(beside, in_place, "{codec}: residual");
        }
    }
}

#[test]
fn a_delta_encoded_and_signed_at_once_is_the_one_signed_then_encoded() {
    let n = 300_000;
    let key = SigningKey::from_bytes(&[9; 32]);
    for codec in ["dense", "int8", "topk:0.01+int8"] {
        let codec: Codec = codec.parse().unwrap();
        for residual in [Vec::new(), values(2, n)] {
            let mut expected_residual = values(1, n);
            let payload = encode_keeping_residual(codec, &[], &mut expected_residual, &residual, 0.8);
            let signed = SignedDelta::sign(&key, RunId([1; 32]), 3, [2; 32], 64, codec, payload);
            let (want, want_bytes) = starling_protocol::wire::encode_delta_shared(signed);
            let mut delta = values(1, n);
            let signing = Signing { key: &key, run_id: RunId([1; 32]), round: 3, base: [2; 32], samples: 64 };
            let (got, bytes) = encode_and_sign(&signing, codec, &[], &mut delta, &residual, 0.8, None);
            assert_eq!(bytes, want_bytes, "{codec}: wire bytes");
            assert!(got == want, "{codec}: delta");
            assert_eq!(delta, expected_residual, "{codec}: residual");
        }
    }
}

fn verify_job(i: u8) -> Job {
    Job::Verify {
        origin: Origin::Gossip { source: PeerId::random(), id: gossipsub::MessageId::new(&[i]) },
        delta: Unverified::Bytes(vec![i; 8]),
        rules: DeltaRules::new(RunId([0; 32]), Codec::Dense, 4),
    }
}

#[tokio::test]
async fn a_full_verify_queue_drops_the_newest_and_results_come_back() {
    let metrics = NodeMetrics::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = Workers::new(tx);
    let running = Pool::Verify.workers();
    for i in 0..running + Kind::Verify.capacity() {
        assert!(matches!(workers.submit(verify_job(i as u8), &metrics), Submitted::Queued));
    }
    // The two running jobs are not taken off until the loop says they finished.
    match workers.submit(verify_job(255), &metrics) {
        Submitted::Dropped(Job::Verify { delta: Unverified::Bytes(bytes), .. }) => {
            assert_eq!(bytes, vec![255; 8])
        }
        _ => panic!("the newest job is dropped"),
    }
    assert!(metrics.render().contains("starling_work_dropped_total{kind=\"verify\"} 1"));
    let mut done = 0;
    while !workers.idle() {
        let finished = rx.recv().await.expect("a result");
        assert_eq!(finished.kind, Kind::Verify);
        assert!(matches!(finished.done, Done::Verified { result: Err(_), .. }), "garbage is refused");
        workers.finished(finished.kind, &metrics);
        done += 1;
    }
    assert_eq!(done, running + Kind::Verify.capacity());
}

#[tokio::test]
async fn the_writer_runs_one_job_at_a_time_in_order() {
    let metrics = NodeMetrics::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = Workers::new(tx);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let state = Arc::new(ModelState::initial(values(3, 64)));
    let key = SigningKey::from_bytes(&[7; 32]);
    let delta = SignedDelta::sign(
        &key,
        RunId([0; 32]),
        0,
        state.lineage,
        1,
        Codec::Dense,
        Codec::Dense.encode(&values(4, 64)),
    );
    let rules = MergeRules {
        aggregation: Default::default(),
        codec: Codec::Dense,
        outer: OuterOptimizer::from(&starling_protocol::spec::OuterSpec::for_codec(Codec::Dense)),
        params: 64,
    };
    workers.submit(Job::Snapshot { state: state.clone(), store: store.clone() }, &metrics);
    let merge = MergeJob {
        round: 0,
        deltas: vec![delta],
        reason: CloseReason::Deadline,
        state,
        buffer: Vec::new(),
        residual: Arc::new(Vec::new()),
        rules,
        store: store.clone(),
        refusals: None,
        copy_params: false,
    };
    workers.submit(Job::Merge(merge), &metrics);
    assert_eq!((workers.pending(Kind::Snapshot), workers.pending(Kind::Merge)), (1, 1));
    let first = rx.recv().await.unwrap();
    assert_eq!(first.kind, Kind::Snapshot);
    // The merge waits for the snapshot, which then lets the state go: merged in place.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv()).await.is_err());
    workers.finished(first.kind, &metrics);
    drop(first);
    let second = rx.recv().await.unwrap();
    workers.finished(second.kind, &metrics);
    let Done::Merged(Ok(merged)) = second.done else { panic!("merged") };
    assert_eq!((merged.state.round, merged.copied, merged.buffer.len()), (1, false, 64));
    // The checkpoint is a job of its own, after the merge's result came back.
    let checkpoint =
        Job::Checkpoint { state: merged.state.clone(), residual: merged.residual, store: store.clone() };
    workers.submit(checkpoint, &metrics);
    let third = rx.recv().await.unwrap();
    workers.finished(third.kind, &metrics);
    let Done::Checkpointed { round: 1, result: Ok(_) } = third.done else { panic!("checkpointed round 1") };
    let saved = store.latest_checkpoint(64).unwrap().checkpoint.unwrap();
    assert_eq!(saved.state, *merged.state, "checkpointed before the result came back");
    assert!(workers.idle());
}
