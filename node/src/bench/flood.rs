//! `starling bench flood`: a peer floods a real `starling run` process with
//! malformed messages of the largest size the run's gossip accepts, and the
//! node's resident memory is read from /proc before, at its peak and after.
//! Malformed messages of the largest frame are the worst a peer can send:
//! anything bigger is refused by gossipsub's framing before it is read.

use std::{process::Stdio, time::Duration, time::Instant};

use futures::{FutureExt, StreamExt};
use libp2p::{gossipsub, swarm::SwarmEvent, Multiaddr};
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use serde::Serialize;
use starling_protocol::RunSpec;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::BenchError;
use crate::net::{self, BehaviourEvent, NetOptions};

/// What a flood did to the node's memory.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    pub messages: usize,
    pub message_bytes: usize,
    pub seconds: f64,
    /// Resident memory of the node before the flood, at its peak (VmHWM,
    /// since start) and after it, in bytes.
    pub rss_before: u64,
    pub rss_peak: u64,
    pub rss_after: u64,
    /// Messages the node logged as refused (those that reached it).
    pub refused_by_node: u64,
}

/// Floods a fresh node of the built-in run with `messages` malformed messages.
pub async fn flood(messages: usize) -> Result<FloodReport, BenchError> {
    let net_err = |e: &dyn std::fmt::Display| BenchError::Net(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| net_err(&e))?;
    let mut spec = RunSpec::builtin();
    spec.name = "bench-flood".into();
    let spec_path = dir.path().join("spec.toml");
    std::fs::write(&spec_path, spec.to_toml()).map_err(|e| net_err(&e))?;
    let exe = std::env::current_exe().map_err(|e| net_err(&e))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("run")
        .arg("--datadir")
        .arg(dir.path().join("node"))
        .arg("--spec")
        .arg(&spec_path)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-http"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| net_err(&e))?;
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
    // Keep draining the node's log so it never blocks on a full pipe, and
    // count the refusals it logs.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("refused a delta") {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    let mut registry = Default::default();
    let key = ed25519_dalek::SigningKey::from_bytes(&[0xF1; 32]);
    let mut flooder =
        net::build_swarm(&key, &spec, &NetOptions { mdns: false, ..Default::default() }, &mut registry)
            .map_err(|e| net_err(&e))?;
    let topic = net::delta_topic(&spec);
    flooder.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| net_err(&e))?;
    flooder.dial(address).map_err(|e| net_err(&e))?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                topic: t,
                ..
            })) = flooder.select_next_some().await
            {
                if t == topic.hash() {
                    break;
                }
            }
        }
    })
    .await
    .map_err(|_| BenchError::Timeout("the node did not subscribe to the run topic"))?;
    settle(&mut flooder, Duration::from_secs(2)).await;
    let rss_before = proc_status(pid, "VmRSS:").unwrap_or(0);

    let message_bytes = spec.max_delta_bytes();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut body = vec![0u8; message_bytes];
    rng.fill(&mut body[..]);
    let start = Instant::now();
    let (mut sent, mut attempts) = (0, 0u64);
    let give_up = start + Duration::from_secs(300);
    while sent < messages && Instant::now() < give_up {
        // Distinct bytes for every attempt, so gossipsub's duplicate filter
        // (which remembers even a publish that found its queues full) lets it through.
        attempts += 1;
        body[..8].copy_from_slice(&attempts.to_le_bytes());
        match flooder.behaviour_mut().gossipsub.publish(topic.clone(), body.clone()) {
            Ok(_) => sent += 1,
            // Queues full or the node dropped us from its mesh: let the swarm run.
            Err(_) => settle(&mut flooder, Duration::from_millis(20)).await,
        }
        while let Some(Some(_)) = flooder.next().now_or_never() {}
    }
    settle(&mut flooder, Duration::from_secs(3)).await;
    let seconds = start.elapsed().as_secs_f64();
    let report = FloodReport {
        messages: sent,
        message_bytes,
        seconds,
        rss_before,
        rss_peak: proc_status(pid, "VmHWM:").unwrap_or(0),
        rss_after: proc_status(pid, "VmRSS:").unwrap_or(0),
        refused_by_node: refused.load(std::sync::atomic::Ordering::Relaxed),
    };
    let _ = child.kill().await;
    Ok(report)
}

/// Runs the swarm for `time`.
async fn settle(swarm: &mut libp2p::Swarm<net::Behaviour>, time: Duration) {
    let _ = tokio::time::timeout(time, async {
        loop {
            swarm.select_next_some().await;
        }
    })
    .await;
}

/// A `kB` field of /proc/PID/status, in bytes.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
