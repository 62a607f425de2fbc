//! The `starling` command line: one clap-derive struct per concern, resolved
//! into node options. Errors name the flag or file that fixes them.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use libp2p::Multiaddr;
use starling_protocol::{AggregationRule, Codec, RunSpec};
use tokio::sync::watch;

pub use crate::bench_cli::BenchCommand;
use crate::{
    config::ConfigError,
    local_swarm::{run_swarm, SwarmOptions},
    net::NetOptions,
    node::{DataOptions, NodeOptions},
    operator_cli::{DatadirArg, ExportArgs, KeyCommand, SpecSource},
    units::human_bytes,
    workload_cli::{BaselineArgs, DataCommand, WorkloadArgs},
};

pub use crate::logging::LogArgs;

/// Starling: train one model together across machines, with no coordinator.
#[derive(Debug, Parser)]
#[command(name = "starling", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a datadir: node key and a commented config.toml (keeps what exists).
    Init(DatadirArg),
    /// Run one node of a swarm.
    Run(RunArgs),
    /// The node's identity key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Write the node's current model (its newest checkpoint) to a file.
    Export(ExportArgs),
    /// The resolved options of `run` (flags, environment, config.toml, defaults).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a local swarm of N nodes in one process over loopback and report how it trained.
    Swarm(SwarmArgs),
    /// Create and inspect run specs.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Benchmarks and reports that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train the spec's model alone on all the data the swarm's nodes would
    /// share, for as many steps as all of them together: the centralized baseline.
    Baseline(BaselineArgs),
    /// Generate data sets: procedurally drawn glyphs (IDX), a text corpus.
    #[command(subcommand)]
    Data(DataCommand),
    /// Ask a running node (its HTTP API) what it is doing: state, round, loss, peers, traffic.
    Status(crate::http::client::StatusArgs),
    /// Pause a running node's training: it keeps following the run (merging
    /// peers' deltas, serving state, relaying gossip) but publishes no deltas.
    Pause(crate::http::client::NodeApiArgs),
    /// Resume a paused node's training.
    Resume(crate::http::client::NodeApiArgs),
    /// Read a datadir offline: run, round, parameter hash, checkpoints, health.
    /// Exits with status 1 when the datadir is not healthy.
    Inspect {
        #[arg(long, env = "STARLING_DATADIR")]
        datadir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `starling run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory for this node's identity, spec, config.toml and checkpoints
    /// (default: $XDG_DATA_HOME/starling, or ~/.local/share/starling).
    #[arg(long, env = "STARLING_DATADIR")]
    pub datadir: Option<PathBuf>,
    /// The run spec (TOML) of the swarm to join. Defaults to the spec stored in --datadir.
    #[arg(long, env = "STARLING_SPEC")]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub reach: crate::net_cli::ReachArgs,
    /// Stop after the swarm reaches this round.
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Evaluate on the held-out split as rounds merge (logged): every round
    /// when that is cheap or costs at most 5 % of a round's training, else
    /// every few rounds (see --evaluate-every), and always the last round.
    #[arg(long)]
    pub evaluate: bool,
    /// With --evaluate, evaluate every N merged rounds (and the last). When
    /// absent, N is 1 for a cheap evaluation (under about 10⁹ operations, as
    /// with the built-in spec), else chosen from the spec so that evaluation
    /// costs about 5 % of the training: 4096 held-out samples cost about a
    /// third of 50 steps of 64 (see docs/scale.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub evaluate_every: Option<u64>,
    /// Checkpoint the state every N merged rounds instead of every round, to
    /// spare the disk with big models. A kill -9 then loses up to N-1 rounds of
    /// this node's state (never its word: see docs/checkpoints.md); a clean
    /// stop checkpoints the last round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// When the node stops, write what it did (rounds, bytes published, seconds
    /// of training, encoding, merging, checkpoints, evaluation) to FILE as one JSON object.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Train on shard INDEX of COUNT (e.g. 2/8) of the data; the whole data set when absent.
    #[arg(long)]
    pub shard: Option<starling_training::datasets::Shard>,
    /// Where each option came from; filled in by [`parse_from`].
    #[arg(skip)]
    pub provenance: crate::config::Provenance,
    #[command(flatten)]
    pub http: crate::http::HttpArgs,
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

/// Networking.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Addresses to listen on.
    #[arg(long, value_delimiter = ',', default_values_t = default_listen())]
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to first, e.g. /ip4/1.2.3.4/tcp/9000/p2p/12D3Koo...
    #[arg(long, value_delimiter = ',', env = "STARLING_BOOTNODES")]
    pub bootnodes: Vec<Multiaddr>,
    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Wait for this many peers of the run before the first round.
    #[arg(long, default_value_t = 0)]
    pub wait_peers: usize,
    /// Give up waiting for --wait-peers after this many seconds and train with whoever is there.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout: u64,
    /// Keep this many peers of the run connected: below it, the node dials its
    /// bootnodes and the run peers it knew again, waiting longer after each
    /// failure (1 s, doubling, up to a minute). 0 turns redialling off.
    #[arg(long, default_value_t = crate::net::upkeep::DEFAULT_TARGET_PEERS)]
    pub target_peers: usize,
    /// Deltas larger than this many bytes are announced on gossip and their
    /// payload fetched from the peer that forwarded the announcement, once per
    /// node; smaller ones travel whole on gossip.
    #[arg(long, value_name = "BYTES", default_value_t = crate::net::DEFAULT_PULL_ABOVE)]
    pub pull_above: usize,
}

fn default_listen() -> Vec<Multiaddr> {
    vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid"), "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid")]
}

/// `starling swarm`.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Rounds to train.
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Print exactly one JSON object with the run's figures on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run spec (TOML); the built-in task by default.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Keep node datadirs here instead of a temporary directory.
    #[arg(long)]
    pub datadir: Option<PathBuf>,
    /// Seeds the node identities (and so their data shards).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Deltas larger than this many bytes travel apart from gossip (see `starling run --pull-above`).
    #[arg(long, value_name = "BYTES", default_value_t = crate::net::DEFAULT_PULL_ABOVE)]
    pub pull_above: usize,
    /// Overrides the spec's delta codec: dense, f16, int8, topk:F, topk:F+int8,
    /// sparse:K/C+2bit, sparse:K/C+4bit or lowrank:R.
    /// With the built-in spec, the outer step changes to the one that suits the
    /// codec (`OuterSpec::for_codec`); a --spec file keeps its own.
    #[arg(long)]
    pub codec: Option<Codec>,
    /// Overrides the spec's aggregation rule: weighted-mean, median,
    /// trimmed-mean[:TRIM], centered-clip[:RADIUS] or geometric-median.
    #[arg(long)]
    pub aggregation: Option<AggregationRule>,
    /// Skip the centralized baseline (one model trained on every node's data
    /// for as many steps as the swarm together), which costs as much time as
    /// the swarm; its figures are then left out (null in --json).
    #[arg(long)]
    pub no_baseline: bool,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the options `starling run` would use, as TOML, each with where it
    /// came from: flag, environment, config.toml or default. Takes run's flags.
    Dump(RunArgs),
}

/// The `starling` command with the environment layer added to the options of `run`.
pub fn command() -> clap::Command {
    crate::config::with_env_layer(Cli::command())
}

/// Parses the command line with every layer applied: flags, `STARLING_*`
/// variables, the datadir's config.toml, defaults.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let (matches, provenance) = crate::config::parse_layered(command(), args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Some(provenance) = provenance {
        match &mut cli.command {
            Command::Run(args) | Command::Config(ConfigCommand::Dump(args)) => args.provenance = provenance,
            _ => {}
        }
    }
    Ok(cli)
}

#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Write the built-in spec as TOML, to start a new swarm.
    New {
        /// Where to write it; stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Delta codec; the outer step is set to the one that suits it.
        #[arg(long, default_value = "dense")]
        codec: Codec,
        /// Aggregation rule (the default is centered clipping).
        #[arg(long)]
        aggregation: Option<AggregationRule>,
        /// Make a private run that only this key may join (repeatable): an
        /// ed25519 public key as 64 hex digits, or a peer id (12D3KooW...) as
        /// `starling run` logs it and `starling inspect` prints it.
        #[arg(long = "allow", value_name = "KEY")]
        allow: Vec<String>,
        /// Like --allow, for every key in FILE: one per line; blank lines and
        /// lines starting with # are skipped.
        #[arg(long, value_name = "FILE")]
        allowed_keys: Option<PathBuf>,
        /// Make a private network: write a new swarm.key beside --out (or in the
        /// current directory) and record its fingerprint, so nodes refuse to run
        /// the spec without that key.
        #[arg(long)]
        private: bool,
        /// Like --private, with an existing swarm key (kubo's swarm.key format).
        #[arg(long, value_name = "FILE")]
        swarm_key: Option<PathBuf>,
        #[command(flatten)]
        model: crate::lm_spec::SpecModelArgs,
    },
    /// Print a spec as TOML, its run id first.
    Show(SpecSource),
    /// Print the run id of a spec.
    Hash(SpecSource),
}

/// The hex keys of `--allow` and `--allowed-keys`, sorted and deduplicated;
/// `None` when neither lists any (a public run).
fn allowed_key_list(mut keys: Vec<String>, file: Option<&std::path::Path>) -> Result<Option<Vec<String>>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the --allowed-keys file {}", path.display()))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
    }
    let mut parsed = std::collections::BTreeSet::new();
    for key in &keys {
        parsed.insert(parse_allowed_key(key)?);
    }
    Ok((!parsed.is_empty()).then(|| parsed.iter().map(|k| k.to_string()).collect()))
}

/// A node key given as 64 hex digits or as a peer id.
fn parse_allowed_key(text: &str) -> Result<starling_protocol::PublicKey> {
    if let Ok(peer) = text.parse::<libp2p::PeerId>() {
        return crate::net::peer_key(&peer).with_context(|| {
            format!("peer id {text} does not hold an ed25519 key (--allow / --allowed-keys)")
        });
    }
    starling_protocol::PublicKey::from_hex(text).map_err(|e| anyhow::anyhow!("--allow / --allowed-keys: {e}"))
}

/// Runs the parsed command.
pub async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Swarm(args) => swarm(args).await,
        Command::Bench(command) => crate::bench_cli::bench(command).await,
        Command::Status(args) => Ok(crate::http::client::status(args).await?),
        Command::Pause(args) => Ok(crate::http::client::set_paused(args, true).await?),
        Command::Resume(args) => Ok(crate::http::client::set_paused(args, false).await?),
        Command::Baseline(args) => crate::workload_cli::baseline(args),
        Command::Data(command) => crate::workload_cli::data(command),
        Command::Inspect { datadir, json } => {
            let inspection = crate::inspect::inspect(&datadir)?;
            if json {
                println!("{}", serde_json::to_string(&inspection)?);
            } else {
                println!("{inspection}");
            }
            if !inspection.healthy {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Spec(SpecCommand::New {
            out,
            codec,
            aggregation,
            allow,
            allowed_keys,
            private,
            swarm_key,
            model,
        }) => {
            let mut spec = RunSpec::builtin_with_codec(codec);
            model.apply(&mut spec, out.as_deref())?;
            spec.aggregation = aggregation.unwrap_or(spec.aggregation);
            spec.allowed_keys = allowed_key_list(allow, allowed_keys.as_deref())?;
            spec.swarm_key_fingerprint =
                crate::net_cli::spec_swarm_key(private, swarm_key.as_deref(), out.as_deref())?;
            let text = spec.to_toml();
            match out {
                Some(path) => {
                    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Spec(SpecCommand::Show(source)) => crate::operator_cli::spec_show(&source),
        Command::Spec(SpecCommand::Hash(source)) => crate::operator_cli::spec_hash(&source),
        Command::Init(datadir) => {
            crate::operator_cli::init(&datadir, &crate::config::commented_defaults(&command()))
        }
        Command::Key(command) => crate::operator_cli::key(&command).await,
        Command::Export(args) => crate::operator_cli::export(&args).await,
        Command::Config(ConfigCommand::Dump(args)) => {
            crate::operator_cli::config_dump(&args.provenance);
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let datadir = crate::dirs::Datadir::resolve(args.datadir.as_deref());
    // A first run with --spec may create the datadir; without one it must exist.
    match &args.spec {
        Some(_) => drop(datadir.create()?),
        None => datadir.require()?,
    }
    let _lock = datadir.lock()?;
    let summary = args.summary.clone();
    let spec = match &args.spec {
        Some(path) => crate::spec_file::load_spec(path)?,
        None => {
            let store = starling_storage::Store::open(datadir.root())?;
            match store.spec()? {
                Some(spec) => spec,
                None => bail!(
                    "the datadir {} holds no run spec yet; pass --spec FILE (create one with `starling spec new`)",
                    datadir.root().display()
                ),
            }
        }
    };
    let spec = args.workload.apply(spec)?;
    let device = args.workload.device.device()?;
    args.limits.apply_threads()?;
    let http = match args.http.address() {
        Some(addr) => Some(crate::http::bind(addr).await?),
        None => None,
    };
    let (mut net, mut listen, mut bootnodes) = (
        NetOptions {
            mdns: !args.network.no_mdns,
            bandwidth: args.limits.bandwidth(),
            target_peers: args.network.target_peers,
            pull_above: args.network.pull_above,
            ..NetOptions::default()
        },
        args.network.listen,
        args.network.bootnodes,
    );
    args.reach.apply(datadir.root(), &spec, &mut net, &mut listen, &mut bootnodes)?;
    let evaluate_every = args.evaluate_every.unwrap_or_else(|| {
        let every = crate::node::auto_evaluate_every(&spec);
        if args.evaluate && every > 1 {
            tracing::info!(
                every,
                cost_share = crate::node::evaluation_cost_share(&spec),
                "one evaluation of the held-out split costs about this share of a round's training: \
                 evaluating every {every} rounds and the last (--evaluate-every 1 for every round)"
            );
        }
        every
    });
    let options = NodeOptions {
        datadir: datadir.root().to_path_buf(),
        spec,
        listen,
        bootnodes,
        net,
        wait_peers: args.network.wait_peers,
        wait_timeout: Duration::from_secs(args.network.wait_timeout),
        rounds: args.rounds,
        key: None,
        evaluate: args.evaluate,
        evaluate_every,
        checkpoint_every: args.checkpoint_every,
        data: DataOptions {
            dataset: args.workload.dataset.clone(),
            shard: args.shard,
            device: Some(device),
            tokenizer: args.workload.tokenizer.clone(),
        },
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = shutdown_tx.send(true);
        // Shutdown is bounded: a training step in flight or a stuck peer cannot hold it.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_LIMIT);
            eprintln!("shutdown took longer than {SHUTDOWN_LIMIT:?}: exiting now (the last merged round is checkpointed)");
            std::process::exit(1);
        });
        // A second signal exits at once.
        wait_for_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    let (control, control_rx) = crate::node::NodeControl::channel();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<crate::node::NodeEvent>();
    let progress = crate::progress::ProgressLine::on_terminal(args.rounds);
    // The node's events go to the progress line and to the HTTP server alike.
    let (http_tx, http_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress_tx = progress.as_ref().map(|p| p.events());
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if let Some(tx) = &progress_tx {
                let _ = tx.send(event.clone());
            }
            let _ = http_tx.send(event);
        }
    });
    let server = match http {
        Some(listener) => Some(crate::http::HttpServer::start(listener, control, &options.datadir, http_rx)?),
        None => None,
    };
    let outcome = crate::node::run_node_controlled(
        options,
        Default::default(),
        Some(events_tx),
        shutdown_rx,
        server.is_some().then_some(control_rx),
    )
    .await;
    if let Some(progress) = progress {
        progress.finish().await;
    }
    // Removes <datadir>/http.addr, whether the node stopped cleanly or not.
    drop(server);
    let outcome = outcome.map_err(crate::hints::explain)?;
    if let Some(path) = &summary {
        crate::run_summary::RunSummary::of(&outcome).write(path)?;
    }
    tracing::info!(
        round = outcome.state.round,
        merged = outcome.rounds_merged,
        sent = outcome.traffic.sent,
        received = outcome.traffic.received,
        "node stopped"
    );
    Ok(())
}

/// The longest a node takes to stop after SIGINT or SIGTERM.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn swarm(args: SwarmArgs) -> Result<()> {
    let spec = match (&args.spec, args.codec) {
        // A spec file's outer step is the author's choice; only the codec changes.
        (Some(path), codec) => {
            let mut spec = crate::spec_file::load_spec(path)?;
            spec.codec = codec.unwrap_or(spec.codec);
            spec
        }
        (None, Some(codec)) => RunSpec::builtin_with_codec(codec),
        (None, None) => RunSpec::builtin(),
    };
    let spec = args.workload.apply(spec)?;
    args.workload.device.check_cpu_only("swarm")?;
    let spec = RunSpec { aggregation: args.aggregation.unwrap_or(spec.aggregation), ..spec };
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let options = SwarmOptions {
        datadir: args.datadir,
        seed: args.seed,
        pull_above: args.pull_above,
        progress_to_stderr: args.json,
        quiet: false,
        centralized_baseline: !args.no_baseline,
        dataset: args.workload.dataset.clone(),
        tokenizer: args.workload.tokenizer.clone(),
        ..SwarmOptions::new(args.nodes, args.rounds, spec)
    };
    if !args.json {
        println!(
            "starling swarm: {} nodes, {} rounds, {} parameters, run {}",
            options.nodes,
            options.rounds,
            options.spec.param_count(),
            options.spec.run_id().short()
        );
    }
    let options_is_lm = options.spec.model.is_language_model();
    let summary = run_swarm(options).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!();
        // Without the baseline (--no-baseline) its figures are NaN: left out.
        let baseline = |text: String| if args.no_baseline { String::new() } else { text };
        let versus = |what: String| baseline(format!("; centralized baseline {what}"));
        let accuracy_versus =
            baseline(format!("  (centralized baseline {:.2}%)", summary.centralized_accuracy * 100.0));
        println!(
            "accuracy      mean {:.2}%  min {:.2}%{accuracy_versus}",
            summary.mean_accuracy * 100.0,
            summary.min_accuracy * 100.0,
        );
        println!(
            "held-out loss mean {:.4}  (initially {:.4}{}; {} on {}, partition {})",
            summary.mean_loss,
            summary.initial_loss,
            versus(format!("{:.4}", summary.centralized_loss)),
            summary.model,
            summary.dataset,
            summary.partition
        );
        if options_is_lm {
            println!(
                "perplexity    {:.2} per token  (initially {:.2}{})",
                summary.mean_perplexity,
                summary.initial_loss.exp(),
                versus(format!("{:.2}", summary.centralized_loss.exp()))
            );
        }
        println!(
            "consensus     {:.2e} (RMS relative distance of node parameters from their mean)",
            summary.consensus_distance
        );
        println!(
            "traffic       {} sent per node per round ({} per node in all; a dense delta is {})",
            human_bytes(summary.bytes_sent_per_node_per_round),
            human_bytes(summary.bytes_sent_per_node),
            human_bytes(summary.dense_delta_bytes as f64)
        );
        let baseline_time = baseline(format!(", {:.1}s centralized baseline", summary.centralized_seconds));
        println!(
            "time          {:.1}s swarm{baseline_time}, {:.1}s in all",
            summary.swarm_seconds, summary.wall_seconds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_keys_are_read_as_hex_or_peer_ids_sorted_and_deduplicated() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let public = starling_protocol::PublicKey::of(&key);
        let peer = crate::net::keypair(&key).public().to_peer_id().to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# members\n\n{public}\n")).unwrap();
        let keys = allowed_key_list(vec![peer], Some(&file)).unwrap();
        assert_eq!(keys, Some(vec![public.to_string()]));
        assert_eq!(allowed_key_list(vec![], None).unwrap(), None);
        let err = allowed_key_list(vec!["nope".into()], None).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("--allow"), "{err}");
    }
}
