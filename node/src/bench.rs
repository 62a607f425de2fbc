//! `starling bench`: figures that anyone can rerun.
//!
//! - `average`: two peers on loopback, each with a delta of `--params` floats,
//!   exchange and average them over the real libp2p stack; seconds per round
//!   include encode, sign, transfer, verify, decode and
//!   merge (after one unmeasured warm-up round).
//! - `codecs`: the local swarm once per codec, as a table of bytes, compression
//!   and accuracy next to dense.
//! - `flood`: peers flood a real node with each kind of message and its memory is sampled (see [`flood`]).
//! - `scale`: one lone node per model size: memory, time split, disk (see [`scale`]).
//! - `stall`: how long a node's event loop stops answering while it trains,
//!   merges and serves a large model (see [`stall`]).

mod flood;
pub mod scale;
mod stall;

pub use flood::{flood, FloodKind, FloodReport, KindReport};
pub use stall::{stall, StallReport};

use std::{sync::Arc, time::Duration, time::Instant};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::{gossipsub, swarm::SwarmEvent, Multiaddr};
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use serde::Serialize;
use starling_protocol::{Codec, ModelState, OuterOptimizer, RunSpec, SignedDelta};
use tokio::sync::Barrier;

use crate::net::{self, BehaviourEvent, NetOptions};

/// Errors of a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--params must be at least 1000, got {0}")]
    TooFewParams(usize),
    #[error("network: {0}")]
    Net(String),
    #[error("peer {peer} refused the other's delta: {reason}")]
    Refused { peer: usize, reason: String },
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Seconds per round of a two-peer exchange.
#[derive(Clone, Debug, Serialize)]
pub struct AverageReport {
    pub params: usize,
    pub codec: String,
    pub payload_bytes: usize,
    pub rounds: usize,
    pub mean_seconds: f64,
    pub min_seconds: f64,
    pub max_seconds: f64,
    /// Where a round's time goes, averaged over rounds and both peers. Transfer
    /// runs from our publish to the other's delta arriving, so it includes the
    /// other peer's encoding, which runs at the same time as ours.
    pub encode_sign_seconds: f64,
    pub transfer_seconds: f64,
    pub verify_seconds: f64,
    pub merge_seconds: f64,
}

/// A spec whose model has about `params` parameters (the exact count is reported).
fn spec_for(params: usize, codec: Codec) -> RunSpec {
    let mut spec = RunSpec::builtin();
    spec.name = format!("bench-average-{params}");
    let hidden = params.div_ceil(1001).max(2);
    spec.model = starling_protocol::ModelSpec::mlp(vec![1000, hidden]);
    spec.codec = codec;
    spec
}

#[derive(Default, Clone, Copy)]
struct Timing {
    total: f64,
    encode_sign: f64,
    transfer: f64,
    verify: f64,
    merge: f64,
}

/// Runs `rounds` exchanges of a `params`-float delta between two peers on loopback.
pub async fn average(params: usize, rounds: usize, codec: Codec) -> Result<AverageReport, BenchError> {
    if params < 1000 {
        return Err(BenchError::TooFewParams(params));
    }
    let spec = Arc::new(spec_for(params, codec));
    let n = spec.param_count();
    let barrier = Arc::new(Barrier::new(2));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    // Each peer gets its own thread and runtime, as it would have its own
    // machine: on one shared runtime, both peers' CPU work could end up on one
    // worker and run one after the other.
    let first = on_own_thread(peer(0, spec.clone(), barrier.clone(), rounds, None, Some(addr_tx)));
    let address = addr_rx.await.map_err(|_| BenchError::Net("first peer did not listen".into()))?;
    let second = on_own_thread(peer(1, spec.clone(), barrier, rounds, Some(address), None));
    let (a, b) = (first.await, second.await);
    let (a, b) = (a?, b?);
    let per_round: Vec<f64> = a.0.iter().zip(&b.0).map(|(x, y)| x.total.max(y.total)).collect();
    let all: Vec<Timing> = a.0.iter().chain(&b.0).copied().collect();
    let avg = |f: fn(&Timing) -> f64| all.iter().map(f).sum::<f64>() / all.len() as f64;
    Ok(AverageReport {
        params: n,
        codec: codec.to_string(),
        payload_bytes: a.1,
        rounds,
        mean_seconds: per_round.iter().sum::<f64>() / rounds as f64,
        min_seconds: per_round.iter().copied().fold(f64::INFINITY, f64::min),
        max_seconds: per_round.iter().copied().fold(0.0, f64::max),
        encode_sign_seconds: avg(|t| t.encode_sign),
        transfer_seconds: avg(|t| t.transfer),
        verify_seconds: avg(|t| t.verify),
        merge_seconds: avg(|t| t.merge),
    })
}

