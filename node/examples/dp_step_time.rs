//! The cost of record-level privacy per training step, for the MLP of the
//! glyph task (784-128-10) and the built-in task's MLP (32-128-128-10), on the
//! CPU: the per-example gradient path alone (ghost-clipped gradient sum
//! against the plain gradient of the same batch), then the whole DP-SGD step
//! (Poisson sampling, clipping, Gaussian noise for every parameter, optimizer)
//! against the whole plain step.
//!
//!     cargo run --release -p starling-node --example dp_step_time [-- ROUNDS]

use std::time::Instant;

use starling_protocol::{ModelSpec, RunSpec};
use starling_training::data::Dataset;
use starling_training::fast::FastTrainer;
use starling_training::model::Mlp;
use starling_training::optim::InnerRule;
use starling_training::privacy::{DpSgd, NoiseRng};
use starling_training::trainer::Trainer;

const SHARD: usize = 5000;
const STEPS: u32 = 20;

fn main() -> anyhow::Result<()> {
    let rounds: u32 = std::env::args().nth(1).map(|r| r.parse()).transpose()?.unwrap_or(10);
    println!("| model | batch | plain gradient ms | clipped per-example sum ms | ratio | plain step ms | DP-SGD step ms | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for layers in [vec![784, 128, 10], vec![32, 128, 128, 10]] {
        for batch in [64, 256, 1024] {
            let (grad, clipped) = gradient_ms(&layers, batch, rounds * STEPS)?;
            let plain = ms_per_step(&layers, batch, rounds, false)?;
            let private = ms_per_step(&layers, batch, rounds, true)?;
            println!(
                "| mlp {layers:?} | {batch} | {grad:.3} | {clipped:.3} | {:.2}× | {plain:.3} | {private:.3} | {:.2}× |",
                clipped / grad,
                private / plain
            );
        }
    }
    Ok(())
}

/// Mean wall time of the plain gradient and of the clipped per-example sum of
/// one batch, alternated `reps` times after a warm-up.
fn gradient_ms(layers: &[usize], batch: usize, reps: u32) -> anyhow::Result<(f64, f64)> {
    let spec = ModelSpec::mlp(layers.to_vec());
    let rule = InnerRule::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
    let mut fast = FastTrainer::for_spec(&spec, rule).ok_or_else(|| anyhow::anyhow!("no fast path"))?;
    fast.load(&Mlp::initial_params(layers, 1));
    let x: Vec<f32> = (0..batch * layers[0]).map(|i| ((i as f32) * 0.618).fract()).collect();
    let y: Vec<u32> = (0..batch).map(|i| (i % layers[layers.len() - 1]) as u32).collect();
    fast.loss_and_grad(&x, &y);
    fast.clipped_grad_sum(&x, &y, 1.0);
    let (mut plain, mut clipped) = (0f64, 0f64);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(fast.loss_and_grad(&x, &y));
        plain += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(fast.clipped_grad_sum(&x, &y, 1.0));
        clipped += t.elapsed().as_secs_f64();
    }
    Ok((plain * 1e3 / reps as f64, clipped * 1e3 / reps as f64))
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
        trainer.set_private(DpSgd::new(1.0, 1.0, batch, SHARD, NoiseRng::seeded(1)))?;
    }
    let mut params = Mlp::initial_params(layers, 1);
    params = trainer.train_round(&params, STEPS)?.params;
    let start = Instant::now();
    for _ in 0..rounds {
        params = trainer.train_round(&params, STEPS)?.params;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / (rounds * STEPS) as f64)
}
