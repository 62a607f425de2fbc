//! The fast path against candle's autograd, the reference: same loss and
//! gradient up to rounding, same training over several AdamW steps, and
//! bit-identical results across runs and thread counts.

use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW};
use starling_protocol::spec::CnnSpec;
use starling_protocol::ModelSpec;

use super::{FastTrainer, Kernel, Threads};
use crate::models::{initial_params, Batch, Model};
use crate::optim::{FusedOptimizer, InnerRule};

fn specs() -> Vec<ModelSpec> {
    vec![
        ModelSpec::mlp(vec![20, 16, 12, 5]),
        ModelSpec::mlp(vec![30, 4]),
        ModelSpec::Cnn(CnnSpec { input: [2, 8, 8], channels: vec![4, 6], classes: 3 }),
        ModelSpec::Cnn(CnnSpec { input: [1, 12, 4], channels: vec![5], classes: 4 }),
    ]
}

/// A batch of `n` inputs in `[0, 1)`, with some exact zeros so ReLU and max-pool meet ties.
fn batch(spec: &ModelSpec, n: usize, salt: usize) -> (Vec<f32>, Vec<u32>) {
    let dim = spec.input_dim().unwrap();
    let classes = spec.classes().unwrap() as u32;
    let x = (0..n * dim)
        .map(|i| if (i + salt).is_multiple_of(7) { 0.0 } else { (((i + salt) as f32) * 0.618).fract() })
        .collect();
    let y = (0..n).map(|i| (i as u32 * 7 + salt as u32) % classes).collect();
    (x, y)
}

fn candle_batch(spec: &ModelSpec, x: &[f32], y: &[u32]) -> Batch {
    let dim = spec.input_dim().unwrap();
    Batch::Labelled {
        x: Tensor::from_slice(x, (y.len(), dim), &Device::Cpu).unwrap(),
        y: Tensor::from_slice(y, y.len(), &Device::Cpu).unwrap(),
    }
}

fn candle_loss_and_grad(spec: &ModelSpec, params: &[f32], x: &[f32], y: &[u32]) -> (f32, Vec<f32>) {
    let model = Model::new(spec).unwrap();
    model.set_params(params).unwrap();
    let (loss, _) = model.loss(&candle_batch(spec, x, y)).unwrap();
    let grads = loss.backward().unwrap();
    let mut flat = Vec::new();
    for (_, var) in model.named_vars() {
        flat.extend(grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (loss.to_scalar().unwrap(), flat)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale + 1e-6, "{what}[{i}]: fast {g}, candle {w} (largest {scale})");
    }
}

#[test]
fn loss_and_gradient_match_candle_autograd() {
    for spec in specs() {
        let params = initial_params(&spec, 3).unwrap();
        let (x, y) = batch(&spec, 9, 1);
        let (want_loss, want_grad) = candle_loss_and_grad(&spec, &params, &x, &y);
        let mut kernel = Kernel::for_spec(&spec, Threads(1)).expect("the fast path covers this spec");
        let mut grad = vec![f32::NAN; params.len()];
        let loss = kernel.loss_and_grad(&params, &x, &y, &mut grad);
        assert!((loss - want_loss).abs() < 1e-5, "{spec:?}: loss {loss} vs {want_loss}");
        assert!(want_grad.iter().any(|g| *g != 0.0));
        assert_close(&grad, &want_grad, &format!("{spec:?} gradient"));
    }
}

#[test]
fn several_adamw_and_sgd_steps_train_as_the_reference_does() {
    let adamw = InnerRule::AdamW(ParamsAdamW { lr: 1e-2, weight_decay: 0.01, ..Default::default() });
    let sgd = InnerRule::Sgd { lr: 0.05, momentum: 0.9, weight_decay: 0.01 };
    for (spec, rule) in specs().into_iter().flat_map(|s| [(s.clone(), adamw.clone()), (s, sgd.clone())]) {
        let start = initial_params(&spec, 5).unwrap();
        let model = Model::new(&spec).unwrap();
        model.set_params(&start).unwrap();
        let mut reference = FusedOptimizer::new(model.vars(), rule.clone()).unwrap();
        let mut fast = FastTrainer::for_spec(&spec, rule.clone()).unwrap();
        fast.load(&start);
        for step in 0..5 {
            let (x, y) = batch(&spec, 8, step);
            let (want, _) = model.loss(&candle_batch(&spec, &x, &y)).unwrap();
            let got = fast.loss_and_grad(&x, &y);
            let want_value = want.to_scalar::<f32>().unwrap();
            assert!((got - want_value).abs() < 1e-4, "{spec:?} step {step}: loss {got} vs {want_value}");
            reference.backward_step(&want).unwrap();
            fast.apply_update();
        }
        assert_close(
            fast.params(),
            &model.params().unwrap(),
            &format!("{spec:?} {rule:?}: parameters after 5 steps"),
        );
    }
}

