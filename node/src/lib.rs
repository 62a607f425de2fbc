//! The Starling node: networking, training and the event loop that drives the protocol.

pub mod adamw;
pub mod alloc;
pub mod bench;
pub mod bench_sync;
pub mod cli;
pub mod data;
pub mod datasets;
pub mod fast;
pub mod init;
pub mod inspect;
pub mod local_swarm;
pub mod metrics;
pub mod model;
pub mod models;
pub mod net;
pub mod node;
pub mod statesync;
pub mod trainer;
pub mod workload_cli;
