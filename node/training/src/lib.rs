//! Starling's local training: the candle models a RunSpec names, the data they
//! train on, the hand-written CPU step, the inner optimizers, the trainer that
//! runs a round's inner steps, the initial weights, and DP-SGD.
//!
//! Pure computation on the caller's thread (and rayon's and gemm's pools): no
//! async runtime, no networking, no storage. The node runs it on its worker
//! threads; netsim's virtual mode runs it directly.

pub mod alloc;
pub mod data;
pub mod datasets;
pub mod error;
pub mod evaluation;
pub mod fast;
pub mod init;
pub mod model;
pub mod models;
pub mod optim;
pub mod privacy;
pub mod tokenizer;
pub mod trainer;
