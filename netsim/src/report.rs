//! What a simulation reports: one [`RoundRow`] per round and a [`Summary`],
//! written as `rounds.csv`, `summary.json` and SVG plots.
//!
//! Everything here is a pure function of the simulation's outcome except the
//! two host figures (`wall_seconds`, `peak_rss_bytes`), which measure the
//! machine that ran it; `--no-host-figures` leaves them out so that two runs of
//! the same scenario and seed give byte-identical files.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::plot::{self, Chart, Marker, Series};

/// Figures of one round, over the nodes that merged it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RoundRow {
    pub round: u64,
    /// Nodes that merged this round.
    pub active_nodes: usize,
    /// Over the evaluated nodes (all nodes for cheap workloads, a fixed sample otherwise).
    pub mean_accuracy: Option<f64>,
    pub min_accuracy: Option<f64>,
    pub mean_loss: f64,
    pub max_loss: f64,
    /// RMS over nodes of ‖θᵢ − θ̄‖ / ‖θ̄‖.
    pub consensus_distance: f64,
    /// First deliveries of this round's deltas over the deliveries owed (every
    /// other live node of the swarm, or of the group).
    pub delivered_fraction: f64,
    /// From publish to first arrival at each receiver (ms).
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// Bytes of this round's deltas and state transfers, per active node.
    pub bytes_sent_per_node: f64,
    pub bytes_received_per_node: f64,
    /// Honest nodes whose round closed at the deadline rather than by quorum
    /// (an attacker's merges are not counted).
    pub deadline_closes: usize,
    /// State transfers (catch-up and repair) during the round.
    pub state_syncs: usize,
}

/// The whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub mode: String,
    pub seed: u64,
    pub nodes: usize,
    pub rounds: u64,
    pub params: usize,
    pub codec: String,
    pub final_mean_accuracy: Option<f64>,
    pub final_min_accuracy: Option<f64>,
    pub final_loss: f64,
    pub final_consensus_distance: f64,
    pub delivered_fraction: f64,
    pub bytes_sent_per_node_per_round: f64,
    pub bytes_received_per_node_per_round: f64,
    pub deadline_closes: usize,
    pub state_syncs: usize,
    /// Messages refused by reason, over all nodes.
    pub refused_deltas: std::collections::BTreeMap<String, u64>,
    /// With attackers: the honest nodes' final mean accuracy (the row figures
    /// are always over honest nodes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honest_mean_accuracy: Option<f64>,
    /// With attackers: attackers among the initial nodes, and the attack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attackers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    /// With forging, equivocating or replaying attackers: their lies (every
    /// delta they signed; a replayer's from its first replay on) that honest
    /// nodes merged (the protocol's target is zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack_deltas_merged: Option<u64>,
    /// In a `sync-sybil` run: forged states honest nodes installed (the
    /// protocol's target is zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forged_states_installed: Option<u64>,
    /// Virtual mode: times an honest node signed a second, different delta
    /// for a round it had signed (the protocol's target is zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honest_equivocations: Option<u64>,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    /// Simulated time at the end (virtual mode), or wall time (live mode).
    pub virtual_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

const CSV_HEADER: &str =
    "round,active_nodes,mean_accuracy,min_accuracy,mean_loss,max_loss,consensus_distance,\
delivered_fraction,p50_latency_ms,p99_latency_ms,bytes_sent_per_node,bytes_received_per_node,\
deadline_closes,state_syncs";

/// The rows as CSV, with a fixed number format.
pub fn rounds_csv(rows: &[RoundRow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    // Figures a mode does not observe (live mode's delta latency) stay empty.
    let ms = |v: f64| if v.is_finite() { format!("{v:.1}") } else { String::new() };
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.6e},{:.6e},{:.6e},{:.6},{},{},{:.1},{:.1},{},{}",
            r.round,
            r.active_nodes,
            opt(r.mean_accuracy),
            opt(r.min_accuracy),
            r.mean_loss,
            r.max_loss,
            r.consensus_distance,
            r.delivered_fraction,
            ms(r.p50_latency_ms),
            ms(r.p99_latency_ms),
            r.bytes_sent_per_node,
            r.bytes_received_per_node,
            r.deadline_closes,
            r.state_syncs
        );
    }
    out
}