#[test]
fn steps_are_bit_identical_across_runs_and_thread_counts() {
    let bench_sized = [
        ModelSpec::mlp(vec![784, 256, 10]),
        ModelSpec::Cnn(CnnSpec { input: [1, 28, 28], channels: vec![8, 16], classes: 10 }),
    ];
    for spec in specs().into_iter().chain(bench_sized) {
        let params = initial_params(&spec, 7).unwrap();
        let (x, y) = batch(&spec, 64, 2);
        let run = |threads: usize| {
            let mut kernel = Kernel::for_spec(&spec, Threads(threads)).unwrap();
            let mut grad = vec![0.0; params.len()];
            let loss = kernel.loss_and_grad(&params, &x, &y, &mut grad);
            // A second step on the same workspaces must not depend on the first.
            let again = kernel.loss_and_grad(&params, &x, &y, &mut grad);
            assert_eq!(loss.to_bits(), again.to_bits());
            (loss.to_bits(), grad.iter().map(|g| g.to_bits()).collect::<Vec<_>>())
        };
        let one = run(1);
        assert_eq!(one, run(1), "{spec:?}: two runs differ");
        assert_eq!(one, run(2), "{spec:?}: one and two threads differ");
    }
}

#[test]
fn odd_maps_and_the_transformer_stay_on_the_reference_path() {
    let odd = ModelSpec::Cnn(CnnSpec { input: [1, 7, 8], channels: vec![2], classes: 2 });
    assert!(Kernel::for_spec(&odd, Threads(1)).is_none());
    let deep_odd = ModelSpec::Cnn(CnnSpec { input: [1, 6, 6], channels: vec![2, 2], classes: 2 });
    assert!(Kernel::for_spec(&deep_odd, Threads(1)).is_none(), "6 → 3 cannot be pooled whole again");
    let lm = ModelSpec::Transformer(starling_protocol::spec::TransformerSpec {
        vocab: 16,
        d_model: 8,
        heads: 2,
        layers: 1,
        context: 4,
    });
    assert!(Kernel::for_spec(&lm, Threads(1)).is_none());
}

#[test]
fn ghost_clipped_sums_match_the_candle_dp_sgd_path() {
    let rule = InnerRule::Sgd { lr: 0.1, momentum: 0.0, weight_decay: 0.0 };
    for spec in specs().into_iter().filter(|s| matches!(s, ModelSpec::Mlp(_))) {
        let params = initial_params(&spec, 3).unwrap();
        let (x, y) = batch(&spec, 9, 1);
        let model = Model::new(&spec).unwrap();
        model.set_params(&params).unwrap();
        let Batch::Labelled { x: xt, y: yt } = candle_batch(&spec, &x, &y) else { unreachable!() };
        let vars = model.vars();
        // A tight clip clips every example; a loose one none.
        for clip in [0.05, 1e3] {
            let want = crate::privacy::dpsgd::ghost_clipped_sum(&vars, &xt, &yt, clip).unwrap();
            let mut flat = Vec::new();
            for (_, var) in model.named_vars() {
                let at = vars.iter().position(|v| v.as_tensor().id() == var.as_tensor().id()).unwrap();
                flat.extend(want.grads[at].flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            let mut fast = FastTrainer::for_spec(&spec, rule.clone()).unwrap();
            fast.load(&params);
            let loss_sum = fast.clipped_grad_sum(&x, &y, clip as f32).unwrap();
            assert!(
                (loss_sum - want.loss_sum).abs() < 1e-4 * want.loss_sum.abs().max(1.0),
                "{spec:?} clip {clip}"
            );
            assert_close(fast.grad_mut(), &flat, &format!("{spec:?} clip {clip}: clipped sum"));
        }
        // Clipped to 1e3, the sum is the plain gradient times the batch size.
        let (_, plain) = candle_loss_and_grad(&spec, &params, &x, &y);
        let mut fast = FastTrainer::for_spec(&spec, rule.clone()).unwrap();
        fast.load(&params);
        fast.clipped_grad_sum(&x, &y, 1e3).unwrap();
        let mean: Vec<f32> = fast.grad_mut().iter().map(|g| g / y.len() as f32).collect();
        assert_close(&mean, &plain, &format!("{spec:?}: unclipped"));
    }
}
