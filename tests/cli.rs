//! The operator's command line, through the real binary: `init`, `key`, `spec`,
//! two `run` nodes on loopback, `export` (read back by candle, and by Python's
//! safetensors where it is installed), `config dump` with each layer, the
//! datadir lock, `bench codecs --json`, `bench scale` (a lone node's figures
//! as JSON), and the errors that say which flag to change.

mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::NodeProcess;
use starling_protocol::RunSpec;

/// What a short `starling` command did.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `starling ARGS` with `envs`, waiting at most 60 s (killed and failed after).
fn starling(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the starling binary starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("starling {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { ok: status.success(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Like [`starling`], and it must succeed.
fn ok(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = starling(args, envs);
    assert!(out.ok, "starling {args:?} failed:\n{}\n{}", out.stdout, out.stderr);
    out
}

/// Like [`starling`], and it must fail with an error containing every one of `needles`.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = starling(args, &[]);
    assert!(!out.ok, "starling {args:?} succeeded:\n{}", out.stdout);
    for needle in needles {
        assert!(out.stderr.contains(needle), "starling {args:?}: no {needle:?} in:\n{}", out.stderr);
    }
    out.stderr
}

fn peer_id_in(text: &str) -> String {
    let start = text.find("12D3KooW").unwrap_or_else(|| panic!("no peer id in {text}"));
    text[start..].split_whitespace().next().unwrap().to_string()
}

/// The model's tensors as candle reads them from an exported file: name → shape.
fn candle_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let tensors =
        candle_core::safetensors::load(path, &candle_core::Device::Cpu).expect("candle loads the export");
    tensors.into_iter().map(|(name, t)| (name, t.dims().to_vec())).collect()
}