/// Starts a peer on a thread of its own with a single-threaded runtime; the
/// receiver yields its result.
fn on_own_thread<F>(peer: F) -> impl std::future::Future<Output = Result<(Vec<Timing>, usize), BenchError>>
where
    F: std::future::Future<Output = Result<(Vec<Timing>, usize), BenchError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(peer),
            Err(e) => Err(BenchError::Net(format!("cannot start a runtime: {e}"))),
        };
        let _ = tx.send(result);
    });
    async move { rx.await.unwrap_or_else(|_| Err(BenchError::Net("a peer thread panicked".into()))) }
}

async fn peer(
    index: usize,
    spec: Arc<RunSpec>,
    barrier: Arc<Barrier>,
    rounds: usize,
    dial: Option<Multiaddr>,
    listening: Option<tokio::sync::oneshot::Sender<Multiaddr>>,
) -> Result<(Vec<Timing>, usize), BenchError> {
    let key = SigningKey::from_bytes(&[index as u8 + 1; 32]);
    let mut registry = Default::default();
    let options = NetOptions { mdns: false, ..NetOptions::default() };
    let mut swarm =
        net::build_swarm(&key, &spec, &options, &mut registry).map_err(|e| BenchError::Net(e.to_string()))?;
    let topic = net::delta_topic(&spec);
    swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribe");
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid"))
        .map_err(|e| BenchError::Net(e.to_string()))?;
    if let Some(address) = dial {
        swarm.dial(address).map_err(|e| BenchError::Net(e.to_string()))?;
    }
    let mut listening = listening;
    // Until the other peer is subscribed, nobody can receive.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(tx) = listening.take() {
                        let _ = tx.send(address);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
                    break
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| BenchError::Timeout("peers did not connect"))?;

    let n = spec.param_count();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(index as u64);
    let delta: Vec<f32> = (0..n).map(|_| rng.random_range(-1e-3f32..1e-3)).collect();
    let mut state = ModelState::initial(vec![0.0; n]);
    let mut residual = Vec::new();
    let mut mean = vec![0.0f32; n];
    let outer = OuterOptimizer::from(&spec.outer);
    let (run, codec) = (spec.run_id(), spec.codec);
    let mut timings = Vec::with_capacity(rounds);
    let mut payload_bytes = 0;
    // Round 0 is a warm-up, not measured: it pays the first touch of every buffer.
    for round in 0..=rounds as u64 {
        barrier.wait().await;
        let start = Instant::now();
        // A node announces the lineage of the state it trained from with each delta.
        let base = state.lineage;
        let payload = codec.encode_with_feedback(&delta, &mut residual, 1.0);
        payload_bytes = payload.len();
        let own = SignedDelta::sign(&key, run, round, base, 64, codec, payload);
        let bytes = own.to_bytes();
        let encoded = Instant::now();
        swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.clone(), bytes)
            .map_err(|e| BenchError::Net(e.to_string()))?;
        let (id, source, data) = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                    message_id,
                    propagation_source,
                    message,
                })) = swarm.select_next_some().await
                {
                    break (message_id, propagation_source, message.data);
                }
            }
        })
        .await
        .map_err(|_| BenchError::Timeout("the other peer's delta did not arrive"))?;
        let received = Instant::now();
        let other = SignedDelta::from_untrusted(&data, &starling_protocol::DeltaRules::new(run, codec, n))
            .map_err(|e| BenchError::Refused { peer: index, reason: e.to_string() })?;
        let verified = Instant::now();
        swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &id,
            &source,
            gossipsub::MessageAcceptance::Accept,
        );
        // Canonical merge order: by sender.
        let mut pair = [own, other];
        pair.sort_by_key(|d| d.header.sender);
        spec.aggregation
            .aggregate_deltas_with(&pair, codec, Some(&state.momentum), &mut mean)
            .map_err(|e| BenchError::Refused { peer: index, reason: e.to_string() })?;
        outer.step(&mut state.params, &mut state.momentum, &mean);
        state.record_merge(round, &pair);
        let merged = Instant::now();
        if round == 0 {
            continue;
        }
        timings.push(Timing {
            total: (merged - start).as_secs_f64(),
            encode_sign: (encoded - start).as_secs_f64(),
            transfer: (received - encoded).as_secs_f64(),
            verify: (verified - received).as_secs_f64(),
            merge: (merged - verified).as_secs_f64(),
        });
    }
    // Let the last messages (and their acknowledgements) drain before the peer goes.
    barrier.wait().await;
    Ok((timings, payload_bytes))
}
