//! `starling bench sync`: how long a late joiner takes to catch up. Real node
//! stacks in one process over TCP loopback: `--peers` nodes train `--rounds`
//! rounds of a model of about `--params` parameters and keep serving; then a
//! new node joins, fetches their state in chunks (verified against what at
//! least two of them announce) and installs it. The figure runs from the
//! joiner's start to the installed state, and counts the bytes it received.
//! `limits` caps the serving nodes' upload and the joiner's download (see
//! [`crate::net::throttle`]), to see a capped node's throughput.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use serde::Serialize;
use starling_protocol::{keys::node_key, RunSpec};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    net::{throttle::BandwidthLimits, NetOptions},
    node::{run_node_with, HarnessHooks, NodeError, NodeEvent, NodeOptions, NodeOutcome},
};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum SyncBenchError {
    #[error("--params must be at least 1000, got {0}")]
    TooFewParams(usize),
    #[error("--peers must be at least 1, got 0")]
    NoPeers,
    #[error("cannot make a temporary datadir: {0}")]
    Datadir(std::io::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("a node stopped early: {0}")]
    NodeStopped(String),
}

/// The catch-up of one late joiner.
#[derive(Clone, Debug, Serialize)]
pub struct SyncReport {
    pub params: usize,
    /// Bytes of the encoded state (parameters and momentum).
    pub state_bytes: u64,
    pub serving_peers: usize,
    /// The round the joiner installed.
    pub round: u64,
    /// From the joiner's start to the installed state: connecting, offers, chunks, verifying, saving.
    pub catch_up_seconds: f64,
    /// Transport bytes the joiner received until then (offers, chunks, gossip, framing).
    pub received_bytes: u64,
    /// `received_bytes / catch_up_seconds`.
    pub received_bytes_per_second: f64,
    /// The transfer alone: from choosing the state to its last chunk verified.
    pub transfer_seconds: f64,
    /// `state_bytes / transfer_seconds`.
    pub transfer_bytes_per_second: f64,
    /// The serving nodes' upload cap and the joiner's download cap, bytes per second.
    pub max_upload: Option<u64>,
    pub max_download: Option<u64>,
}

/// A spec with two hidden layers whose model has about `params` parameters,
/// one short inner step per round (training is not what is measured).
pub(crate) fn spec_for(params: usize) -> RunSpec {
    let mut spec = RunSpec::builtin();
    spec.name = format!("bench-sync-{params}");
    let hidden = ((params as f64).sqrt() as usize).clamp(2, 65_536);
    spec.model = starling_protocol::spec::ModelSpec::mlp(vec![32, hidden, hidden, 10]);
    spec.inner.steps = 1;
    spec.dataset.samples_per_node = 256;
    spec.dataset.eval_samples = 64;
    spec
}

const TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the benchmark.
pub async fn sync(
    params: usize,
    rounds: u64,
    peers: usize,
    limits: BandwidthLimits,
) -> Result<SyncReport, SyncBenchError> {
    if params < 1000 {
        return Err(SyncBenchError::TooFewParams(params));
    }
    if peers == 0 {
        return Err(SyncBenchError::NoPeers);
    }
    let spec = spec_for(params);
    let dir = tempfile::tempdir().map_err(SyncBenchError::Datadir)?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = |i: usize, bootnodes: Vec<_>, wait_peers| {
        // Serving nodes send under the upload cap; the joiner receives under the download cap.
        let bandwidth = if i < peers {
            BandwidthLimits { upload: limits.upload, download: None }
        } else {
            BandwidthLimits { upload: None, download: limits.download }
        };
        NodeOptions {
            datadir: dir.path().join(format!("node-{i}")),
            spec: spec.clone(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid address")],
            bootnodes,
            net: NetOptions { mdns: false, bandwidth, ..NetOptions::default() },
            wait_peers,
            wait_timeout: Duration::from_secs(60),
            rounds: Some(rounds),
            key: Some(node_key(0x5379_6e63, i)),
            evaluate: false,
            evaluate_every: 1,
            checkpoint_every: 1,
            data: Default::default(),
        }
    };
    let hooks = HarnessHooks { linger_until_shutdown: true, ..HarnessHooks::default() };
    let mut addresses = Vec::new();
    let mut handles = Vec::new();
    for i in 0..peers {
        let node = options(i, addresses.clone(), peers - 1);
        let started = start_listening(node, &hooks, &events_tx, &stop_rx, &mut events);
        let (handle, address) = tokio::time::timeout(TIMEOUT, started)
            .await
            .map_err(|_| SyncBenchError::Timeout(TIMEOUT, "a serving node to listen"))?;
        handles.push(handle);
        addresses.push(address.ok_or_else(|| SyncBenchError::NodeStopped("before it listened".into()))?);
    }
    // Wait until every serving node holds the state of `rounds`.
    let mut done = 0;
    while done < peers {
        if let NodeEvent::Round(report) = next(&mut events, "the serving nodes to train").await? {
            if report.round + 1 == rounds {
                done += 1;
            }
        }
    }
    let started = Instant::now();
    handles.push(tokio::spawn(run_node_with(
        options(peers, addresses.clone(), peers),
        hooks,
        Some(events_tx.clone()),
        stop_rx.clone(),
    )));
    let report = loop {
        if let NodeEvent::StateInstalled { round, traffic, fetch_seconds, .. } =
            next(&mut events, "the joiner to sync").await?
        {
            let catch_up_seconds = started.elapsed().as_secs_f64();
            // After the clock: this encodes a whole state.
            let state = starling_protocol::ModelState::initial(vec![0.0; spec.param_count()]);
            let layout = starling_protocol::state_file::Layout::flat(spec.param_count());
            let state_bytes = starling_protocol::state_file::encode_state(&layout, &state).len() as u64;
            break SyncReport {
                params: spec.param_count(),
                state_bytes,
                serving_peers: peers,
                round,
                catch_up_seconds,
                received_bytes: traffic.received,
                received_bytes_per_second: traffic.received as f64 / catch_up_seconds,
                transfer_seconds: fetch_seconds.unwrap_or(f64::NAN),
                transfer_bytes_per_second: state_bytes as f64 / fetch_seconds.unwrap_or(f64::NAN),
                max_upload: limits.upload,
                max_download: limits.download,
            };
        }
    };
    let _ = stop_tx.send(true);
    for handle in handles {
        match handle.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(SyncBenchError::NodeStopped(e.to_string())),
            Err(e) => return Err(SyncBenchError::NodeStopped(e.to_string())),
        }
    }
    Ok(report)
}

/// Spawns a node and waits for its first listen address (`None`: every node
/// stopped first), passing over the other events meanwhile.
pub(crate) async fn start_listening(
    options: NodeOptions,
    hooks: &HarnessHooks,
    events_tx: &mpsc::UnboundedSender<NodeEvent>,
    stop: &watch::Receiver<bool>,
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
) -> (JoinHandle<Result<NodeOutcome, NodeError>>, Option<Multiaddr>) {
    let handle = tokio::spawn(run_node_with(options, hooks.clone(), Some(events_tx.clone()), stop.clone()));
    loop {
        match events.recv().await {
            Some(NodeEvent::Listening { address, .. }) => return (handle, Some(address)),
            Some(_) => {}
            None => return (handle, None),
        }
    }
}

async fn next(
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    what: &'static str,
) -> Result<NodeEvent, SyncBenchError> {
    match tokio::time::timeout(TIMEOUT, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(SyncBenchError::NodeStopped(format!("while waiting for {what}"))),
        Err(_) => Err(SyncBenchError::Timeout(TIMEOUT, what)),
    }
}
