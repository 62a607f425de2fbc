//! Live mode at scale: N real node stacks in one process over libp2p's in-memory
//! transport, with every node's figures collected round by round; then wall time,
//! peak memory (VmHWM) and an estimate of where the CPU time went.
//!
//! `cargo run --release -p starling-node --example live_swarm -- --nodes 200 --rounds 3 --steps 10`

use std::{collections::BTreeMap, time::Instant};

use clap::{Parser, ValueEnum};
use starling_node::local_swarm::{run_swarm, Bootstrap, Evaluate, Membership, NodeRound, SwarmOptions};
use starling_protocol::{consensus_distance, round::CloseReason, RunSpec};
use starling_training::{data::SyntheticTask, trainer::Trainer};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Inner steps per round (the built-in spec has 50).
    #[arg(long, default_value_t = 10)]
    steps: u32,
    /// Nodes that evaluate after every merge (the first N).
    #[arg(long, default_value_t = 10)]
    evaluated: usize,
    /// Held-out samples (the built-in spec has 4096).
    #[arg(long, default_value_t = 4096)]
    eval_samples: usize,
    /// Earlier nodes each node dials besides node 0; 0 for a full mesh.
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    #[arg(long, value_enum, default_value_t = MembershipArg::Roster)]
    membership: MembershipArg,
    /// Let Kademlia connect nodes beyond the bootstrap graph, as `starling run` does.
    #[arg(long)]
    discovery: bool,
    /// Round deadline in seconds.
    #[arg(long, default_value_t = 120)]
    deadline: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MembershipArg {
    Discovered,
    Roster,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut spec = RunSpec::builtin();
    spec.name = format!("live-swarm-{}", args.nodes);
    spec.inner.steps = args.steps;
    spec.dataset.eval_samples = args.eval_samples;
    spec.round.deadline_ms = args.deadline * 1000;
    let (train_seconds, eval_seconds) = time_one_node(&spec)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "live swarm: {} nodes, {} rounds, {} steps/round, {} params, fanout {}, membership {:?}, discovery {}, {} evaluating on {} samples, {cores} cores",
        args.nodes,
        args.rounds,
        args.steps,
        spec.param_count(),
        args.fanout,
        args.membership,
        args.discovery,
        args.evaluated.min(args.nodes),
        args.eval_samples,
    );
    println!(
        "one node alone: train_round {:.3}s, evaluate {:.3}s  =>  >= {:.1}s of CPU per round for the swarm ({:.1}s wall on {cores} cores)",
        train_seconds,
        eval_seconds,
        cpu_per_round(&args, train_seconds, eval_seconds),
        cpu_per_round(&args, train_seconds, eval_seconds) / cores as f64,
    );

    let (rounds_tx, mut rounds_rx) = mpsc::unbounded_channel();
    let options = SwarmOptions {
        bootstrap: if args.fanout == 0 {
            Bootstrap::FullMesh
        } else {
            Bootstrap::Sparse { fanout: args.fanout }
        },
        membership: match args.membership {
            MembershipArg::Discovered => Membership::Discovered,
            MembershipArg::Roster => Membership::Roster,
        },
        peer_discovery: args.discovery,
        evaluate: Evaluate::FirstNodes(args.evaluated),
        rounds_tx: Some(rounds_tx),
        report_params: true,
        quiet: false,
        progress_to_stderr: true,
        ..SwarmOptions::live(args.nodes, args.rounds, spec)
    };
    let wall = Instant::now();
    let collector = tokio::spawn(async move {
        let mut by_round: BTreeMap<u64, Vec<NodeRound>> = BTreeMap::new();
        while let Some(report) = rounds_rx.recv().await {
            by_round.entry(report.round).or_default().push(report);
        }
        by_round
    });
    let summary = run_swarm(options).await?;
    let wall_seconds = wall.elapsed().as_secs_f64();
    let by_round = collector.await?;

    println!(
        "| round | nodes | merged min/mean/max | deadline closes | first..last merge (s) | accuracy | consensus | identical | sent/node | recv/node |"
    );
    println!("| ---: | ---: | --- | ---: | --- | ---: | ---: | --- | ---: | ---: |");
    let mut previous: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (round, reports) in &by_round {
        let n = reports.len() as f64;
        let merged: Vec<usize> = reports.iter().map(|r| r.merged).collect();
        let deadline = reports.iter().filter(|r| r.reason == CloseReason::Deadline).count();
        let first = reports.iter().map(|r| r.elapsed.as_secs_f64()).fold(f64::INFINITY, f64::min);
        let last = reports.iter().map(|r| r.elapsed.as_secs_f64()).fold(0.0, f64::max);
        let accs: Vec<f32> = reports.iter().filter_map(|r| r.accuracy).collect();
        let params: Vec<&[f32]> =
            reports.iter().filter_map(|r| r.params.as_deref().map(Vec::as_slice)).collect();
        let (mut sent, mut received) = (0u64, 0u64);
        for r in reports {
            let (s0, r0) = previous.insert(r.node, (r.bytes_sent, r.bytes_received)).unwrap_or_default();
            sent += r.bytes_sent - s0;
            received += r.bytes_received - r0;
        }
        println!(
            "| {} | {} | {}/{:.1}/{} | {deadline} | {first:.1}..{last:.1} | {:.2}% | {:.2e} | {} | {} | {} |",
            round + 1,
            reports.len(),
            merged.iter().min().unwrap_or(&0),
            merged.iter().sum::<usize>() as f64 / n,
            merged.iter().max().unwrap_or(&0),
            accs.iter().sum::<f32>() / accs.len().max(1) as f32 * 100.0,
            consensus_distance(&params),
            // Bit-identical parameters: every node merged the same deltas.
            if params.iter().all(|p| *p == params[0]) { "yes" } else { "no" },
            starling_node::units::human_bytes(sent as f64 / n),
            starling_node::units::human_bytes(received as f64 / n),
        );
    }
    println!(
        "wall {wall_seconds:.1}s (rounds {:.1}s, setup and summary {:.1}s); final accuracy mean {:.2}% min {:.2}%; consensus {:.2e}; peak RSS (VmHWM) {}",
        summary.swarm_seconds,
        wall_seconds - summary.swarm_seconds,
        summary.mean_accuracy * 100.0,
        summary.min_accuracy * 100.0,
        summary.consensus_distance,
        peak_rss().unwrap_or_else(|| "unknown".into()),
    );
    Ok(())
}

/// Seconds one node takes, alone on one thread, to train one round and to evaluate once.
fn time_one_node(spec: &RunSpec) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let task = SyntheticTask::new(spec)?;
    let mut trainer = Trainer::new(spec, task.shard(1, spec.dataset.samples_per_node), 1)?;
    let start = starling_training::models::initial_params(&spec.model, spec.seed)?;
    trainer.train_round(&start, spec.inner.steps)?; // warm-up
    let t = Instant::now();
    let outcome = trainer.train_round(&start, spec.inner.steps)?;
    let train = t.elapsed().as_secs_f64();
    let eval_set = task.eval_set().into();
    let t = Instant::now();
    trainer.evaluate(&outcome.params, &eval_set)?;
    Ok((train, t.elapsed().as_secs_f64()))
}

fn cpu_per_round(args: &Args, train: f64, eval: f64) -> f64 {
    args.nodes as f64 * train + args.evaluated.min(args.nodes) as f64 * eval
}

/// The process's peak resident set size, from /proc/self/status.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l["VmHWM:".len()..].trim().to_string())
}
