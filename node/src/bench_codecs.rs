//! `starling bench codecs`: one spec run as a local swarm once per codec, dense
//! first as the reference, with bytes, compression and held-out quality per
//! codec, as a Markdown table or one JSON object per line (`--json`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use starling_protocol::{Codec, OuterRule, RunSpec};

use crate::local_swarm::{run_swarm, SwarmOptions, SwarmSummary};
use crate::units::human_bytes;

/// `starling bench codecs`.
#[derive(Debug, Args)]
pub struct CodecsArgs {
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Codecs to compare, comma-separated; dense is always run first as the reference.
    #[arg(long, value_delimiter = ',', default_values_t = default_codecs())]
    pub codecs: Vec<Codec>,
    /// The run spec (TOML) to run through every codec; the built-in task by default.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Keep the spec's outer step for every codec, instead of the one that
    /// suits each codec (what `starling spec new --codec` writes).
    #[arg(long)]
    pub keep_outer: bool,
    /// Print one JSON object per codec, one per line, instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The codecs compared when --codecs is not given.
fn default_codecs() -> Vec<Codec> {
    [
        "f16",
        "int8",
        "topk:0.1",
        "topk:0.05+int8",
        "topk:0.02+int8",
        "topk:0.01+int8",
        // 0.5 % of coordinates.
        "topk:0.005+int8",
        "sparse:64/4096+4bit",
        "sparse:64/4096+2bit",
        // 0.39 % of coordinates.
        "sparse:16/4096+2bit",
        // Rank 4 of each weight matrix with 8-bit factors, rank 8 with 4-bit
        // ones (for language models).
        "lowrank:4",
        "lowrank:8+4bit",
    ]
    .iter()
    .map(|c| c.parse().expect("valid codec"))
    .collect()
}

/// The figures of one codec (a line of `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct CodecRow {
    pub codec: String,
    /// The outer step the codec ran with.
    pub outer_rule: OuterRule,
    pub outer_lr: f64,
    pub outer_momentum: f64,
    pub feedback_decay: f64,
    pub nodes: usize,
    pub rounds: u64,
    /// Encoded bytes of one node's delta per round.
    pub delta_bytes: f64,
    /// Every byte a node sends per round: deltas, headers, signatures,
    /// gossip control and duplicates.
    pub bytes_sent_per_node_per_round: f64,
    /// Dense's bytes sent per node per round over this codec's.
    pub ratio_vs_dense: f64,
    /// Dense's delta bytes over this codec's.
    pub delta_ratio_vs_dense: f64,
    /// Bytes a node receives over what it must (every other node's delta).
    pub received_over_needed: f64,
    /// Mean held-out accuracy of the nodes' final parameters, in [0, 1]
    /// (classifiers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f32>,
    /// Dense's accuracy minus this codec's, in [0, 1] (classifiers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_loss_vs_dense: Option<f32>,
    /// Mean held-out loss (nats; per token for a language model).
    pub eval_loss: f32,
    /// This codec's held-out loss over dense's.
    pub eval_loss_ratio_vs_dense: f32,
}

/// The spec each codec runs: `base` with the codec, and unless `keep_outer`
/// the outer step that suits it.
pub fn spec_for(base: &RunSpec, codec: Codec, keep_outer: bool) -> RunSpec {
    if keep_outer {
        RunSpec { codec, ..base.clone() }
    } else {
        base.clone().with_codec(codec)
    }
}

/// Runs the spec through every codec and prints a row as each one finishes.
pub async fn codecs(args: CodecsArgs) -> Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2: a codec is measured on what nodes send each other");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let base = match &args.spec {
        Some(path) => crate::spec_file::load_spec(path)?,
        None => RunSpec::builtin(),
    };
    let mut all = vec![Codec::Dense];
    all.extend(args.codecs.iter().copied().filter(|c| *c != Codec::Dense));
    if !args.json {
        println!(
            "| codec | outer | delta bytes | sent/node/round | ratio vs dense (sent) | received/needed | {} | vs dense |",
            if base.model.is_language_model() { "held-out loss" } else { "accuracy" }
        );
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    let mut dense: Option<SwarmSummary> = None;
    for codec in all {
        let spec = spec_for(&base, codec, args.keep_outer);
        let summary = run_swarm(SwarmOptions {
            progress_to_stderr: true,
            quiet: true,
            centralized_baseline: false,
            ..SwarmOptions::new(args.nodes, args.rounds, spec.clone())
        })
        .await?;
        let reference = dense.get_or_insert_with(|| summary.clone());
        let row = row(&spec, &summary, reference);
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            print_row(&row);
        }
    }
    Ok(())
}

