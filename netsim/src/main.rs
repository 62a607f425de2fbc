//! `starling-netsim`: runs a scenario file and writes its report.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use starling_netsim::{attack::AttackBehaviour, matrix, report, Scenario};
use starling_protocol::AggregationRule;

#[derive(Parser)]
#[command(name = "starling-netsim", version, about = "Simulates Starling swarms from scenario files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs SCENARIO.toml and writes summary.json, rounds.csv and plots to --out.
    Run {
        scenario: PathBuf,
        /// Directory for the report (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Leave wall time and peak memory out of summary.json, so that two runs
        /// of the same scenario and seed give byte-identical files.
        #[arg(long)]
        no_host_figures: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Runs the attack scenarios under every aggregation rule and attacker
    /// fraction, and writes a table of the honest nodes' final accuracy and
    /// consensus distance next to each rule's no-attack run (attacks.md, .csv, .json).
    Attacks {
        /// Attack scenarios; the first also gives the no-attack run.
        #[arg(default_values = default_attack_scenarios())]
        scenarios: Vec<PathBuf>,
        /// Directory for the report (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Aggregation rules to compare.
        #[arg(long, value_delimiter = ',', default_values_t = AggregationRule::examples())]
        rules: Vec<AggregationRule>,
        /// Attacker fractions of the swarm.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0.1, 0.25, 0.4])]
        fractions: Vec<f64>,
        /// Override the scenarios' rounds (fewer rounds, a quicker table).
        #[arg(long)]
        rounds: Option<u64>,
    },
}

fn default_attack_scenarios() -> Vec<&'static str> {
    AttackBehaviour::ALL
        .iter()
        .map(|a| &*Box::leak(format!("netsim/scenarios/attack-{}.toml", a.name()).into_boxed_str()))
        .collect()
}

fn main() -> std::process::ExitCode {
    // Live mode runs real nodes: RUST_LOG=info shows their logs on stderr.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { scenario, out, seed, no_host_figures, quiet } => {
            run_one(scenario, out, seed, no_host_figures, quiet)
        }
        Command::Attacks { scenarios, out, rules, fractions, rounds } => {
            attack_table(scenarios, out, rules, fractions, rounds)
        }
    }
}

fn attack_table(
    paths: Vec<PathBuf>,
    out: PathBuf,
    rules: Vec<AggregationRule>,
    fractions: Vec<f64>,
    rounds: Option<u64>,
) -> Result<()> {
    let mut scenarios = Vec::with_capacity(paths.len());
    for path in &paths {
        let mut sc = Scenario::load(path)?;
        sc.rounds = rounds.unwrap_or(sc.rounds);
        scenarios.push(sc);
    }
    let rows = matrix::run(&scenarios, &rules, &fractions, &mut |row, done, total| {
        eprintln!(
            "[{done}/{total}] {} vs {} at {:.0}%: honest {}, consensus distance {:.1e}",
            row.rule,
            row.attack,
            row.fraction * 100.0,
            row.honest_accuracy
                .map_or(format!("loss {:.3e}", row.honest_loss), |a| format!("accuracy {:.2}%", a * 100.0)),
            row.consensus_distance
        );
    })?;
    matrix::write(&out, &rows)?;
    print!("{}", matrix::markdown(&rows));
    println!("report in {}", out.display());
    Ok(())
}

fn run_one(
    scenario: PathBuf,
    out: PathBuf,
    seed: Option<u64>,
    no_host_figures: bool,
    quiet: bool,
) -> Result<()> {
    let mut sc = Scenario::load(&scenario)?;
    if let Some(seed) = seed {
        sc.seed = seed;
    }
    let bar = ProgressBar::new(sc.rounds);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:40} round {pos}/{len} (eta {eta})")
            .expect("valid template"),
    );
    bar.set_prefix(format!("{} ({} nodes, {:?})", sc.name, sc.nodes, sc.mode).to_lowercase());
    let output = starling_netsim::run(&sc, !no_host_figures, &mut |done, _| bar.set_position(done))
        .with_context(|| format!("running {}", scenario.display()))?;
    bar.finish_and_clear();
    report::write(&out, &output.summary, &output.rows, &output.markers)?;
    let s = &output.summary;
    let quality = match s.final_mean_accuracy {
        Some(a) => format!("final mean accuracy {:.2}%", a * 100.0),
        None => format!("final loss {:.3e}", s.final_loss),
    };
    println!(
        "{}: {} nodes, {} rounds, {quality}, consensus distance {:.2e}, delivered {:.1}%{}",
        s.scenario,
        s.nodes,
        s.rounds,
        s.final_consensus_distance,
        s.delivered_fraction * 100.0,
        match (s.wall_seconds, s.peak_rss_bytes) {
            (Some(w), Some(m)) => format!(", {w:.1} s wall, {:.0} MiB peak", m as f64 / (1 << 20) as f64),
            _ => String::new(),
        }
    );
    println!("report in {}", out.display());
    Ok(())
}
