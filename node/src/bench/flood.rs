//! `starling bench flood`: peers flood a real `starling run` process with each
//! kind of message a peer can send, one kind after another, while the node's
//! resident memory is sampled from /proc; the report gives it at the start,
//! the middle and the end of each kind, with the peak in between.
//!
//! Each kind comes from a peer of its own (a fresh key), so that the gossip
//! score one flood earns does not silence the next:
//! - `junk`: random bytes of the largest size the run's gossip accepts, on
//!   the delta topic (refused at decoding);
//! - `invalid`: well-formed deltas of the largest size, signed for another
//!   run (refused after decoding);
//! - `far`: valid deltas of rounds far ahead, each from a key of its own
//!   (what a Sybil can make without limit);
//! - `equivocation`: valid equivocation proofs, each for a key of its own;
//! - `offer` and `chunk`: state sync requests, 64 in flight;
//! - `churn`: peers that connect, subscribe to the run and leave, one after another.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use libp2p::{gossipsub, multiaddr::Protocol, request_response, swarm::SwarmEvent, Multiaddr, PeerId, Swarm};
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use serde::Serialize;
use starling_protocol::{
    wire::{SyncRequest, SyncResponse},
    EquivocationProof, RunId, RunSpec, SignedDelta,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::BenchError;
use crate::net::{self, Behaviour, BehaviourEvent, NetOptions};

/// A kind of message a flooding peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FloodKind {
    Junk,
    Invalid,
    Far,
    Equivocation,
    Offer,
    Chunk,
    Churn,
}

impl FloodKind {
    pub const ALL: [FloodKind; 7] = [
        FloodKind::Junk,
        FloodKind::Invalid,
        FloodKind::Far,
        FloodKind::Equivocation,
        FloodKind::Offer,
        FloodKind::Chunk,
        FloodKind::Churn,
    ];
}

/// What one kind of flood did to the node's memory.
#[derive(Clone, Debug, Serialize)]
pub struct KindReport {
    pub kind: FloodKind,
    /// Messages or requests sent (peers, for churn).
    pub sent: usize,
    pub message_bytes: usize,
    pub seconds: f64,
    /// Requests answered with what was asked, and answered `Unavailable` (the
    /// rate limit, or nothing to serve); for gossip, 0.
    pub served: u64,
    pub unavailable: u64,
    /// Messages the node logged as refused during this kind.
    pub refused_by_node: u64,
    /// Resident memory of the node, in bytes: when the kind began, half-way
    /// through its messages, after it (and a short settle), and the highest
    /// sample (every 50 ms) in between.
    pub rss_start: u64,
    pub rss_middle: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
}

/// What a flood did to the node's memory, kind by kind.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    /// Resident memory once the node was up, before any flood.
    pub rss_idle: u64,
    pub kinds: Vec<KindReport>,
    /// The node's high-water mark of resident memory (VmHWM), at the end.
    pub rss_high_water: u64,
}

/// How long one kind may take before the bench moves on.
const KIND_LIMIT: Duration = Duration::from_secs(180);
/// Requests in flight at once (the node serves 64 streams per connection).
const IN_FLIGHT: usize = 64;

/// Floods a fresh node of the built-in run with `messages` of each of `kinds`
/// (for churn, a tenth as many peers).
pub async fn flood(messages: usize, kinds: &[FloodKind]) -> Result<FloodReport, BenchError> {
    let dir = tempfile::tempdir().map_err(net_err)?;
    let mut spec = RunSpec::builtin();
    spec.name = "bench-flood".into();
    let mut node = NodeProcess::start(dir.path(), &spec).await?;
    let sampler = Sampler::start(node.pid);
    // Let the node settle into its first round.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss(node.pid);
    let mut reports = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        let refused_before = node.refused();
        let start = Instant::now();
        let rss_start = rss(node.pid);
        let seed = 0xF0 + i as u8;
        let outcome = match kind {
            FloodKind::Churn => churn(&spec, &node.address, (messages / 10).max(1), node.pid).await?,
            _ => {
                let mut flooder = Flooder::connect(seed, &spec, node.address.clone(), node.peer).await?;
                let outcome = flooder.flood(kind, messages, &spec, node.pid).await;
                flooder.settle(Duration::from_secs(3)).await;
                outcome
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let end = Instant::now();
        reports.push(KindReport {
            kind,
            sent: outcome.sent,
            message_bytes: outcome.message_bytes,
            seconds: (end - start).as_secs_f64(),
            served: outcome.served,
            unavailable: outcome.unavailable,
            refused_by_node: node.refused() - refused_before,
            rss_start,
            rss_middle: outcome.rss_middle,
            rss_end: rss(node.pid),
            rss_peak: sampler.peak(start, end).max(rss_start),
        });
    }
    let report = FloodReport { rss_idle, kinds: reports, rss_high_water: proc_status(node.pid, "VmHWM:") };
    let _ = node.child.kill().await;
    Ok(report)
}

fn net_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Net(e.to_string())
}