/// The figures of `summary` against the dense run's.
fn row(spec: &RunSpec, summary: &SwarmSummary, dense: &SwarmSummary) -> CodecRow {
    let nodes = summary.nodes as f64;
    let delta = summary.unique_delta_bytes_per_round / nodes;
    let dense_delta = dense.unique_delta_bytes_per_round / nodes;
    let classifier = !spec.model.is_language_model();
    CodecRow {
        codec: spec.codec.to_string(),
        outer_rule: spec.outer.rule,
        outer_lr: spec.outer.lr,
        outer_momentum: spec.outer.momentum,
        feedback_decay: spec.feedback_decay,
        nodes: summary.nodes,
        rounds: summary.rounds,
        delta_bytes: delta,
        bytes_sent_per_node_per_round: summary.bytes_sent_per_node_per_round,
        ratio_vs_dense: dense.bytes_sent_per_node_per_round / summary.bytes_sent_per_node_per_round,
        delta_ratio_vs_dense: dense_delta / delta,
        received_over_needed: summary.received_over_needed,
        accuracy: classifier.then_some(summary.mean_accuracy),
        accuracy_loss_vs_dense: classifier.then_some(dense.mean_accuracy - summary.mean_accuracy),
        eval_loss: summary.mean_loss,
        eval_loss_ratio_vs_dense: summary.mean_loss / dense.mean_loss,
    }
}

fn print_row(row: &CodecRow) {
    let outer = match row.outer_rule {
        OuterRule::Momentum => format!("lr {} μ {}", row.outer_lr, row.outer_momentum),
        OuterRule::Sparseloco => format!("sparseloco lr {} β {}", row.outer_lr, row.feedback_decay),
    };
    let (quality, versus) = match (row.accuracy, row.accuracy_loss_vs_dense) {
        (Some(accuracy), Some(loss)) => {
            (format!("{:.2}%", accuracy * 100.0), format!("{:+.2} pt", (0.0 - loss) * 100.0))
        }
        _ => (format!("{:.4}", row.eval_loss), format!("{:.3}×", row.eval_loss_ratio_vs_dense)),
    };
    println!(
        "| {} | {outer} | {} | {} | {:.1}x | {:.2} | {quality} | {versus} |",
        row.codec,
        human_bytes(row.delta_bytes),
        human_bytes(row.bytes_sent_per_node_per_round),
        row.ratio_vs_dense,
        row.received_over_needed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_goes_to_half_a_percent_and_holds_the_sparse_codecs() {
        let codecs = default_codecs();
        let params = RunSpec::builtin().param_count();
        let density =
            |c: &Codec| c.max_payload_len(params) as f64 / Codec::Dense.max_payload_len(params) as f64;
        assert!(codecs.iter().any(|c| matches!(c, Codec::Sparse { .. })));
        assert!(codecs.iter().any(|c| match c {
            Codec::TopK { ppm, .. } => *ppm <= 5_000,
            Codec::Sparse { k, chunk, .. } => (*k as f64) / (*chunk as f64) <= 0.005,
            _ => false,
        }));
        assert!(codecs.iter().all(|c| density(c) < 1.0));
    }

    #[test]
    fn each_codec_gets_its_own_outer_step_unless_kept() {
        let mut base = RunSpec::builtin();
        base.outer.lr = 0.123;
        let sparse: Codec = "sparse:64/4096+2bit".parse().unwrap();
        let suited = spec_for(&base, sparse, false);
        assert_eq!(suited, RunSpec::builtin_with_codec(sparse));
        let kept = spec_for(&base, sparse, true);
        assert_eq!((kept.codec, &kept.outer), (sparse, &base.outer));
    }
}