#[test]
fn init_key_spec_run_export_and_config_dump() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (a, b, spec_path, model_path) =
        (path("node-a"), path("node-b"), path("spec.toml"), path("model.safetensors"));

    // init creates the datadir, a key and config.toml, and is idempotent.
    let first = ok(&["init", "--datadir", &a], &[]).stdout;
    assert!(first.contains("created the datadir") && first.contains("generated a node key"), "{first}");
    let peer = peer_id_in(&first);
    let again = ok(&["init", "--datadir", &a], &[]).stdout;
    assert!(again.contains("kept the existing node key") && again.contains("kept"), "{again}");
    assert_eq!(peer_id_in(&again), peer);
    assert!(Path::new(&a).join("config.toml").is_file());
    assert_eq!(ok(&["key", "show", "--datadir", &a], &[]).stdout.trim(), peer);
    fails(&["key", "generate", "--datadir", &a], &["already has a node key", "--force"]);

    // spec new, then a name of this test's own so no other run mixes with it.
    ok(&["spec", "new", "--out", &spec_path], &[]);
    let text = std::fs::read_to_string(&spec_path).unwrap();
    let mut spec = RunSpec::from_toml(&text).unwrap();
    spec.name = "test-cli".into();
    std::fs::write(&spec_path, spec.to_toml()).unwrap();
    let run_id = ok(&["spec", "hash", "--spec", &spec_path], &[]).stdout.trim().to_string();
    assert_eq!(run_id, spec.run_id().to_string());
    let shown = ok(&["spec", "show", "--spec", &spec_path], &[]).stdout;
    assert!(shown.starts_with(&format!("# run id: {run_id}\n")), "{shown}");
    assert_eq!(RunSpec::from_toml(&shown).unwrap(), spec);

    // Two nodes train two rounds together; b's datadir is made by its first run.
    let run = |datadir: &str| {
        let mut args = common::run_args(datadir, &spec_path, &["--wait-peers", "1", "--rounds", "2"]);
        args.extend(["--wait-timeout".to_string(), "60".to_string()]);
        args
    };
    let a_args = run(&a);
    let mut node_a = NodeProcess::start("node-a", &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let boot = node_a.tcp_address();
    assert!(boot.ends_with(&peer), "node a listens as {boot}, init made {peer}");

    // A second node on a's datadir is refused while a runs, with a's pid.
    let err = fails(
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["is in use by another starling process", "--datadir"],
    );
    assert!(err.contains("(pid "), "{err}");

    let mut b_args = run(&b);
    b_args.extend(["--bootnodes".into(), boot, "--log-format".into(), "json".into()]);
    let mut node_b = NodeProcess::start("node-b", &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    node_a.wait_exit(Duration::from_secs(120));
    node_b.wait_exit(Duration::from_secs(120));
    let b_log = node_b.log();
    assert!(b_log.contains("round merged"), "{b_log}");
    for line in b_log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }

    // export: the newest checkpoint, as the model's named, shaped tensors.
    let exported =
        ok(&["export", "--format", "safetensors", "--out", &model_path, "--datadir", &a], &[]).stdout;
    assert!(exported.contains("exported round 2"), "{exported}");
    let model = starling_training::models::Model::new(&spec.model).unwrap();
    let expected: BTreeMap<String, Vec<usize>> =
        model.named_vars().iter().map(|(name, var)| (name.clone(), var.dims().to_vec())).collect();
    assert!(expected.len() > 1, "the model has several variables");
    assert_eq!(candle_shapes(Path::new(&model_path)), expected);
    let store = starling_storage::Store::open(Path::new(&a)).unwrap();
    let state = store.latest_checkpoint(spec.param_count()).unwrap().checkpoint.unwrap().state;
    drop(store);
    let tensors = candle_core::safetensors::load(&model_path, &candle_core::Device::Cpu).unwrap();
    let mut flat = Vec::new();
    for (name, _) in model.named_vars() {
        flat.extend(tensors[name].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    assert_eq!(flat, state.params, "the export holds the checkpoint's parameters");
    python_reads(Path::new(&model_path), &expected);

    // config dump: a flag, a variable, the file and a default, each from its source.
    let config = Path::new(&a).join("config.toml");
    let mut file = std::fs::read_to_string(&config).unwrap();
    file.push_str("\nwait-timeout = 7\nrounds = 9\n");
    std::fs::write(&config, file).unwrap();
    let dump = ok(
        &["config", "dump", "--datadir", &a, "--rounds", "5"],
        &[("STARLING_WAIT_PEERS", "3"), ("STARLING_EVALUATE", "1")],
    )
    .stdout;
    let line = |key: &str| {
        dump.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{dump}"))
    };
    assert!(line("rounds").starts_with("rounds = 5 ") && line("rounds").ends_with("# flag"), "{dump}");
    assert!(
        line("wait-peers").starts_with("wait-peers = 3 ")
            && line("wait-peers").ends_with("# env STARLING_WAIT_PEERS"),
        "{dump}"
    );
    assert!(
        line("evaluate").starts_with("evaluate = true ")
            && line("evaluate").ends_with("# env STARLING_EVALUATE"),
        "{dump}"
    );
    assert!(
        line("wait-timeout").starts_with("wait-timeout = 7 ")
            && line("wait-timeout").contains("# config.toml"),
        "{dump}"
    );
    assert!(
        line("no-mdns").starts_with("no-mdns = false ") && line("no-mdns").ends_with("# default"),
        "{dump}"
    );
    assert!(line("datadir").contains(&a), "{dump}");
    dump.parse::<toml::Table>().expect("the dump is TOML");
}

/// Python's safetensors reads the export with the same names and shapes, where it is installed.
fn python_reads(path: &Path, expected: &BTreeMap<String, Vec<usize>>) {
    let available = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        eprintln!("python3 with safetensors and numpy is not installed: skipping the Python check");
        return;
    }
    let script = "import json, sys\nfrom safetensors.numpy import load_file\n\
                  t = load_file(sys.argv[1])\n\
                  print(json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in t.items()}))";
    let out = Command::new("python3").args(["-c", script, path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let read: BTreeMap<String, (Vec<usize>, String)> = serde_json::from_slice(&out.stdout).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        read.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    assert_eq!(&shapes, expected);
    assert!(read.values().all(|(_, dtype)| dtype == "float32"), "{read:?}");
}

#[test]
fn errors_name_the_flag_or_command_that_fixes_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let missing = missing.to_str().unwrap();
    fails(&["run", "--datadir", missing], &["does not exist", &format!("starling init --datadir {missing}")]);
    fails(&["key", "show", "--datadir", missing], &["starling init --datadir"]);
    fails(&["run", "--datadir", missing, "--spec", "/no/such/spec.toml"], &["/no/such/spec.toml", "--spec"]);

    let datadir = dir.path().join("node");
    let datadir = datadir.to_str().unwrap();
    ok(&["init", "--datadir", datadir], &[]);
    fails(&["run", "--datadir", datadir], &["holds no run spec", "--spec"]);
    fails(&["run", "--datadir", datadir, "--evaluate-every", "0"], &["--evaluate-every", "'0'"]);
    let config = Path::new(datadir).join("config.toml");
    std::fs::write(&config, "wait-peers = \"lots\"\n").unwrap();
    let config_name = config.to_str().unwrap();
    fails(
        &["run", "--datadir", datadir],
        &[config_name, "`wait-peers = \"lots\"`", "expected a whole number"],
    );
    std::fs::write(&config, "listen-on = \"/ip4/0.0.0.0/tcp/9000\"\n").unwrap();
    fails(&["config", "dump", "--datadir", datadir], &[config_name, "unknown key `listen-on`", "listen"]);
    std::fs::remove_file(&config).unwrap();
    let out = starling(&["config", "dump", "--datadir", datadir], &[("STARLING_WAIT_TIMEOUT", "soon")]);
    assert!(
        !out.ok && out.stderr.contains("STARLING_WAIT_TIMEOUT") && out.stderr.contains("'soon'"),
        "{}",
        out.stderr
    );

    // A port in use: the error names --listen and a port that is free.
    let spec_path = dir.path().join("spec.toml");
    let mut spec = RunSpec::builtin();
    spec.name = "test-cli-errors".into();
    std::fs::write(&spec_path, spec.to_toml()).unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let err = fails(
        &[
            "run",
            "--datadir",
            datadir,
            "--spec",
            spec_path.to_str().unwrap(),
            "--listen",
            &listen,
            "--no-mdns",
        ],
        &[&format!("port {port} is already in use"), "change --listen, e.g. --listen /ip4/127.0.0.1/tcp/"],
    );
    let suggested = err.split("e.g. --listen /ip4/127.0.0.1/tcp/").nth(1).unwrap();
    let suggested: u16 = suggested.split(' ').next().unwrap().parse().unwrap();
    assert_ne!(suggested, port, "{err}");
}

#[test]
fn bench_codecs_prints_one_json_object_per_codec() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = RunSpec::builtin();
    spec.name = "bench-codecs-test".into();
    spec.inner.steps = 2;
    spec.dataset.samples_per_node = 128;
    spec.dataset.eval_samples = 128;
    spec.outer.lr = 0.5;
    let file = dir.path().join("spec.toml");
    std::fs::write(&file, spec.to_toml()).unwrap();
    let file = file.to_str().unwrap();
    let rows = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["bench", "codecs", "--spec", file, "--json", "--nodes", "2", "--rounds", "1"];
        args.extend_from_slice(extra);
        let out = ok(&args, &[]);
        out.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}")))
            .collect()
    };
    let suited = rows(&["--codecs", "sparse:64/4096+2bit,topk:0.005+int8,lowrank:2"]);
    let codecs: Vec<&str> = suited.iter().map(|r| r["codec"].as_str().unwrap()).collect();
    assert_eq!(codecs, ["dense", "sparse:64/4096+2bit", "topk:0.005+int8", "lowrank:2"]);
    for row in &suited {
        for field in [
            "bytes_sent_per_node_per_round",
            "ratio_vs_dense",
            "accuracy",
            "accuracy_loss_vs_dense",
            "eval_loss",
        ] {
            assert!(row[field].as_f64().is_some_and(f64::is_finite), "{field} in {row}");
        }
    }
    assert_eq!(suited[0]["ratio_vs_dense"].as_f64(), Some(1.0));
    for row in &suited[1..] {
        assert!(row["ratio_vs_dense"].as_f64().unwrap() > 1.0, "{row}");
    }
    // Each codec runs with the outer step `spec new --codec` writes for it...
    for row in &suited {
        let codec: starling_protocol::Codec = row["codec"].as_str().unwrap().parse().unwrap();
        let outer = starling_protocol::spec::OuterSpec::for_codec(codec);
        assert_eq!(row["outer_lr"].as_f64(), Some(outer.lr), "{row}");
        assert_eq!(row["outer_rule"].as_str(), Some(outer.rule.to_string().as_str()), "{row}");
    }
    // ...unless --keep-outer keeps the spec's.
    let kept = rows(&["--codecs", "sparse:64/4096+2bit", "--keep-outer"]);
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|r| r["outer_lr"].as_f64() == Some(0.5)), "{kept:?}");
    fails(&["bench", "codecs", "--nodes", "1"], &["--nodes"]);
    fails(&["bench", "codecs", "--spec", "/nonexistent/spec.toml"], &["--spec"]);
}

