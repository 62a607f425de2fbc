//! `starling bench`: figures that anyone can rerun.
//!
//! - `average`: two peers on loopback, each with a delta of `--params` floats,
//!   exchange and average them over the real libp2p stack, as nodes send
//!   them: whole on gossip, or (over `--pull-above`) announced on gossip with
//!   the payload fetched over the payload protocol; seconds per round
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
    /// `gossip` (the delta whole on gossip) or `pull` (announced, then fetched).
    pub transport: &'static str,
    /// `tcp` (noise and yamux over TCP) or `quic`.
    pub connection: &'static str,
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
    /// Payload megabytes (10⁶ bytes) per second of transfer time.
    pub transfer_mb_per_s: f64,
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

/// How the two peers of [`average`] exchange their deltas.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub rounds: usize,
    /// Deltas whose signed bytes exceed this are announced and pulled, as a node sends them.
    pub pull_above: usize,
    /// Connect over QUIC instead of TCP (noise and yamux).
    pub quic: bool,
}

/// Runs `exchange.rounds` exchanges of a `params`-float delta between two peers on loopback.
pub async fn average(params: usize, codec: Codec, exchange: Exchange) -> Result<AverageReport, BenchError> {
    let Exchange { rounds, .. } = exchange;
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
    let first = on_own_thread(peer(0, spec.clone(), barrier.clone(), exchange, None, Some(addr_tx)));
    let address = addr_rx.await.map_err(|_| BenchError::Net("first peer did not listen".into()))?;
    let second = on_own_thread(peer(1, spec.clone(), barrier, exchange, Some(address), None));
    let (a, b) = (first.await, second.await);
    let (a, b) = (a?, b?);
    let per_round: Vec<f64> = a.0.iter().zip(&b.0).map(|(x, y)| x.total.max(y.total)).collect();
    let all: Vec<Timing> = a.0.iter().chain(&b.0).copied().collect();
    let avg = |f: fn(&Timing) -> f64| all.iter().map(f).sum::<f64>() / all.len() as f64;
    let transfer = avg(|t| t.transfer);
    Ok(AverageReport {
        params: n,
        codec: codec.to_string(),
        payload_bytes: a.1,
        transport: if a.2 { "pull" } else { "gossip" },
        connection: if exchange.quic { "quic" } else { "tcp" },
        transfer_mb_per_s: a.1 as f64 / 1e6 / transfer,
        rounds,
        mean_seconds: per_round.iter().sum::<f64>() / rounds as f64,
        min_seconds: per_round.iter().copied().fold(f64::INFINITY, f64::min),
        max_seconds: per_round.iter().copied().fold(0.0, f64::max),
        encode_sign_seconds: avg(|t| t.encode_sign),
        transfer_seconds: transfer,
        verify_seconds: avg(|t| t.verify),
        merge_seconds: avg(|t| t.merge),
    })
}

/// Starts a peer on a thread of its own with a single-threaded runtime; the
/// receiver yields its result.
fn on_own_thread<F>(peer: F) -> impl std::future::Future<Output = Result<PeerResult, BenchError>>
where
    F: std::future::Future<Output = Result<PeerResult, BenchError>> + Send + 'static,
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

/// A peer's timings, its payload's bytes, and whether it pulled.
type PeerResult = (Vec<Timing>, usize, bool);