/// Writes `summary.json`, `rounds.csv` and the plots into `dir`.
pub fn write(
    dir: &Path,
    summary: &Summary,
    rows: &[RoundRow],
    markers: &[(u64, String)],
) -> Result<(), ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReportError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = serde_json::to_string_pretty(summary).expect("a summary serializes") + "\n";
    let path = dir.join("summary.json");
    std::fs::write(&path, json).map_err(io(&path))?;
    let path = dir.join("rounds.csv");
    std::fs::write(&path, rounds_csv(rows)).map_err(io(&path))?;
    write_plots(dir, summary, rows, markers)
}

fn write_plots(
    dir: &Path,
    summary: &Summary,
    rows: &[RoundRow],
    markers: &[(u64, String)],
) -> Result<(), ReportError> {
    let markers: Vec<Marker> =
        markers.iter().map(|(x, label)| Marker { x: *x as f64, label: label.clone() }).collect();
    let line = |label: &str, f: &dyn Fn(&RoundRow) -> Option<f64>| Series {
        label: label.to_string(),
        points: rows.iter().filter_map(|r| f(r).map(|y| (r.round as f64, y))).collect(),
    };
    let title = |what: &str| format!("{} — {what} ({} nodes)", summary.scenario, summary.nodes);
    let quality = if rows.iter().any(|r| r.mean_accuracy.is_some()) {
        Chart {
            title: title("accuracy"),
            x_label: "round".into(),
            y_label: "accuracy on held-out data".into(),
            log_y: false,
            series: vec![
                line("mean over nodes", &|r| r.mean_accuracy),
                line("worst node", &|r| r.min_accuracy),
            ],
            markers: markers.clone(),
        }
    } else {
        Chart {
            title: title("loss"),
            x_label: "round".into(),
            y_label: "relative squared error to the optimum".into(),
            log_y: true,
            series: vec![
                line("mean over nodes", &|r| Some(r.mean_loss)),
                line("worst node", &|r| Some(r.max_loss)),
            ],
            markers: markers.clone(),
        }
    };
    let consensus = Chart {
        title: title("consensus distance"),
        x_label: "round".into(),
        y_label: "RMS ‖θᵢ − θ̄‖ / ‖θ̄‖".into(),
        log_y: true,
        series: vec![line("consensus distance", &|r| Some(r.consensus_distance))],
        markers: markers.clone(),
    };
    let network = Chart {
        title: title("delivery"),
        x_label: "round".into(),
        y_label: "fraction of owed deliveries".into(),
        log_y: false,
        series: vec![
            line("delivered fraction", &|r| Some(r.delivered_fraction)),
            line("active nodes / initial", &|r| Some(r.active_nodes as f64 / summary.nodes.max(1) as f64)),
        ],
        markers: markers.clone(),
    };
    let bytes = Chart {
        title: title("traffic"),
        x_label: "round".into(),
        y_label: "bytes per node".into(),
        log_y: false,
        series: vec![
            line("sent", &|r| Some(r.bytes_sent_per_node)),
            line("received", &|r| Some(r.bytes_received_per_node)),
        ],
        markers,
    };
    let name = if rows.iter().any(|r| r.mean_accuracy.is_some()) { "accuracy.svg" } else { "loss.svg" };
    plot::write_svg(&dir.join(name), &quality)?;
    plot::write_svg(&dir.join("consensus.svg"), &consensus)?;
    plot::write_svg_panels(&dir.join("overview.svg"), &[quality, consensus, network, bytes])?;
    Ok(())
}

/// The process's peak resident memory (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
