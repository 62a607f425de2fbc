//! The resources a volunteer lends, capped: `--threads` for candle's CPU work,
//! `--max-upload` and `--max-download` for the network (see [`crate::net::throttle`]).

use std::str::FromStr;

use clap::Args;

use crate::net::throttle::BandwidthLimits;

/// Resource flags of `starling run`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// CPU threads for training (candle's matmul, conv and rayon pools); all
    /// physical cores when absent.
    #[arg(long, env = "STARLING_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Cap on bytes sent per second over all connections, e.g. 2MiB/s, 500kB/s or 20Mbit/s.
    #[arg(long, env = "STARLING_MAX_UPLOAD", value_name = "RATE")]
    pub max_upload: Option<Rate>,
    /// Cap on bytes received per second over all connections (same forms as --max-upload).
    #[arg(long, env = "STARLING_MAX_DOWNLOAD", value_name = "RATE")]
    pub max_download: Option<Rate>,
}

/// Why a limit cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("--threads must be at least 1")]
    ZeroThreads,
    #[error("cannot size the training thread pool to {threads} (--threads): {reason}")]
    ThreadPool { threads: usize, reason: String },
}

impl LimitArgs {
    /// The bandwidth caps, for the network stack.
    pub fn bandwidth(&self) -> BandwidthLimits {
        BandwidthLimits {
            upload: self.max_upload.map(|r| r.bytes_per_second),
            download: self.max_download.map(|r| r.bytes_per_second),
        }
    }

    /// Sizes candle's CPU thread pools to `--threads`. Call it before anything
    /// trains: candle sizes its pools once, from `RAYON_NUM_THREADS` (its
    /// matmuls through gemm and its rayon pool) and `CANDLE_NUM_THREADS` (its
    /// barrier pool), and rayon's global pool (conv2d, sort) is built once.
    pub fn apply_threads(&self) -> Result<(), LimitError> {
        let Some(threads) = self.threads else { return Ok(()) };
        if threads == 0 {
            return Err(LimitError::ZeroThreads);
        }
        let n = threads.to_string();
        // Nothing has read these yet: no model is built before the node starts.
        std::env::set_var("RAYON_NUM_THREADS", &n);
        std::env::set_var("CANDLE_NUM_THREADS", &n);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| LimitError::ThreadPool { threads, reason: e.to_string() })?;
        tracing::info!(threads, "training threads capped");
        Ok(())
    }
}

/// A rate in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub bytes_per_second: u64,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a rate: write a number and a unit, per second: e.g. 2MiB/s, 500kB/s, 20Mbit/s \
                 (units B, kB, KiB, MB, MiB, GB, GiB, kbit, Mbit, Gbit)"
            )
        };
        let body = text.trim();
        let body = body.strip_suffix("/s").or_else(|| body.strip_suffix("ps")).unwrap_or(body);
        let split = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
        let (number, unit) = body.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let scale = match unit.trim() {
            "" | "B" => 1.0,
            "k" | "kB" | "KB" => 1e3,
            "KiB" | "kiB" => 1024.0,
            "M" | "MB" => 1e6,
            "MiB" => 1024.0 * 1024.0,
            "G" | "GB" => 1e9,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "kbit" | "Kbit" | "kb" => 1e3 / 8.0,
            "Mbit" | "Mb" => 1e6 / 8.0,
            "Gbit" | "Gb" => 1e9 / 8.0,
            _ => return Err(bad()),
        };
        let bytes = number * scale;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(format!("{text:?} is below one byte per second; a cap must let something through"));
        }
        Ok(Rate { bytes_per_second: bytes as u64 })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", crate::units::human_bytes(self.bytes_per_second as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> u64 {
        text.parse::<Rate>().unwrap().bytes_per_second
    }

    #[test]
    fn rates_read_in_bytes_and_bits() {
        assert_eq!(rate("2MiB/s"), 2 * 1024 * 1024);
        assert_eq!(rate("500kB/s"), 500_000);
        assert_eq!(rate("1.5 KiB/s"), 1536);
        assert_eq!(rate("20Mbit/s"), 2_500_000);
        assert_eq!(rate("4096"), 4096);
        assert_eq!(rate("1GB"), 1_000_000_000);
        let err = "2 furlongs/s".parse::<Rate>().unwrap_err();
        assert!(err.contains("furlongs") && err.contains("MiB/s"), "{err}");
        assert!("0MiB/s".parse::<Rate>().unwrap_err().contains("below one byte"));
        assert!("fast".parse::<Rate>().is_err());
    }
}