/// The node under test: a `starling run` child process.
struct NodeProcess {
    child: tokio::process::Child,
    pid: u32,
    address: Multiaddr,
    peer: PeerId,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl NodeProcess {
    async fn start(dir: &std::path::Path, spec: &RunSpec) -> Result<Self, BenchError> {
        let spec_path = dir.join("spec.toml");
        std::fs::write(&spec_path, spec.to_toml()).map_err(net_err)?;
        let exe = std::env::current_exe().map_err(net_err)?;
        let mut child = tokio::process::Command::new(exe)
            .arg("run")
            .arg("--datadir")
            .arg(dir.join("node"))
            .arg("--spec")
            .arg(&spec_path)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-http"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(net_err)?;
        let pid = child.id().ok_or(BenchError::Net("the node exited at once".into()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let address: Multiaddr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("address=").nth(1) {
                    if rest.starts_with("/ip4/127.0.0.1/tcp/") {
                        return rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or(BenchError::Timeout("the node did not log its listen address"))?;
        let Some(Protocol::P2p(peer)) = address.iter().last() else {
            return Err(BenchError::Net(format!("the node's address {address} has no /p2p/ id")));
        };
        // Keep draining the node's log so it never blocks on a full pipe, and
        // count the refusals it logs.
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = refused.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("refused a delta") || line.contains("refused an equivocation proof") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Ok(Self { child, pid, address, peer, refused })
    }

    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Samples a process's resident memory every 50 ms, for as long as it lives.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Some(rss) = proc_status_opt(pid, "VmRSS:") else { return };
                sink.lock().expect("not poisoned").push((Instant::now(), rss));
            }
        });
        Self { samples }
    }

    /// The highest sample between `from` and `to`.
    fn peak(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples.lock().expect("not poisoned");
        samples.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, rss)| *rss).max().unwrap_or(0)
    }
}

/// What one kind of flood sent and got back.
#[derive(Default)]
struct Outcome {
    sent: usize,
    message_bytes: usize,
    served: u64,
    unavailable: u64,
    rss_middle: u64,
}

/// A peer of the run that floods the node.
struct Flooder {
    swarm: Swarm<Behaviour>,
    node: PeerId,
    in_flight: usize,
    served: u64,
    unavailable: u64,
    /// The root of the state the node offered, for chunk requests.
    root: Option<[u8; 32]>,
}

