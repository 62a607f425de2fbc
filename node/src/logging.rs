//! Logging: the tracing subscriber of the `starling` binary, its flags
//! (`--log`, `-v`/`-q`, `--log-format`), and a writer that keeps log lines
//! from tearing the live progress line of `starling run`.

use std::{
    io::{IsTerminal, Write},
    sync::Mutex,
};

use clap::{ArgAction, Args, ValueEnum};
use indicatif::ProgressBar;
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// Logging.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter (overrides -v/-q and RUST_LOG), e.g. `info` or `starling_node=debug`.
    #[arg(long, global = true, env = "STARLING_LOG")]
    pub log: Option<String>,
    /// More detail: -v debug, -vv trace (overrides RUST_LOG).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Less: -q warnings and errors only, -qq errors only (overrides RUST_LOG).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    /// Log lines as text (for people) or json (one object per line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STARLING_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl LogArgs {
    /// The filter: `--log`, else the level `-v`/`-q` move from `default`, else
    /// `RUST_LOG`, else `default` (`info` for a node, `warn` for commands that
    /// print their own report).
    pub fn filter(&self, default: &str) -> EnvFilter {
        if let Some(filter) = &self.log {
            return EnvFilter::new(filter);
        }
        if self.verbose > 0 || self.quiet > 0 {
            let base = LEVELS.iter().position(|l| *l == default).unwrap_or(2) as i32;
            let level = (base + self.verbose as i32 - self.quiet as i32).clamp(0, LEVELS.len() as i32 - 1);
            return EnvFilter::new(LEVELS[level as usize]);
        }
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
    }

    /// Installs the global subscriber; logs go to stderr.
    pub fn init(&self, default: &str) {
        let filter = self.filter(default);
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr);
        match self.log_format {
            LogFormat::Text => {
                let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                builder.with_ansi(ansi).init()
            }
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }
}

/// The live progress line, if one is drawn: log lines are written while it is hidden.
static PROGRESS: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Registers (or with `None`, removes) the progress line log lines must not tear.
pub fn set_progress_line(bar: Option<ProgressBar>) {
    *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Stderr, one log event at a time, with the progress line hidden while it is written.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(Vec::with_capacity(256))
    }
}

/// Buffers one event and writes it whole when dropped.
struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        let bar = PROGRESS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn filter(args: &[&str], default: &str) -> String {
        let cli = Cli::try_parse_from(std::iter::once("starling").chain(args.iter().copied())).unwrap();
        cli.log.filter(default).to_string()
    }

    #[test]
    fn verbose_and_quiet_move_the_level_from_the_default_and_log_wins() {
        assert_eq!(filter(&["-v"], "info"), "debug");
        assert_eq!(filter(&["-vv"], "info"), "trace");
        assert_eq!(filter(&["-vvvv"], "info"), "trace");
        assert_eq!(filter(&["-q"], "info"), "warn");
        assert_eq!(filter(&["-qqq"], "info"), "error");
        assert_eq!(filter(&["-v"], "warn"), "info");
        assert_eq!(filter(&["-v", "--log", "starling_node=debug"], "info"), "starling_node=debug");
    }
}
