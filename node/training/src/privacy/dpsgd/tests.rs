//! Ghost clipping against explicit per-example gradients, and DP-SGD training.

use super::*;
use crate::data::SyntheticTask;
use crate::model::Mlp;
use crate::trainer::Trainer;
use starling_protocol::RunSpec;

fn batch(n: usize, dim: usize, classes: u32) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * dim).map(|i| ((i as f32) * 0.713).sin() * 2.0).collect();
    let ys: Vec<u32> = (0..n as u32).map(|i| (i * 7) % classes).collect();
    (Tensor::from_vec(xs, (n, dim), &Device::Cpu).unwrap(), Tensor::from_vec(ys, n, &Device::Cpu).unwrap())
}

fn flat(ts: &[Tensor]) -> Vec<f32> {
    ts.iter().flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn mlp(layers: &[usize]) -> Model {
    let spec = ModelSpec::mlp(layers.to_vec());
    let model = Model::new(&spec).unwrap();
    model.set_params(&Mlp::initial_params(layers, 5)).unwrap();
    model
}

#[test]
fn ghost_clipping_equals_clipping_each_example_gradient() {
    let model = mlp(&[6, 9, 7, 4]);
    let vars = model.vars();
    let (x, y) = batch(11, 6, 4);
    // A clip that bites for some examples, and one that bites for none.
    for clip in [0.3, 1e6] {
        let ghost = ghost_clipped_sum(&vars, &x, &y, clip).unwrap();
        let each = per_example_clipped_sum(&model, &vars, &x, &y, clip).unwrap();
        let (g, e) = (flat(&ghost.grads), flat(&each.grads));
        assert_eq!(g.len(), Mlp::param_count(&[6, 9, 7, 4]));
        let scale = e.iter().map(|v| v.abs()).fold(0f32, f32::max);
        for (a, b) in g.iter().zip(&e) {
            assert!((a - b).abs() <= 1e-4 * scale, "clip {clip}: {a} vs {b}");
        }
        assert!((ghost.loss_sum - each.loss_sum).abs() < 1e-3 * each.loss_sum.abs());
    }
}

#[test]
fn a_clip_that_never_bites_gives_the_summed_batch_gradient() {
    let model = mlp(&[5, 8, 3]);
    let vars = model.vars();
    let (x, y) = batch(9, 5, 3);
    let ghost = ghost_clipped_sum(&vars, &x, &y, 1e9).unwrap();
    let (loss, _) = model.loss(&Batch::Labelled { x, y }).unwrap();
    let store = (loss * 9.0).unwrap().backward().unwrap();
    let plain: Vec<Tensor> = vars.iter().map(|v| store.get(v.as_tensor()).unwrap().clone()).collect();
    for (a, b) in flat(&ghost.grads).iter().zip(flat(&plain)) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn every_clipped_example_gradient_is_at_most_the_clip_norm() {
    let model = mlp(&[6, 9, 4]);
    let vars = model.vars();
    let (x, y) = batch(5, 6, 4);
    for i in 0..5 {
        let one =
            ghost_clipped_sum(&vars, &x.narrow(0, i, 1).unwrap(), &y.narrow(0, i, 1).unwrap(), 0.05).unwrap();
        let norm = flat(&one.grads).iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!(norm <= 0.05 * (1.0 + 1e-4), "example {i}: {norm}");
    }
}

#[test]
fn dp_sgd_still_learns_and_a_seeded_run_repeats() {
    let mut spec = RunSpec::builtin();
    spec.model = ModelSpec::mlp(vec![32, 32, 10]);
    spec.dataset.samples_per_node = 1024;
    spec.inner.batch_size = 64;
    spec.inner.lr = 5e-3;
    let task = SyntheticTask::new(&spec).unwrap();
    let eval: TrainData = task.eval_set().into();
    let init = Mlp::initial_params(&[32, 32, 10], spec.seed);
    let run = |seed: u64| {
        let mut trainer = Trainer::new(&spec, task.shard(0, 1024), 1).unwrap();
        trainer.set_private(DpSgd::new(1.0, 1.0, 64, 1024, NoiseRng::seeded(seed))).unwrap();
        let mut params = init.clone();
        for _ in 0..6 {
            params = trainer.train_round(&params, 20).unwrap().params;
        }
        (trainer.evaluate(&params, &eval).unwrap(), params)
    };
    let before = crate::trainer::evaluate(&spec.model, &init, &eval).unwrap();
    let (after, a) = run(9);
    assert!(after.accuracy > before.accuracy + 0.1, "{before:?} -> {after:?}");
    assert_eq!(a, run(9).1, "a seeded generator repeats");
    assert_ne!(a, run(10).1, "the noise depends on the generator");
}

#[test]
fn the_cnn_falls_back_to_one_example_at_a_time() {
    let spec =
        ModelSpec::Cnn(starling_protocol::spec::CnnSpec { input: [1, 4, 4], channels: vec![2], classes: 3 });
    let model = Model::new(&spec).unwrap();
    model.set_params(&crate::models::initial_params(&spec, 1).unwrap()).unwrap();
    let (x, y) = batch(4, 16, 3);
    let sum = clipped_sum(&model, &model.vars(), &x, &y, 0.01).unwrap();
    let norm = flat(&sum.grads).iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0 && norm <= 4.0 * 0.01 * (1.0 + 1e-4), "{norm}");
}
