//! `starling bench scale`: what a node costs as the model grows. For each size
//! (an MLP of about N parameters, or a language-model preset) one `starling
//! run` child process trains alone in a temporary datadir for a few rounds,
//! with `--evaluate` and `--summary`; its peak resident memory comes from
//! `wait4`'s rusage (its own, no sampling), its time split from the summary it
//! writes, its disk from walking the datadir after it stopped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    str::FromStr,
    time::Instant,
};

use serde::Serialize;
use starling_protocol::{
    spec::{OuterSpec, GPT_PRESETS},
    Codec, DatasetKind, ModelSpec, RunSpec,
};

use crate::{
    lm_spec::SpecModelArgs,
    run_summary::{RunSummary, SummaryError},
    units::human_bytes,
};

/// The sizes run when `--sizes` is absent.
pub const DEFAULT_SIZES: &str = "1e6,1e7,1e8,lm-tiny,lm-small,gpt2-small";

/// One model size of the benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Size {
    /// An MLP `[32, h, h, 10]` on the built-in task with about this many
    /// parameters; `label` is how it was written.
    Mlp { params: usize, label: String },
    /// A GPT preset by name.
    Lm(String),
}

/// Why `bench scale` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(
        "--sizes: `{0}` is not a model size; give a parameter count of at least 1000 such as 1e6 or \
         2500000 (an MLP of about that many parameters) or a language-model preset ({presets})",
        presets = preset_names()
    )]
    BadSize(String),
    #[error(
        "the language-model size {0} trains on text: pass --text PATH (a text file or a directory of \
         them), or leave it out of --sizes (e.g. --sizes 1e6,1e7,1e8)"
    )]
    NeedsText(String),
    #[error("the spec of size {size}: {reason}")]
    Spec { size: String, reason: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the node of size {size} failed ({status}); the end of its log {log}:\n{tail}")]
    Node { size: String, status: String, log: PathBuf, tail: String },
    #[error(transparent)]
    Summary(#[from] SummaryError),
}

fn preset_names() -> String {
    GPT_PRESETS.iter().map(|(name, _, _)| *name).collect::<Vec<_>>().join(", ")
}

impl FromStr for Size {
    type Err = ScaleError;
    fn from_str(text: &str) -> Result<Self, ScaleError> {
        let text = text.trim();
        if GPT_PRESETS.iter().any(|(name, _, _)| *name == text) {
            return Ok(Size::Lm(text.to_string()));
        }
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() && (1000.0..=2e8).contains(&n) => {
                Ok(Size::Mlp { params: n.round() as usize, label: text.to_string() })
            }
            _ => Err(ScaleError::BadSize(text.to_string())),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Mlp { label, .. } => write!(f, "{label}"),
            Size::Lm(name) => write!(f, "{name}"),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    pub sizes: Vec<Size>,
    pub rounds: u64,
    /// Inner steps per round instead of the spec's.
    pub steps: Option<u32>,
    /// The delta codec instead of the spec's (dense).
    pub codec: Option<Codec>,
    /// Text for the language models.
    pub text: Option<PathBuf>,
    /// `--checkpoint-every` of each node.
    pub checkpoint_every: u64,
}

/// One size's figures. Times are seconds per merged round.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    pub size: String,
    /// `mlp 32-978-978-10` or the preset's name.
    pub model: String,
    pub params: usize,
    /// Parameters as f32.
    pub param_bytes: u64,
    pub rounds: u64,
    pub steps: u32,
    pub codec: String,
    /// The node's high-water mark of resident memory.
    pub peak_rss_bytes: u64,
    pub rss_per_param_byte: f64,
    pub train_seconds: f64,
    /// Error feedback, encoding and signing of our delta.
    pub encode_sign_seconds: f64,
    /// Aggregation and outer step.
    pub merge_outer_seconds: f64,
    pub checkpoint_seconds: f64,
    /// Saving our delta and residual before the delta goes out.
    pub outbox_seconds: f64,
    /// One evaluation of the held-out split (the node evaluates every
    /// `evaluate_every` rounds and the last; a 3-round run may evaluate once).
    pub eval_seconds: f64,
    /// How often the node evaluates: `--evaluate-every` left to the node,
    /// which keeps evaluation near 5 % of the training.
    pub evaluate_every: u64,
    /// `eval_seconds` spread over the rounds between two evaluations.
    pub eval_seconds_per_round: f64,
    /// From the end of one round's training to the start of the next, on
    /// average: what the rest of a round adds to its training (the work above
    /// that runs beside the next training is not in it).
    pub between_trainings_seconds: f64,
    /// CPU seconds a round of encode+sign, merge+outer, checkpoint and outbox
    /// took on their workers' threads (their wall times above also count what
    /// the OS gave the training beside them, and waits on the disk).
    pub outside_training_cpu_seconds: f64,
    /// What a round adds to its training, as a share of it: the time between
    /// trainings and the evaluation's time per round.
    pub outside_training_share: f64,
    /// The node process from start to exit (start-up, every round, the linger
    /// before it leaves).
    pub wall_seconds: f64,
    /// Everything in the datadir after the node stopped.
    pub datadir_bytes: u64,
    /// A lone node sends nothing: this is the signed delta it would publish
    /// each round, what every peer would receive from it.
    pub unsent_signed_delta_bytes_per_round: u64,
}

/// Runs each size in turn, handing every row to `on_row` as it is measured.
pub fn scale(options: &ScaleOptions, mut on_row: impl FnMut(&ScaleRow)) -> Result<Vec<ScaleRow>, ScaleError> {
    // Every size's spec first: a missing --text fails before minutes of training.
    let dir = tempfile::tempdir().map_err(io("cannot create a temporary directory"))?;
    let mut specs = Vec::new();
    for (i, size) in options.sizes.iter().enumerate() {
        let size_dir = dir.path().join(format!("{i}-{size}"));
        std::fs::create_dir_all(&size_dir).map_err(io("cannot create a temporary directory"))?;
        specs.push((size, size_spec(size, options, &size_dir)?, size_dir));
    }
    let mut rows = Vec::new();
    for (size, spec, size_dir) in specs {
        let row = measure(size, &spec, options, &size_dir)?;
        on_row(&row);
        rows.push(row);
        // Each datadir goes as soon as it is measured: the big ones are GBs.
        let _ = std::fs::remove_dir_all(&size_dir);
    }
    Ok(rows)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> ScaleError + '_ {
    move |source| ScaleError::Io { what: what.to_string(), source }
}

/// The run spec of `size`, written (with an LM's tokenizer) into `dir`.
fn size_spec(size: &Size, options: &ScaleOptions, dir: &Path) -> Result<RunSpec, ScaleError> {
    let spec_err = |reason: String| ScaleError::Spec { size: size.to_string(), reason };
    let mut spec = RunSpec::builtin();
    match size {
        Size::Mlp { params, label } => {
            spec.name = format!("bench-scale-{label}");
            spec.model = ModelSpec::mlp(vec![32, mlp_width(*params), mlp_width(*params), 10]);
        }
        Size::Lm(name) => {
            let text = options.text.as_ref().ok_or_else(|| ScaleError::NeedsText(name.clone()))?;
            let args = SpecModelArgs {
                model: name.clone(),
                data: Some(DatasetKind::Text(text.display().to_string())),
                vocab: None,
                tokenizer: None,
            };
            args.apply(&mut spec, Some(&dir.join("spec.toml"))).map_err(|e| spec_err(format!("{e:#}")))?;
        }
    }
    if let Some(codec) = options.codec {
        spec.codec = codec;
        spec.outer = OuterSpec::for_codec(codec);
    }
    if let Some(steps) = options.steps {
        spec.inner.steps = steps;
    }
    spec.validate().map_err(|e| spec_err(e.to_string()))?;
    std::fs::write(dir.join("spec.toml"), spec.to_toml()).map_err(io("cannot write the spec"))?;
    Ok(spec)
}

/// The hidden width `h` of `[32, h, h, 10]` whose parameter count,
/// h² + 44h + 10, comes nearest `params`.
fn mlp_width(params: usize) -> usize {
    let h = (-44.0 + (44.0f64 * 44.0 + 4.0 * params.saturating_sub(10) as f64).sqrt()) / 2.0;
    (h.round() as usize).max(1)
}

/// Runs one lone node on `spec` for `rounds` rounds and reads its figures.
fn measure(size: &Size, spec: &RunSpec, options: &ScaleOptions, dir: &Path) -> Result<ScaleRow, ScaleError> {
    let rounds = options.rounds;
    let (datadir, log, summary_path) = (dir.join("node"), dir.join("node.log"), dir.join("summary.json"));
    let log_file = std::fs::File::create(&log).map_err(io("cannot create the node's log"))?;
    let exe = std::env::current_exe().map_err(io("cannot find the starling binary"))?;
    let started = Instant::now();
    let child = Command::new(exe)
        .arg("run")
        .arg("--datadir")
        .arg(&datadir)
        .arg("--spec")
        .arg(dir.join("spec.toml"))
        .arg("--summary")
        .arg(&summary_path)
        .args(["--rounds", &rounds.to_string(), "--evaluate", "--wait-peers", "0", "--target-peers", "0"])
        .args(["--checkpoint-every", &options.checkpoint_every.max(1).to_string()])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-http"])
        .env_remove("STARLING_BOOTNODES")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io("cannot open the node's log"))?)
        .stderr(log_file)
        .spawn()
        .map_err(io("cannot start the node"))?;
    let (status, peak_rss_bytes) = wait_with_peak_rss(child.id()).map_err(io("cannot wait for the node"))?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(ScaleError::Node { size: size.to_string(), status: status.to_string(), log, tail });
    }
    let summary = RunSummary::read(&summary_path)?;
    let merged = summary.rounds_merged.max(1) as f64;
    let per_round = |kind: &str| summary.seconds(kind) / merged;
    let param_bytes = 4 * summary.params as u64;
    let evaluate_every = crate::node::auto_evaluate_every(spec);
    let eval_seconds = summary.seconds("eval") / summary.count("eval").max(1) as f64;
    let between_trainings_seconds =
        summary.seconds("between_trainings") / summary.count("between_trainings").max(1) as f64;
    let train_seconds = per_round("train");
    let eval_seconds_per_round = eval_seconds / evaluate_every as f64;
    Ok(ScaleRow {
        size: size.to_string(),
        model: match &spec.model {
            ModelSpec::Mlp(m) => {
                format!("mlp {}", m.layers.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("-"))
            }
            _ => size.to_string(),
        },
        params: summary.params,
        param_bytes,
        rounds: summary.rounds_merged,
        steps: spec.inner.steps,
        codec: spec.codec.to_string(),
        peak_rss_bytes,
        rss_per_param_byte: peak_rss_bytes as f64 / param_bytes.max(1) as f64,
        train_seconds,
        encode_sign_seconds: per_round("encode"),
        merge_outer_seconds: per_round("merge"),
        checkpoint_seconds: per_round("checkpoint"),
        outbox_seconds: per_round("outbox"),
        eval_seconds,
        evaluate_every,
        eval_seconds_per_round,
        between_trainings_seconds,
        outside_training_cpu_seconds: ["encode", "merge", "checkpoint", "outbox"]
            .iter()
            .map(|kind| summary.cpu_seconds(kind))
            .sum::<f64>()
            / merged,
        outside_training_share: (between_trainings_seconds + eval_seconds_per_round)
            / train_seconds.max(1e-9),
        wall_seconds: wall,
        datadir_bytes: dir_bytes(&datadir),
        unsent_signed_delta_bytes_per_round: summary.published_bytes / summary.count("encode").max(1),
    })
}