impl Flooder {
    async fn connect(seed: u8, spec: &RunSpec, address: Multiaddr, node: PeerId) -> Result<Self, BenchError> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let swarm = joined(&key, spec, address, Duration::from_secs(1)).await?;
        Ok(Self { swarm, node, in_flight: 0, served: 0, unavailable: 0, root: None })
    }

    async fn flood(&mut self, kind: FloodKind, messages: usize, spec: &RunSpec, pid: u32) -> Outcome {
        let give_up = Instant::now() + KIND_LIMIT;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7 + kind as u64);
        let mut outcome = Outcome::default();
        if kind == FloodKind::Chunk {
            self.ask_root(give_up).await;
        }
        let mut body = vec![0u8; spec.max_delta_bytes()];
        rng.fill(&mut body[..]);
        let mut attempt = 0u64;
        while outcome.sent < messages && Instant::now() < give_up {
            if outcome.sent == messages / 2 && outcome.rss_middle == 0 {
                outcome.rss_middle = rss(pid);
            }
            attempt += 1;
            let sent = match kind {
                FloodKind::Offer | FloodKind::Chunk => self.request(kind).await,
                _ => {
                    let (topic, bytes) = gossip_message(kind, attempt, spec, &mut body, &mut rng);
                    outcome.message_bytes = bytes.len();
                    // Distinct bytes for every attempt, so gossipsub's duplicate
                    // filter (which remembers even a publish that found its
                    // queues full) lets it through.
                    match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                        Ok(_) => true,
                        // Queues full or the node dropped us from its mesh: let the swarm run.
                        Err(_) => {
                            self.settle(Duration::from_millis(20)).await;
                            false
                        }
                    }
                }
            };
            if sent {
                outcome.sent += 1;
            }
            while let Some(Some(event)) = self.swarm.next().now_or_never() {
                self.on_event(event);
            }
        }
        // Wait for the answers still due.
        let until = Instant::now() + Duration::from_secs(30);
        while self.in_flight > 0 && Instant::now() < until {
            self.settle(Duration::from_millis(50)).await;
        }
        if outcome.rss_middle == 0 {
            outcome.rss_middle = rss(pid);
        }
        if matches!(kind, FloodKind::Offer | FloodKind::Chunk) {
            outcome.message_bytes = wire_size(kind);
        }
        outcome.served = self.served;
        outcome.unavailable = self.unavailable;
        outcome
    }

    /// Asks the node for an offer until it makes one, for the root that chunk
    /// requests name (a node still gathering peers offers nothing).
    async fn ask_root(&mut self, give_up: Instant) {
        while self.root.is_none() && Instant::now() < give_up {
            self.swarm.behaviour_mut().sync.send_request(&self.node, SyncRequest::Offer);
            self.in_flight += 1;
            let until = Instant::now() + Duration::from_secs(5);
            while self.in_flight > 0 && Instant::now() < until {
                self.settle(Duration::from_millis(20)).await;
            }
            if self.root.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        self.served = 0;
        self.unavailable = 0;
    }

    /// Sends one request once fewer than [`IN_FLIGHT`] are out.
    async fn request(&mut self, kind: FloodKind) -> bool {
        while self.in_flight >= IN_FLIGHT {
            match self.swarm.next().await {
                Some(event) => self.on_event(event),
                None => return false,
            }
        }
        let request = match (kind, self.root) {
            (FloodKind::Chunk, Some(root)) => SyncRequest::Chunk { root, index: 0 },
            (FloodKind::Chunk, None) => SyncRequest::Chunk { root: [0; 32], index: 0 },
            _ => SyncRequest::Offer,
        };
        self.swarm.behaviour_mut().sync.send_request(&self.node, request);
        self.in_flight += 1;
        true
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) = event else { return };
        match event {
            request_response::Event::Message { message, .. } => match message {
                // The node asks us for offers when a flood makes it think it is behind.
                request_response::Message::Request { channel, .. } => {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, SyncResponse::Unavailable);
                }
                request_response::Message::Response { response, .. } => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    match response {
                        SyncResponse::Offer(offer) => {
                            self.root = Some(offer.manifest.root());
                            self.served += 1;
                        }
                        SyncResponse::Chunk(_) => self.served += 1,
                        SyncResponse::Unavailable | SyncResponse::Noted => self.unavailable += 1,
                    }
                }
            },
            request_response::Event::OutboundFailure { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Runs the swarm for `time`.
    async fn settle(&mut self, time: Duration) {
        let until = tokio::time::Instant::now() + time;
        while let Ok(Some(event)) = tokio::time::timeout_at(until, self.swarm.next()).await {
            self.on_event(event);
        }
    }
}

/// A swarm of the run, connected to the node at `address` and subscribed to
/// the run's topics, once the node has told it it subscribes too, and then
/// `mesh` later (for gossip's mesh to form).
async fn joined(
    key: &ed25519_dalek::SigningKey,
    spec: &RunSpec,
    address: Multiaddr,
    mesh: Duration,
) -> Result<Swarm<Behaviour>, BenchError> {
    let mut registry = Default::default();
    let options = NetOptions { mdns: false, peer_discovery: false, ..Default::default() };
    let mut swarm = net::build_swarm(key, spec, &options, &mut registry).map_err(net_err)?;
    let topics = net::subscribe_run(&mut swarm, spec);
    swarm.dial(address).map_err(net_err)?;
    let delta_topic = topics.0.hash();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                topic,
                ..
            })) = swarm.select_next_some().await
            {
                if topic == delta_topic {
                    break;
                }
            }
        }
    })
    .await
    .map_err(|_| BenchError::Timeout("the node did not subscribe to the run topic"))?;
    let _ = tokio::time::timeout(mesh, async {
        loop {
            swarm.select_next_some().await;
        }
    })
    .await;
    Ok(swarm)
}