/// `bench scale` runs a lone `starling run` node per size and prints one JSON
/// object per size with every figure; a bad size names `--sizes`, and a
/// language model without text names `--text`.
#[test]
fn bench_scale_prints_a_json_object_per_size() {
    let out = ok(&["bench", "scale", "--sizes", "2e4", "--rounds", "1", "--steps", "2", "--json"], &[]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    let row: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for field in [
        "size",
        "model",
        "params",
        "param_bytes",
        "rounds",
        "steps",
        "codec",
        "peak_rss_bytes",
        "rss_per_param_byte",
        "train_seconds",
        "encode_sign_seconds",
        "merge_outer_seconds",
        "checkpoint_seconds",
        "outbox_seconds",
        "eval_seconds",
        "wall_seconds",
        "datadir_bytes",
        "unsent_signed_delta_bytes_per_round",
    ] {
        assert!(row.get(field).is_some(), "no {field} in {row}");
    }
    // [32, 121, 121, 10]: the nearest MLP to 2e4 parameters.
    assert_eq!((row["model"].as_str(), row["params"].as_u64()), (Some("mlp 32-121-121-10"), Some(19_975)));
    assert_eq!((row["param_bytes"].as_u64(), row["rounds"].as_u64()), (Some(4 * 19_975), Some(1)));
    let param_bytes = 4 * 19_975;
    assert!(row["peak_rss_bytes"].as_u64().unwrap() > param_bytes, "{row}");
    assert!(row["datadir_bytes"].as_u64().unwrap() > param_bytes, "{row}");
    // A dense delta carries every parameter, plus its signature and header.
    assert!(row["unsent_signed_delta_bytes_per_round"].as_u64().unwrap() > param_bytes, "{row}");

    fails(&["bench", "scale", "--sizes", "1e6,1x"], &["--sizes", "`1x`", "1e6", "lm-tiny"]);
    fails(&["bench", "scale", "--sizes", "lm-tiny"], &["--text", "lm-tiny"]);
}
