//! The `starling` binary: parses the command line (flags, environment and the
//! datadir's config.toml), sets up logging, runs.

use starling_node::{
    cli::{execute, parse_from, Command},
    config::ConfigError,
};

fn main() -> std::process::ExitCode {
    // Before the runtime starts any thread.
    starling_training::alloc::tune_for_training();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run())
}

async fn run() -> std::process::ExitCode {
    let cli = match parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A node logs what it does; commands that print their own report log only problems.
    let default = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    cli.log.init(default);
    if !matches!(cli.command, Command::Run(_) | Command::Swarm(_)) {
        // A command whose output is piped into `head` stops quietly when the
        // reader goes, as Unix tools do, instead of panicking in println!.
        // Nodes keep Rust's default (ignored), so that no write ends them.
        // SAFETY: resets one signal's disposition before this command spawns anything.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
