//! The cost of record-level privacy per training step: DP-SGD (Poisson
//! sampling, ghost-clipped per-example gradients, Gaussian noise) against the
//! plain step, for the MLP of the glyph task (784-128-10) and the built-in
//! task's MLP (32-128-128-10), on the CPU.
//!
//!     cargo run --release -p starling-node --example dp_step_time [-- ROUNDS]

use std::time::Instant;

use starling_node::data::Dataset;
use starling_node::model::Mlp;
use starling_node::privacy::{DpSgd, NoiseRng};
use starling_node::trainer::Trainer;
use starling_protocol::{ModelSpec, RunSpec};

const SHARD: usize = 5000;
const STEPS: u32 = 20;

fn main() -> anyhow::Result<()> {
    let rounds: u32 = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(10);
    println!("| model | batch | plain ms/step | DP-SGD ms/step | DP / plain |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for layers in [vec![784, 128, 10], vec![32, 128, 128, 10]] {
        for batch in [64, 256] {
            let plain = ms_per_step(&layers, batch, rounds, false)?;
            let private = ms_per_step(&layers, batch, rounds, true)?;
            println!("| mlp {layers:?} | {batch} | {plain:.3} | {private:.3} | {:.2}× |", private / plain);
        }
    }
    Ok(())
}

/// Mean wall time of one inner step over `rounds` rounds of `STEPS`, after one warm-up round.
fn ms_per_step(layers: &[usize], batch: usize, rounds: u32, private: bool) -> anyhow::Result<f64> {
    let mut spec = RunSpec::builtin();
    spec.model = ModelSpec::mlp(layers.to_vec());
    spec.inner.batch_size = batch;
    let (dim, classes) = (layers[0], *layers.last().expect("layers"));
    let data = Dataset {
        features: (0..SHARD * dim).map(|i| ((i as f32) * 0.618).fract()).collect(),
        labels: (0..SHARD).map(|i| (i % classes) as u32).collect(),
        dim,
        classes,
    };
    let mut trainer = Trainer::new(&spec, data, 1)?;
    if private {
        trainer.set_private(DpSgd::new(1.0, 1.0, batch, SHARD, NoiseRng::seeded(1)));
    }
    let mut params = Mlp::initial_params(layers, 1);
    params = trainer.train_round(&params, STEPS)?.params;
    let start = Instant::now();
    for _ in 0..rounds {
        params = trainer.train_round(&params, STEPS)?.params;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / (rounds * STEPS) as f64)
}
