//! The HTTP API of real `starling run` processes: Prometheus metrics whose
//! every family has HELP and TYPE and whose values move as the nodes train,
//! `/health`, `/status` with its round history, `starling status`, the
//! address file's life, and the errors of a busy port and of no node at all.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    http::{get, starling, status, wait_addr},
    run_args, test_spec, write_spec,
};

const WAIT: Duration = Duration::from_secs(180);

/// The families that `# HELP` and `# TYPE` name, and every sample's family;
/// panics naming a sample whose family lacks either.
fn check_exposition(text: &str) -> BTreeSet<String> {
    let mut help = BTreeSet::new();
    let mut types = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                help.insert(name.to_string());
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                types.insert(name.to_string());
            }
            _ => {}
        }
    }
    assert!(text.trim_end().ends_with("# EOF"), "the exposition ends with # EOF");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "sample value of {line:?} is not a number");
        let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info", ""]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|f| types.contains(*f))
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(help.contains(family), "family {family} has no # HELP");
    }
    assert_eq!(help, types, "every family has both # HELP and # TYPE");
    types
}

/// The value of the first sample named `name` whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
}

#[test]
fn two_nodes_serve_metrics_health_status_and_the_status_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = test_spec("http-api");
    spec.round.deadline_ms = 5_000;
    let spec_path = write_spec(dir.path(), &spec);
    let datadirs: Vec<String> =
        (0..2).map(|i| dir.path().join(format!("node-{i}")).to_str().unwrap().to_string()).collect();
    let mut first = common::http::start(
        "node-0",
        run_args(&datadirs[0], &spec_path, &["--http", "127.0.0.1:0", "--evaluate", "--wait-peers", "1"]),
    );
    let boot = first.tcp_address();
    let mut second = common::http::start(
        "node-1",
        run_args(
            &datadirs[1],
            &spec_path,
            &["--http", "127.0.0.1:0", "--evaluate", "--wait-peers", "1", "--bootnodes", &boot],
        ),
    );
    let addr = wait_addr(&datadirs[0], WAIT);
    first.wait_merged(1, WAIT);
    second.wait_merged(1, WAIT);

    let (code, before) = get(addr, "/metrics");
    assert_eq!(code, 200, "{before}");
    let families = check_exposition(&before);
    for family in [
        "starling_round",
        "starling_train_loss",
        "starling_eval_accuracy",
        "starling_peers",
        // (`starling_deltas_refused_total{reason}` appears with the first refusal.)
        "starling_deltas_accepted",
        "starling_deltas_published",
        "starling_network_bytes",
        "starling_train_seconds",
        "starling_merge_seconds",
        "libp2p_bandwidth_bytes",
        "libp2p_swarm_connections_established",
        "libp2p_gossipsub_messages",
        "libp2p_identify_received",
    ] {
        assert!(families.contains(family), "no family {family} in /metrics:\n{before}");
    }
    let merged_before = sample(&before, "starling_merge_seconds_count", "");
    first.wait_merged(merged_before as u64 + 2, WAIT);
    let (_, after) = get(addr, "/metrics");
    check_exposition(&after);
    for (name, labels) in [
        ("starling_round", ""),
        ("starling_deltas_accepted_total", ""),
        ("starling_deltas_published_total", ""),
        ("starling_train_seconds_count", ""),
        ("starling_merge_seconds_count", ""),
        ("starling_network_bytes_total", "direction=\"in\""),
        ("starling_network_bytes_total", "direction=\"out\""),
    ] {
        let (was, now) = (sample(&before, name, labels), sample(&after, name, labels));
        assert!(now > was, "{name}{{{labels}}} did not move as the node trained: {was} then {now}");
    }
    assert_eq!(sample(&after, "starling_peers", ""), 1.0);
    let accuracy = sample(&after, "starling_eval_accuracy", "");
    assert!(accuracy > 0.0 && accuracy <= 1.0, "accuracy {accuracy}");
    println!("/metrics: {} bytes, {} families", after.len(), check_exposition(&after).len());

    let (code, health) = get(addr, "/health");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!((health["healthy"].as_bool(), health["state"].as_str()), (Some(true), Some("training")));

    let now = status(addr);
    assert_eq!(now["state"], "training");
    assert_eq!(now["peers"], 1);
    assert!(now["peer_id"].as_str().unwrap().starts_with("12D3KooW"), "{now}");
    assert_eq!(now["run_id"].as_str().unwrap(), spec.run_id().to_string());
    assert!(now["bytes_in"].as_u64().unwrap() > 0 && now["bytes_out"].as_u64().unwrap() > 0);
    let history = now["history"].as_array().unwrap();
    let merged = now["rounds_merged"].as_u64().unwrap();
    assert_eq!(history.len() as u64, merged, "one history point per merged round");
    assert!(merged >= 3, "{now}");
    let rounds: Vec<u64> = history.iter().map(|p| p["round"].as_u64().unwrap()).collect();
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "rounds in order: {rounds:?}");
    for point in history {
        assert!(point["accuracy"].as_f64().is_some_and(|a| a > 0.0), "{point}");
        assert!(point["loss"].as_f64().is_some(), "{point}");
        assert!(point["merged"].as_u64().is_some_and(|m| m >= 1), "{point}");
    }
    assert!(history.iter().any(|p| p["bytes_in"].as_u64() > Some(0)), "bytes per round: {now}");
    println!("/status: {} bytes with {} rounds of history", get(addr, "/status").1.len(), history.len());

    // `starling status` finds the node through its datadir.
    let out = starling(&["status", "--datadir", &datadirs[0]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("training at round") && text.contains(&format!("http://{addr}/")), "{text}");
    let out = starling(&["status", "--http", &addr.to_string(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    assert_eq!(json["peer_id"], now["peer_id"]);

    // While the node holds its datadir, `key show` and `export` ask it instead.
    let out = starling(&["key", "show", "--datadir", &datadirs[0]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), now["peer_id"].as_str().unwrap());
    let model = dir.path().join("live.safetensors");
    let out = starling(&["export", "--out", model.to_str().unwrap(), "--datadir", &datadirs[0]]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("from the node running on"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tensors = candle_core::safetensors::load(&model, &candle_core::Device::Cpu)
        .expect("candle loads the live export");
    let count: usize = tensors.values().map(|t| t.elem_count()).sum();
    assert_eq!(count, spec.param_count(), "every parameter of the model");

    // A clean stop removes the address file; `starling status` then says no node runs.
    second.interrupt();
    first.interrupt();
    first.wait_exit(Duration::from_secs(30));
    second.wait_exit(Duration::from_secs(30));
    for datadir in &datadirs {
        assert!(!std::path::Path::new(datadir).join("http.addr").exists(), "http.addr left in {datadir}");
    }
    let out = starling(&["status", "--datadir", &datadirs[0]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node is running on datadir") && err.contains("starling run"), "{err}");
}

#[test]
fn a_waiting_node_is_unhealthy_and_a_busy_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write_spec(dir.path(), &test_spec("http-waiting"));
    let datadir = dir.path().join("waiting").to_str().unwrap().to_string();
    let mut node = common::http::start(
        "waiting",
        run_args(
            &datadir,
            &spec_path,
            &["--http", "127.0.0.1:0", "--wait-peers", "3", "--wait-timeout", "600", "--threads", "1"],
        ),
    );
    let addr = wait_addr(&datadir, WAIT);
    node.wait_for_line("training threads capped threads=1", WAIT);
    let (code, body) = get(addr, "/health");
    assert_eq!(code, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["state"], "waiting");
    assert!(health["reason"].as_str().unwrap().contains("--wait-peers"), "{body}");
    let (code, page) = get(addr, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("<svg id=\"chart-loss\"") && !page.contains("http://cdn"),
        "the dashboard is self-contained"
    );

    // A second node asked to serve on the same port fails at once and says what to change.
    let other = dir.path().join("other").to_str().unwrap().to_string();
    let out = starling(
        &run_args(&other, &spec_path, &["--http", &addr.to_string()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http") && err.contains("is free now") && err.contains("--no-http"), "{err}");
    node.interrupt();
    node.wait_exit(Duration::from_secs(30));

    let nowhere = dir.path().join("never-started").to_str().unwrap().to_string();
    let out = starling(&["status", "--datadir", &nowhere]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("no node is running on datadir {nowhere}")),
        "{err}"
    );
}