async fn peer(
    index: usize,
    spec: Arc<RunSpec>,
    barrier: Arc<Barrier>,
    Exchange { rounds, pull_above, quic }: Exchange,
    dial: Option<Multiaddr>,
    listening: Option<tokio::sync::oneshot::Sender<Multiaddr>>,
) -> Result<PeerResult, BenchError> {
    let key = SigningKey::from_bytes(&[index as u8 + 1; 32]);
    let mut registry = Default::default();
    let options = NetOptions { mdns: false, ..NetOptions::default() };
    let mut swarm =
        net::build_swarm(&key, &spec, &options, &mut registry).map_err(|e| BenchError::Net(e.to_string()))?;
    let topic = net::delta_topic(&spec);
    let announce = net::announce_topic(&spec);
    for topic in [&topic, &announce] {
        swarm.behaviour_mut().gossipsub.subscribe(topic).expect("subscribe");
    }
    swarm
        .listen_on(
            if quic { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" }
                .parse()
                .expect("valid"),
        )
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
    let mut work = Vec::new();
    // As a node does: the wire bytes go into last round's buffer once it is back.
    let wire_pool = starling_protocol::wire::pool::BufferPool::new();
    let mut mean = vec![0.0f32; n];
    let outer = OuterOptimizer::from(&spec.outer);
    let (run, codec) = (spec.run_id(), spec.codec);
    let mut timings = Vec::with_capacity(rounds);
    let mut payload_bytes = 0;
    let mut pulled = false;
    // Round 0 is a warm-up, not measured: it pays the first touch of every buffer.
    for round in 0..=rounds as u64 {
        barrier.wait().await;
        let start = Instant::now();
        // A node announces the lineage of the state it trained from with each delta.
        let base = state.lineage;
        // As a node encodes: the trained delta in the buffer it trained in,
        // left holding the new residual (kept only by a lossy codec).
        work.resize(n, 0.0);
        work.copy_from_slice(&delta);
        let signing = crate::node::Signing { key: &key, run_id: run, round, base, samples: 64 };
        let (own, bytes) =
            crate::node::encode_and_sign(&signing, codec, &[], &mut work, &residual, 1.0, Some(&wire_pool));
        if !codec.is_lossless() {
            std::mem::swap(&mut residual, &mut work);
        }
        payload_bytes = own.payload.len();
        let encoded = Instant::now();
        pulled = bytes.len() > pull_above;
        let data = if pulled {
            exchange_pulled(&mut swarm, &announce, &own).await?
        } else {
            exchange_gossiped(&mut swarm, &topic, bytes).await?
        };
        let received = Instant::now();
        let rules = starling_protocol::DeltaRules::new(run, codec, n);
        let other = match data {
            Received::Bytes(bytes) => SignedDelta::from_untrusted(&bytes, &rules),
            Received::Delta(delta) => delta.validate(&rules).map(|()| *delta),
        }
        .map_err(|e| BenchError::Refused { peer: index, reason: e.to_string() })?;
        let verified = Instant::now();
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
    Ok((timings, payload_bytes, pulled))
}

/// The other peer's delta, as it arrived.
enum Received {
    Bytes(Vec<u8>),
    Delta(Box<SignedDelta>),
}

/// Publishes our delta whole and waits for the other's.
async fn exchange_gossiped(
    swarm: &mut libp2p::Swarm<net::Behaviour>,
    topic: &gossipsub::IdentTopic,
    bytes: bytes::Bytes,
) -> Result<Received, BenchError> {
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
    swarm.behaviour_mut().gossipsub.report_message_validation_result(
        &id,
        &source,
        gossipsub::MessageAcceptance::Accept,
    );
    Ok(Received::Bytes(data))
}

/// Announces our delta, fetches the other's payload when its announcement
/// comes, and serves ours; returns once both payloads have crossed.
async fn exchange_pulled(
    swarm: &mut libp2p::Swarm<net::Behaviour>,
    topic: &gossipsub::IdentTopic,
    own: &SignedDelta,
) -> Result<Received, BenchError> {
    use libp2p::request_response::{Event, Message};
    use net::payload::PayloadRequest;
    use starling_protocol::SignedHeader;

    let announcement = starling_protocol::wire::encode_announcement(&SignedHeader::of(own));
    swarm
        .behaviour_mut()
        .gossipsub
        .publish(topic.clone(), announcement)
        .map_err(|e| BenchError::Net(e.to_string()))?;
    let (mut announced, mut received, mut served) = (None, None, false);
    tokio::time::timeout(Duration::from_secs(60), async {
        while received.is_none() || !served {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                    message_id,
                    propagation_source,
                    message,
                })) => {
                    let signed = starling_protocol::wire::decode_announcement(&message.data)
                        .map_err(|e| BenchError::Net(e.to_string()))?;
                    let request = PayloadRequest(signed.header.payload_hash);
                    swarm.behaviour_mut().payload.send_request(&propagation_source, request);
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Accept,
                    );
                    announced = Some(signed);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Payload(Event::Message { message, .. })) => {
                    match message {
                        Message::Request { request, channel, .. } => {
                            let payload = (request.0 == own.header.payload_hash).then(|| own.payload.clone());
                            let _ = swarm.behaviour_mut().payload.send_response(channel, payload);
                        }
                        Message::Response { response, .. } => {
                            let payload =
                                response.ok_or(BenchError::Net("the other peer held no payload".into()))?;
                            let signed = announced
                                .take()
                                .ok_or(BenchError::Net("a payload nobody announced".into()))?;
                            received = Some(SignedDelta::from_parts(signed, payload));
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Payload(Event::ResponseSent { .. })) => served = true,
                SwarmEvent::Behaviour(BehaviourEvent::Payload(Event::OutboundFailure { error, .. })) => {
                    return Err(BenchError::Net(format!("fetching the other's payload failed: {error}")));
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| BenchError::Timeout("the other peer's delta did not arrive"))??;
    Ok(Received::Delta(Box::new(received.expect("the loop ends with a payload"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_peers_average_a_delta_whole_on_gossip_or_pulled() {
        for (pull_above, transport, quic) in
            [(usize::MAX, "gossip", false), (0, "pull", false), (0, "pull", true)]
        {
            let report = average(5000, Codec::Dense, Exchange { rounds: 2, pull_above, quic }).await.unwrap();
            assert_eq!(report.transport, transport);
            assert_eq!((report.rounds, report.codec.as_str()), (2, "dense"));
            assert!(report.payload_bytes >= report.params * 4, "{report:?}");
            assert!(report.transfer_mb_per_s > 0.0 && report.mean_seconds > 0.0, "{report:?}");
        }
    }
}
