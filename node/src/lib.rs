//! The Starling node: networking and the event loop that drives the protocol,
//! training through `starling_training`.

pub mod bench;
pub mod bench_cli;
pub mod bench_codecs;
pub mod bench_sync;
pub mod cli;
pub mod config;
pub mod dirs;
pub mod hints;
pub mod http;
pub mod inspect;
pub mod limits;
pub mod lm_spec;
pub mod local_swarm;
pub mod logging;
pub mod metrics;
/// The libp2p stack, in its own crate.
pub use starling_net as net;
pub mod net_cli;
pub mod node;
pub mod operator_cli;
pub mod progress;
pub mod run_summary;
pub mod spec_file;
pub mod statesync;
pub mod status;
pub mod units;
pub mod workload_cli;