/// The `attempt`th gossip message of `kind`, on the topic it goes to.
fn gossip_message(
    kind: FloodKind,
    attempt: u64,
    spec: &RunSpec,
    body: &mut [u8],
    rng: &mut Xoshiro256PlusPlus,
) -> (gossipsub::IdentTopic, Vec<u8>) {
    let key = |salt: u8| {
        let mut secret = [salt; 32];
        secret[..8].copy_from_slice(&attempt.to_le_bytes());
        ed25519_dalek::SigningKey::from_bytes(&secret)
    };
    match kind {
        FloodKind::Junk => {
            body[..8].copy_from_slice(&attempt.to_le_bytes());
            (net::delta_topic(spec), body.to_vec())
        }
        FloodKind::Invalid => {
            let payload = random_payload(spec, rng);
            let delta = SignedDelta::sign(&key(1), RunId([7; 32]), 3, [0; 32], 1, spec.codec, payload);
            (net::delta_topic(spec), delta.to_bytes())
        }
        FloodKind::Far => {
            let payload = random_payload(spec, rng);
            let round = 1_000 + attempt % 64;
            let delta = SignedDelta::sign(&key(2), spec.run_id(), round, [0; 32], 1, spec.codec, payload);
            (net::delta_topic(spec), delta.to_bytes())
        }
        FloodKind::Equivocation => {
            let signer = key(3);
            let sign = |payload: Vec<u8>| {
                SignedDelta::sign(&signer, spec.run_id(), 5, [0; 32], 1, spec.codec, payload)
            };
            let (a, b) = (sign(vec![1; 8]), sign(vec![2; 8]));
            let proof = EquivocationProof::new(&a, &b).expect("two deltas of one key and round");
            (net::proof_topic(spec), proof.to_bytes())
        }
        FloodKind::Offer | FloodKind::Chunk | FloodKind::Churn => unreachable!("not gossip"),
    }
}

/// A valid payload of the run's codec with random parameters: every one distinct.
fn random_payload(spec: &RunSpec, rng: &mut Xoshiro256PlusPlus) -> Vec<u8> {
    let params: Vec<f32> = (0..spec.param_count()).map(|_| rng.random::<f32>() - 0.5).collect();
    spec.codec.encode(&params)
}

/// About the bytes of one request on the wire.
fn wire_size(kind: FloodKind) -> usize {
    let request = match kind {
        FloodKind::Chunk => SyncRequest::Chunk { root: [0; 32], index: 0 },
        _ => SyncRequest::Offer,
    };
    starling_protocol::wire::encode_sync_request(&request).len() + 4
}

/// `peers` peers connect one after another, subscribe to the run and leave.
async fn churn(spec: &RunSpec, address: &Multiaddr, peers: usize, pid: u32) -> Result<Outcome, BenchError> {
    let give_up = Instant::now() + KIND_LIMIT;
    let mut outcome = Outcome { message_bytes: 0, ..Outcome::default() };
    for i in 0..peers {
        if Instant::now() >= give_up {
            break;
        }
        if i == peers / 2 {
            outcome.rss_middle = rss(pid);
        }
        let mut secret = [0xC4; 32];
        secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        match joined(&key, spec, address.clone(), Duration::from_millis(100)).await {
            Ok(swarm) => {
                drop(swarm);
                outcome.sent += 1;
            }
            Err(e) => tracing::debug!(error = %e, "a churning peer did not join"),
        }
    }
    if outcome.rss_middle == 0 {
        outcome.rss_middle = rss(pid);
    }
    Ok(outcome)
}

fn rss(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status, in bytes (0 when unreadable).
fn proc_status(pid: u32, field: &str) -> u64 {
    proc_status_opt(pid, field).unwrap_or(0)
}

fn proc_status_opt(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
