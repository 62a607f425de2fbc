//! Reports how hard the built-in task is: held-out accuracy of a linear model and
//! of the spec's MLP trained alone on all four shards, and of the MLP on one shard.
//! Collaboration is worth it when four shards clearly beat one, and the task is
//! worth an MLP when the linear model clearly trails.
//!
//! `cargo run --release -p starling-node --example task_difficulty [-- SEED]`
//! (SEED replaces the built-in spec's seed, to check that the figures hold for others).

use std::time::Instant;

use starling_protocol::RunSpec;
use starling_training::data::{Dataset, SyntheticTask};
use starling_training::error::TrainError;
use starling_training::model::Mlp;
use starling_training::trainer::{evaluate, train_alone, Evaluation};

const NODES: u64 = 4;
const STEPS_ONE_SHARD: u64 = 1000;
const STEPS_ALL_SHARDS: u64 = 4000;

fn main() -> Result<(), TrainError> {
    let started = Instant::now();
    let mut spec = RunSpec::builtin();
    if let Some(arg) = std::env::args().nth(1) {
        match arg.parse() {
            Ok(seed) => spec.seed = seed,
            Err(_) => {
                eprintln!("usage: task_difficulty [SEED]  (SEED: an unsigned integer, got {arg:?})");
                std::process::exit(2);
            }
        }
    }
    let task = SyntheticTask::new(&spec)?;
    let shards: Vec<Dataset> = (0..NODES).map(|s| task.shard(s, spec.dataset.samples_per_node)).collect();
    let all = Dataset::concat(&shards)?;
    let eval = task.eval_set();
    println!(
        "task: seed {}, layers {:?}, {} samples per shard, {} eval samples, batch {}, inner lr {}",
        spec.seed,
        spec.model.mlp_layers().unwrap_or_default(),
        spec.dataset.samples_per_node,
        eval.len(),
        spec.inner.batch_size,
        spec.inner.lr
    );
    println!(
        "{:<24} {:>6} {:>9} {:>9} {:>6}  params checksum",
        "model", "steps", "train acc", "eval acc", "secs"
    );

    let mut linear = spec.clone();
    let layers = spec.model.mlp_layers().expect("the built-in model is an MLP");
    linear.model = starling_protocol::ModelSpec::mlp(vec![layers[0], layers[layers.len() - 1]]);
    let lin = report(&linear, "linear, all 4 shards", &all, &eval, STEPS_ALL_SHARDS)?;
    let one = report(&spec, "MLP, 1 shard", &shards[0], &eval, STEPS_ONE_SHARD)?;
    // The same compute as four shards, on one: shows the gap is data, not steps.
    report(&spec, "MLP, 1 shard", &shards[0], &eval, STEPS_ALL_SHARDS)?;
    let four = report(&spec, "MLP, all 4 shards", &all, &eval, STEPS_ALL_SHARDS)?;

    println!(
        "MLP(4 shards) - linear: {:+.1} points; MLP(4 shards) - MLP(1 shard): {:+.1} points",
        100.0 * (four.accuracy - lin.accuracy),
        100.0 * (four.accuracy - one.accuracy)
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn report(
    spec: &RunSpec,
    name: &str,
    data: &Dataset,
    eval: &Dataset,
    steps: u64,
) -> Result<Evaluation, TrainError> {
    let t = Instant::now();
    let init = Mlp::initial_params(spec.model.mlp_layers().expect("an MLP"), spec.seed);
    let params = train_alone(spec, data.clone(), &init, steps, 0)?;
    let train = evaluate(&spec.model, &params, &data.clone().into())?;
    let held_out = evaluate(&spec.model, &params, &eval.clone().into())?;
    println!(
        "{:<24} {:>6} {:>8.1}% {:>8.1}% {:>6.1}  {:016x}",
        name,
        steps,
        100.0 * train.accuracy,
        100.0 * held_out.accuracy,
        t.elapsed().as_secs_f64(),
        checksum(&params)
    );
    Ok(held_out)
}

/// FNV-1a over the parameters' bits: equal checksums across machines or thread
/// counts show training was reproduced bit for bit.
fn checksum(params: &[f32]) -> u64 {
    params
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
