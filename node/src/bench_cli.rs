//! `starling bench`: the benchmarks and reports that print figures, each a
//! subcommand that runs one of the benches in [`crate::bench`],
//! [`crate::bench_sync`] or [`crate::bench_codecs`] and prints its table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use starling_protocol::Codec;

use crate::{units::human_bytes, workload_cli::TrainBenchArgs};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Two peers on loopback exchange and average a delta of --params floats.
    Average {
        #[arg(long, default_value_t = 10_000_000)]
        params: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Codec of the deltas (dense, f16, int8, topk:F, topk:F+int8, sparse:K/C+2bit, sparse:K/C+4bit, lowrank:R).
        #[arg(long, default_value = "dense")]
        codec: Codec,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Deltas larger than this many bytes are announced and pulled, as
        /// `starling run --pull-above` sends them; 0 pulls every delta.
        #[arg(long, value_name = "BYTES", default_value_t = crate::net::DEFAULT_PULL_ABOVE)]
        pull_above: usize,
        /// Connect the two peers over QUIC instead of TCP.
        #[arg(long)]
        quic: bool,
    },
    /// Nodes train a model of --params parameters on loopback; a late joiner
    /// syncs their state in chunks. Prints its time to catch up and the bytes.
    Sync {
        #[arg(long, default_value_t = 1_000_000)]
        params: usize,
        /// Rounds the serving nodes train before the joiner starts.
        #[arg(long, default_value_t = 2)]
        rounds: u64,
        /// Serving nodes (the joiner needs two to agree when there are two or more).
        #[arg(long, default_value_t = 2)]
        peers: usize,
        /// Cap each serving node's upload, e.g. 2MiB/s.
        #[arg(long, value_name = "RATE")]
        max_upload: Option<crate::limits::Rate>,
        /// Cap the joiner's download, e.g. 2MiB/s.
        #[arg(long, value_name = "RATE")]
        max_download: Option<crate::limits::Rate>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Runs a spec as a local swarm once per codec and prints bytes,
    /// compression and accuracy (or held-out loss) against dense.
    Codecs(crate::bench_codecs::CodecsArgs),
    /// Peers flood a real `starling run` node with each kind of message (junk
    /// and invalid deltas of the largest size gossip accepts, valid deltas of
    /// far rounds, equivocation proofs, offer and chunk requests, peers that
    /// join and leave); prints the node's memory at the start, middle and end of each.
    Flood {
        /// Messages (or requests) of each kind; churn uses a tenth as many peers.
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Kinds to send, in order, comma-separated.
        #[arg(long, value_delimiter = ',', value_enum, default_values_t = crate::bench::FloodKind::ALL)]
        kinds: Vec<crate::bench::FloodKind>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Training speed of the node's trainer in samples per second (MLP or CNN).
    Train(TrainBenchArgs),
    /// One lone `starling run` node per model size, a few rounds each: peak
    /// memory against the parameters' bytes, time per round by kind of work,
    /// datadir size, and the signed delta it would publish each round.
    Scale {
        /// Model sizes, comma-separated: a parameter count (1e6, 2500000: an
        /// MLP of about that many) or a language-model preset (lm-tiny,
        /// lm-small, gpt2-small).
        #[arg(long, value_delimiter = ',', default_value = crate::bench::scale::DEFAULT_SIZES)]
        sizes: Vec<crate::bench::scale::Size>,
        /// Rounds each node trains.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
        /// Inner steps per round instead of the spec's (50 for the MLPs; 20, or 4 for gpt2-small).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        steps: Option<u32>,
        /// Delta codec instead of dense (the outer step follows it).
        #[arg(long)]
        codec: Option<Codec>,
        /// Text the language models train on (a file or a directory of them).
        #[arg(long, value_name = "PATH")]
        text: Option<PathBuf>,
        /// Each node writes a state file every N rounds (`starling run --checkpoint-every`).
        #[arg(long, default_value_t = 1)]
        checkpoint_every: u64,
        /// Print one JSON object per size instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Nodes train, merge and serve a model of --params parameters on loopback
    /// (a late joiner syncs from them); prints the longest time an event loop
    /// did not answer, by handler and by kind of heavy work.
    Stall {
        #[arg(long, default_value_t = 10_000_000)]
        params: usize,
        #[arg(long, default_value_t = 4)]
        rounds: u64,
        /// Nodes from the start (the late joiner comes besides).
        #[arg(long, default_value_t = 2)]
        peers: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `starling bench` subcommand.
pub async fn bench(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Average { params, rounds, codec, json, pull_above, quic } => {
            let exchange = crate::bench::Exchange { rounds, pull_above, quic };
            let report = crate::bench::average(params, codec, exchange).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "two peers, {} floats, {} ({} per delta, {} over {}): {:.3} s per round (min {:.3}, max {:.3}) over {} rounds",
                    report.params,
                    report.codec,
                    human_bytes(report.payload_bytes as f64),
                    report.transport,
                    report.connection,
                    report.mean_seconds,
                    report.min_seconds,
                    report.max_seconds,
                    report.rounds
                );
                println!(
                    "  encode+sign {:.3} s, transfer {:.3} s ({:.0} MB/s), verify {:.3} s, decode+merge {:.3} s",
                    report.encode_sign_seconds,
                    report.transfer_seconds,
                    report.transfer_mb_per_s,
                    report.verify_seconds,
                    report.merge_seconds
                );
            }
            Ok(())
        }
        BenchCommand::Flood { messages, kinds, json } => {
            let r = crate::bench::flood(messages, &kinds).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                println!("node memory (RSS) idle: {:.1} MiB", mib(r.rss_idle));
                println!(
                    "{:<13} {:>6} {:>8} {:>7} {:>7} {:>7} {:>8} | {:>8} {:>8} {:>8} {:>8} (MiB)",
                    "kind",
                    "sent",
                    "bytes",
                    "seconds",
                    "served",
                    "unavail",
                    "refused",
                    "start",
                    "middle",
                    "end",
                    "peak"
                );
                for k in &r.kinds {
                    println!(
                        "{:<13} {:>6} {:>8} {:>7.1} {:>7} {:>7} {:>8} | {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                        format!("{:?}", k.kind).to_lowercase(),
                        k.sent,
                        k.message_bytes,
                        k.seconds,
                        k.served,
                        k.unavailable,
                        k.refused_by_node,
                        mib(k.rss_start),
                        mib(k.rss_middle),
                        mib(k.rss_end),
                        mib(k.rss_peak)
                    );
                }
                println!("node memory high-water mark: {:.1} MiB", mib(r.rss_high_water));
            }
            Ok(())
        }
        BenchCommand::Sync { params, rounds, peers, max_upload, max_download, json } => {
            let limits = crate::net::throttle::BandwidthLimits {
                upload: max_upload.map(|r| r.bytes_per_second),
                download: max_download.map(|r| r.bytes_per_second),
            };
            let report = crate::bench_sync::sync(params, rounds, peers, limits).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "late joiner, {} params ({} of state) from {} peers: caught up to round {} in {:.2} s, received {}",
                    report.params,
                    human_bytes(report.state_bytes as f64),
                    report.serving_peers,
                    report.round,
                    report.catch_up_seconds,
                    human_bytes(report.received_bytes as f64)
                );
                println!(
                    "  {}/s received on average; the transfer alone {:.2} s, {:.0} MB/s",
                    human_bytes(report.received_bytes_per_second),
                    report.transfer_seconds,
                    report.transfer_bytes_per_second / 1e6
                );
            }
            Ok(())
        }
        BenchCommand::Codecs(args) => crate::bench_codecs::codecs(args).await,
        BenchCommand::Train(args) => crate::workload_cli::bench_train(args),
        BenchCommand::Scale { sizes, rounds, steps, codec, text, checkpoint_every, json } => {
            let options =
                crate::bench::scale::ScaleOptions { sizes, rounds, steps, codec, text, checkpoint_every };
            if !json {
                println!("{}", crate::bench::scale::table_header());
            }
            // Each node runs for seconds to minutes: rows are printed as they come.
            tokio::task::spawn_blocking(move || {
                crate::bench::scale::scale(&options, |row| {
                    if json {
                        println!("{}", serde_json::to_string(row).expect("a row serializes"));
                    } else {
                        println!("{}", row.table_line());
                    }
                })
            })
            .await??;
            Ok(())
        }
        BenchCommand::Stall { params, rounds, peers, json } => {
            let r = crate::bench::stall(params, rounds, peers).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} nodes and a late joiner (installed round {}), {} params, {} rounds: longest event-loop stall {:.3} s (in the {} handler; {:.3} s of CPU at most), longest watchdog lag {:.3} s",
                    r.peers,
                    r.joiner_installed.map_or_else(|| "none".to_string(), |r| r.to_string()),
                    r.params,
                    r.rounds,
                    r.longest_stall_seconds,
                    r.longest_stall_arm,
                    r.longest_stall_cpu_seconds,
                    r.longest_lag_seconds
                );
                println!("event-loop handlers:");
                for (arm, t) in &r.handlers {
                    println!(
                        "  {arm:<20} {:>6} x  mean {:.4} s  max {:.4} s  max CPU {:.4} s",
                        t.count,
                        t.mean_seconds(),
                        t.max_seconds,
                        t.max_cpu_seconds
                    );
                }
                println!("heavy work:");
                for (kind, t) in &r.work {
                    println!(
                        "  {kind:<20} {:>6} x  mean {:.4} s  max {:.4} s",
                        t.count,
                        t.mean_seconds(),
                        t.max_seconds
                    );
                }
            }
            Ok(())
        }
    }
}
