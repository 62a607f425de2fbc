//! Whole workloads through the real binary: generated glyphs as IDX files,
//! trained by a local swarm against its centralized baseline, and data or
//! device mistakes refused with errors that name what to fix.

mod common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{test_spec, write_spec};
use starling_protocol::ModelSpec;

/// Runs `starling ARGS` to completion within `limit`; returns (success, stdout, stderr).
fn starling(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starling starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("starling {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn a_swarm_learns_generated_glyphs_and_reports_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let glyphs = dir.path().join("glyphs");
    let glyphs = glyphs.to_str().unwrap();
    let (ok, _, err) = starling(
        &["data", "glyphs", "--out", glyphs, "--train", "600", "--test", "200", "--seed", "3"],
        Duration::from_secs(120),
    );
    assert!(ok, "{err}");
    let mut spec = test_spec("workload-glyphs");
    spec.model = ModelSpec::mlp(vec![784, 32, 10]);
    spec.dataset.samples_per_node = 300;
    spec.dataset.eval_samples = 200;
    spec.inner.steps = 20;
    spec.inner.lr = 3e-3;
    let spec_path = write_spec(dir.path(), &spec);
    let dataset = format!("idx:{glyphs}");
    let (ok, out, err) = starling(
        &["swarm", "--spec", &spec_path, "--dataset", &dataset, "--nodes", "2", "--rounds", "4", "--json"],
        Duration::from_secs(300),
    );
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let accuracy = summary["mean_accuracy"].as_f64().unwrap();
    let central = summary["centralized_accuracy"].as_f64().unwrap();
    // Ten classes: chance is 10%.
    assert!(accuracy > 0.3, "the swarm learns the glyphs: {summary}");
    assert!(central > 0.3, "the baseline learns them too: {summary}");
    assert_eq!(summary["dataset"], dataset.as_str());
    assert_eq!(summary["curve"].as_array().unwrap().len(), 4);

    let (ok, out, err) = starling(
        &["baseline", "--spec", &spec_path, "--dataset", &dataset, "--nodes", "2", "--rounds", "1", "--json"],
        Duration::from_secs(300),
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["train_samples"], 600);
    assert_eq!(report["steps"], 40);
}

#[test]
fn data_and_device_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("workload-errors"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let dataset = format!("idx:{}", empty.display());
    let (ok, _, err) = starling(
        &["baseline", "--spec", &spec_path, "--dataset", &dataset, "--rounds", "1"],
        Duration::from_secs(60),
    );
    assert!(!ok && err.contains("no IDX files") && err.contains("empty"), "{err}");
    let (ok, _, err) = starling(&["swarm", "--dataset", "mnist", "--rounds", "1"], Duration::from_secs(60));
    assert!(!ok && err.contains("mnist") && err.contains("idx:DIR"), "{err}");
    if !cfg!(feature = "cuda") {
        let (ok, _, err) =
            starling(&["bench", "train", "--device", "cuda:0", "--steps", "1"], Duration::from_secs(60));
        assert!(!ok && err.contains("--features cuda"), "{err}");
    }
}
