//! The command line of workloads: `--dataset`, `--init` and `--device` on `run`
//! and `swarm`, `starling data` (generate data sets), `starling baseline` (the
//! centralized baseline) and `starling bench train` (training speed).

use std::{path::PathBuf, str::FromStr, time::Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use starling_protocol::{spec::CnnSpec, DatasetKind, ModelSpec, RunSpec};
use starling_training::{
    data::Dataset,
    datasets::{glyphs, text, Shard, TrainData, Workload},
    trainer::{evaluate, train_alone, Trainer},
};

/// Data, initial weights and device, shared by `run` and `swarm`.
#[derive(Debug, Args, Clone)]
pub struct WorkloadArgs {
    /// Where this machine's copy of the data is: synthetic, idx:DIR,
    /// csv:FILE[,label=N] or text:PATH. Overrides the spec's dataset.kind
    /// without changing the run id.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Initial weights (safetensors, names as the model's variables): writes the
    /// file's path and BLAKE3 hash into the spec's `init`, so the run id changes
    /// and every node must start from the same file.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Where to train: cpu, or cuda:N (needs a starling built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    /// This machine's copy of the run's tokenizer.json, when it is not at the
    /// path the spec names (`model.tokenizer.path`); its BLAKE3 hash must match the spec's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

impl WorkloadArgs {
    /// `spec` with `--init` applied, after checking `--device`.
    pub fn apply(&self, mut spec: RunSpec) -> Result<RunSpec> {
        self.device.device()?;
        if let Some(path) = &self.init {
            spec.init = Some(
                starling_training::init::init_spec(path)
                    .with_context(|| format!("--init {} is not usable", path.display()))?,
            );
            starling_training::init::initial_params(&spec)
                .with_context(|| format!("--init {}", path.display()))?;
        }
        Ok(spec)
    }
}

/// A compute device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceArg::Cpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Cuda)
                .ok_or_else(|| format!("--device `{s}` must be cpu or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => write!(f, "cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// The candle device; an error naming the `cuda` feature when it was not built in.
    pub fn device(self) -> Result<candle_core::Device> {
        match self {
            DeviceArg::Cpu => Ok(candle_core::Device::Cpu),
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda(n) => {
                candle_core::Device::new_cuda(n).with_context(|| format!("cannot open cuda:{n}"))
            }
            #[cfg(not(feature = "cuda"))]
            DeviceArg::Cuda(n) => bail!(
                "--device cuda:{n}: this starling was built without CUDA; rebuild with \
                 `cargo build --release -p starling-node --features cuda` (needs the CUDA toolkit)"
            ),
        }
    }

    /// Refuses a GPU for `command`, whose nodes share one process and train on the CPU.
    pub fn check_cpu_only(self, command: &str) -> Result<()> {
        if self != DeviceArg::Cpu {
            bail!(
                "--device {self}: `starling {command}` trains its nodes on the CPU; \
                 `starling run --device {self}` and `starling bench train --device {self}` use the GPU"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a procedurally drawn 10-class 28×28 glyph data set as gzipped IDX files.
    Glyphs {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        train: usize,
        #[arg(long, default_value_t = 4_000)]
        test: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write a text corpus for the language model: the .rs and .md files under --from.
    Corpus {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = ".")]
        from: PathBuf,
    },
}

/// `starling baseline`.
#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Run spec (TOML); the built-in task by default.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// The data (overrides the spec's dataset.kind).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// This machine's copy of the run's tokenizer.json (overrides model.tokenizer.path).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Nodes whose shards make up the total samples.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Rounds of a swarm to match: trains nodes × rounds × inner.steps steps.
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `starling baseline` measured.
#[derive(Debug, Serialize)]
pub struct BaselineReport {
    pub model: String,
    pub dataset: String,
    pub params: usize,
    pub train_samples: usize,
    pub steps: u64,
    /// Held-out loss (nats per sample, or per byte for the language model) and accuracy.
    pub loss: f32,
    pub accuracy: f32,
    pub initial_loss: f32,
    pub initial_accuracy: f32,
    /// `exp(loss)` and `exp(initial_loss)`: a language model's perplexity per token.
    pub perplexity: f32,
    pub initial_perplexity: f32,
    pub seconds: f64,
}

/// Trains the spec's model alone on the union of `nodes` shards and evaluates it.
pub fn baseline(args: BaselineArgs) -> Result<()> {
    let spec = match &args.spec {
        Some(p) => crate::spec_file::load_spec(p)?,
        None => RunSpec::builtin(),
    };
    if args.nodes == 0 || args.rounds == 0 {
        bail!("--nodes and --rounds must be at least 1");
    }
    let started = Instant::now();
    let workload = Workload::open_with(&spec, args.dataset.as_ref(), args.tokenizer.as_deref())
        .context("cannot open the data (see --dataset and --tokenizer)")?;
    let shards = (0..args.nodes)
        .map(|index| workload.shard(Shard { index, count: args.nodes }, index as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let all = workload.union(&shards)?;
    let eval = workload.eval();
    let initial = starling_training::init::initial_params(&spec)?;
    let steps = args.nodes as u64 * args.rounds * spec.inner.steps as u64;
    let before = evaluate(&spec.model, &initial, &eval)?;
    let train_samples = all.len();
    let params = train_alone(&spec, all, &initial, steps, spec.seed)?;
    let after = evaluate(&spec.model, &params, &eval)?;
    let report = BaselineReport {
        model: spec.model.kind().into(),
        dataset: args.dataset.as_ref().unwrap_or(&spec.dataset.kind).to_string(),
        params: spec.param_count(),
        train_samples,
        steps,
        loss: after.loss,
        accuracy: after.accuracy,
        initial_loss: before.loss,
        initial_accuracy: before.accuracy,
        perplexity: after.perplexity(),
        initial_perplexity: before.perplexity(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "centralized {} on {} ({} samples, {} steps): held-out loss {:.4} (from {:.4}), accuracy {:.2}% (from {:.2}%), {:.1}s",
            report.model,
            report.dataset,
            report.train_samples,
            report.steps,
            report.loss,
            report.initial_loss,
            report.accuracy * 100.0,
            report.initial_accuracy * 100.0,
            report.seconds
        );
        if spec.model.is_language_model() {
            println!(
                "held-out perplexity {:.2} per token (from {:.2})",
                report.perplexity, report.initial_perplexity
            );
        }
    }
    Ok(())
}

/// Writes the data sets of `starling data`.
pub fn data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Glyphs { out, train, test, seed } => {
            glyphs::write(&out, train, test, seed)?;
            println!("wrote {train} training and {test} test glyphs to {}", out.display());
        }
        DataCommand::Corpus { out, from } => {
            let bytes = text::corpus_from_sources(&from)?;
            if bytes.is_empty() {
                bail!("no .rs or .md files under {} (set --from)", from.display());
            }
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {} bytes of text to {}", bytes.len(), out.display());
        }
    }
    Ok(())
}

/// The models `bench train` measures.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchModel {
    /// 784-256-10, ReLU.
    Mlp,
    /// 1×28×28 → conv3x3(8)-relu-pool → conv3x3(16)-relu-pool → linear(784→10).
    Cnn,
    /// The GPT presets (byte-free: random token ids of the preset's vocab),
    /// one sample being one window of the preset's context.
    LmTiny,
    LmSmall,
    Gpt2Small,
}

/// `starling bench train`.
#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    #[arg(long, value_enum, default_value = "mlp")]
    pub model: BenchModel,
    /// CPU threads for candle (sets RAYON_NUM_THREADS); all cores when absent.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed steps, after 10 untimed warm-up steps (1 for the language models).
    #[arg(long, default_value_t = 200)]
    pub steps: u32,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct TrainBenchReport {
    pub model: String,
    pub device: String,
    /// `fast` (the hand-written step) or `reference` (candle autograd; set
    /// STARLING_TRAIN_PATH=reference).
    pub path: String,
    pub threads: usize,
    pub batch: usize,
    pub steps: u32,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// The node's own training loop (batch assembly, forward, cross-entropy,
/// backward, AdamW) on random 28×28 inputs, in samples per second.
pub fn bench_train(args: TrainBenchArgs) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle reads this for its matmul and conv threads; nothing has used it yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let device = args.device.device()?;
    let mut spec = RunSpec::builtin();
    let preset = |name| ModelSpec::Gpt(starling_protocol::spec::GptSpec::preset(name).expect("a preset"));
    spec.model = match args.model {
        BenchModel::Mlp => ModelSpec::mlp(vec![784, 256, 10]),
        BenchModel::Cnn => ModelSpec::Cnn(CnnSpec { input: [1, 28, 28], channels: vec![8, 16], classes: 10 }),
        BenchModel::LmTiny => preset("lm-tiny"),
        BenchModel::LmSmall => preset("lm-small"),
        BenchModel::Gpt2Small => preset("gpt2-small"),
    };
    spec.inner.batch_size = args.batch;
    let n = 4096;
    let mut rng = starling_training::data::rng_for(&[0xbe_c4, 1]);
    let data = match &spec.model {
        ModelSpec::Gpt(g) => TrainData::Text(starling_training::datasets::Corpus {
            tokens: (0..(g.context * 16).max(n))
                .map(|_| {
                    (starling_training::data::uniform01(&mut rng) * g.vocab as f64) as u32 % g.vocab as u32
                })
                .collect(),
        }),
        _ => TrainData::Labelled(Dataset {
            features: (0..n * 784).map(|_| starling_training::data::uniform01(&mut rng) as f32).collect(),
            labels: (0..n).map(|i| (i % 10) as u32).collect(),
            dim: 784,
            classes: 10,
        }),
    };
    let warm_up = if spec.model.is_language_model() { 1 } else { 10 };
    let mut trainer = Trainer::new_on(&spec, data, 1, &device)?;
    let start = starling_training::models::initial_params(&spec.model, 1)?;
    let warm = trainer.train_round(&start, warm_up)?;
    let t = Instant::now();
    trainer.train_round(&warm.params, args.steps.max(1))?;
    let seconds = t.elapsed().as_secs_f64();
    let report = TrainBenchReport {
        model: format!("{:?}", args.model).to_lowercase(),
        device: args.device.to_string(),
        path: trainer.path().as_str().into(),
        threads: candle_core::utils::get_num_threads(),
        batch: args.batch,
        steps: args.steps.max(1),
        seconds,
        samples_per_second: args.steps.max(1) as f64 * args.batch as f64 / seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "candle {} on {}, {} path, batch {} threads {}: {:.1} samples/s ({} steps in {:.2}s)",
            report.model,
            report.device,
            report.path,
            report.batch,
            report.threads,
            report.samples_per_second,
            report.steps,
            seconds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_the_feature_names_the_feature() {
        assert_eq!("cpu".parse::<DeviceArg>().unwrap(), DeviceArg::Cpu);
        assert_eq!("cuda:1".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(1));
        assert!("gpu".parse::<DeviceArg>().unwrap_err().contains("cpu or cuda:N"));
        if !cfg!(feature = "cuda") {
            let err = DeviceArg::Cuda(0).device().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn shards_parse_as_index_of_count() {
        assert_eq!("2/8".parse::<Shard>().unwrap(), Shard { index: 2, count: 8 });
        assert!("8/8".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().unwrap_err().contains("INDEX/COUNT"));
    }
}