/// Reaps the child `pid` and returns its exit status and peak resident memory
/// (`ru_maxrss` of its own rusage, in kilobytes on Linux).
fn wait_with_peak_rss(pid: u32) -> std::io::Result<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes one int and one rusage, both alive for the call.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return Ok((std::process::ExitStatus::from_raw(status), usage.ru_maxrss as u64 * 1024));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Bytes of every file under `path`.
fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The table's header line.
pub fn table_header() -> String {
    format!(
        "{:<10} {:>11} {:>10} {:>10} {:>6} | {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>5} {:>7} {:>7} {:>6} | {:>7} {:>10} {:>18}",
        "size",
        "params",
        "params B",
        "peak RSS",
        "RSS/B",
        "train",
        "enc+sig",
        "merge",
        "ckpt",
        "outbox",
        "eval",
        "every",
        "between",
        "work cpu",
        "share",
        "node s",
        "datadir",
        "delta/round unsent"
    )
}

impl ScaleRow {
    /// The row under [`table_header`]: seconds per round, but the node's whole run.
    pub fn table_line(&self) -> String {
        format!(
            "{:<10} {:>11} {:>10} {:>10} {:>6.1} | {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>5} {:>7.3} {:>7.3} {:>5.1}% | {:>7.1} {:>10} {:>18}",
            self.size,
            self.params,
            human_bytes(self.param_bytes as f64),
            human_bytes(self.peak_rss_bytes as f64),
            self.rss_per_param_byte,
            self.train_seconds,
            self.encode_sign_seconds,
            self.merge_outer_seconds,
            self.checkpoint_seconds,
            self.outbox_seconds,
            self.eval_seconds,
            self.evaluate_every,
            self.between_trainings_seconds,
            self.outside_training_cpu_seconds,
            100.0 * self.outside_training_share,
            self.wall_seconds,
            human_bytes(self.datadir_bytes as f64),
            human_bytes(self.unsent_signed_delta_bytes_per_round as f64)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_counts_or_presets_and_a_bad_one_names_the_flag() {
        assert_eq!("1e6".parse::<Size>().unwrap(), Size::Mlp { params: 1_000_000, label: "1e6".into() });
        assert_eq!("2500".parse::<Size>().unwrap(), Size::Mlp { params: 2500, label: "2500".into() });
        assert_eq!("lm-tiny".parse::<Size>().unwrap(), Size::Lm("lm-tiny".into()));
        for bad in ["1e9", "10", "lm-huge", "", "NaN"] {
            let err = bad.parse::<Size>().unwrap_err().to_string();
            assert!(err.contains("--sizes") && err.contains("1e6") && err.contains("lm-tiny"), "{err}");
        }
    }

    #[test]
    fn an_mlp_has_about_the_parameters_asked_for() {
        for target in [1000usize, 1_000_000, 10_000_000, 100_000_000] {
            let h = mlp_width(target);
            let spec = ModelSpec::mlp(vec![32, h, h, 10]);
            let off = spec.param_count().abs_diff(target) as f64 / target as f64;
            assert!(off < 0.05, "{target}: {} parameters", spec.param_count());
        }
    }

    #[test]
    fn a_language_model_without_text_is_refused_before_anything_runs() {
        let options = ScaleOptions {
            sizes: vec![Size::Lm("lm-tiny".into())],
            rounds: 1,
            steps: None,
            codec: None,
            text: None,
            checkpoint_every: 1,
        };
        let err = scale(&options, |_| panic!("nothing runs")).unwrap_err().to_string();
        assert!(err.contains("--text") && err.contains("lm-tiny"), "{err}");
    }
}
