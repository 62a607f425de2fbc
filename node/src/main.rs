//! The `starling` binary: parses the command line, sets up logging, runs.

use std::io::IsTerminal;

use clap::Parser;
use starling_node::cli::{execute, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread.
    starling_node::alloc::tune_for_training();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run())
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A node logs what it does; commands that print their own report log only problems.
    let default = match cli.command {
        starling_node::cli::Command::Run(_) => "info",
        _ => "warn",
    };
    let filter = cli
        .log
        .log
        .clone()
        .map(EnvFilter::new)
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
