//! The data a run trains on, from any source a spec or `--dataset` names
//! (`synthetic`, `idx:DIR`, `csv:FILE`, `text:PATH`), split into a node's shard
//! and a held-out set that every node evaluates on. Text becomes tokens here:
//! bytes, or the ids of the spec's BPE tokenizer for a `gpt` model.

use std::path::{Path, PathBuf};

use starling_protocol::{spec::DatasetKind, ModelSpec, Partition, PublicKey, RunSpec};

use crate::data::{rng_for, DataError, Dataset, SyntheticTask};
use crate::tokenizer::{TextTokenizer, TokenizerError};

pub mod csv;
pub mod glyphs;
pub mod idx;
pub mod partition;
pub mod text;

/// Share of the samples held out for evaluation when a source has no test split.
pub const HELD_OUT_FRACTION: f64 = 0.1;
// Keeps the held-out split and the partition on streams of their own.
const TAG_HOLD_OUT: u64 = 0x686f_6c64_0000_0006;
const TAG_POOL: u64 = 0x706f_6f6c_0000_0007;

/// Token ids for the language model (bytes, or BPE tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct Corpus {
    pub tokens: Vec<u32>,
}

impl Corpus {
    /// Text read as bytes, one token each.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Corpus { tokens: bytes.iter().map(|&b| u32::from(b)).collect() }
    }
}

/// Training or evaluation data of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainData {
    /// Classification samples (features and labels).
    Labelled(Dataset),
    /// A token stream for the language model.
    Text(Corpus),
}

impl TrainData {
    /// Samples (or tokens).
    pub fn len(&self) -> usize {
        match self {
            TrainData::Labelled(d) => d.len(),
            TrainData::Text(c) => c.tokens.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Dataset> for TrainData {
    fn from(d: Dataset) -> Self {
        TrainData::Labelled(d)
    }
}

/// The seed of a node's own data shard: derived from its key, so every node
/// holds different data from the same distribution.
pub fn shard_seed(key: &PublicKey) -> u64 {
    u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"))
}

/// Which of `count` shards a node trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard `{s}` must be INDEX/COUNT with INDEX < COUNT, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// A data source opened for one spec: every shard and the held-out set come from it.
pub enum Workload {
    Synthetic {
        task: SyntheticTask,
        partition: Partition,
        samples: usize,
        seed: u64,
    },
    Labelled {
        train: Dataset,
        eval: Dataset,
        partition: Partition,
        samples: usize,
        seed: u64,
    },
    /// Text: a shard holds at most `max_tokens`; with `seeded`, a node alone on
    /// the text takes its own stretch of it, placed by its shard seed.
    Text {
        train: Corpus,
        eval: Corpus,
        max_tokens: usize,
        seeded: bool,
    },
}

impl Workload {
    /// Opens `source` (the spec's own when `None`) for `spec`'s model.
    pub fn open(spec: &RunSpec, source: Option<&DatasetKind>) -> Result<Self, DataError> {
        Self::open_with(spec, source, None)
    }

    /// [`Workload::open`], reading the spec's tokenizer from `tokenizer`
    /// (`--tokenizer`) instead of the path in the spec.
    pub fn open_with(
        spec: &RunSpec,
        source: Option<&DatasetKind>,
        tokenizer: Option<&Path>,
    ) -> Result<Self, DataError> {
        let source = source.unwrap_or(&spec.dataset.kind);
        let (partition, samples, seed) = (spec.dataset.partition, spec.dataset.samples_per_node, spec.seed);
        let eval_cap = spec.dataset.eval_samples;
        let classifier = || -> Result<(usize, usize), DataError> {
            match (spec.model.input_dim(), spec.model.classes()) {
                (Some(d), Some(c)) => Ok((d, c)),
                _ => Err(DataError::Malformed(format!(
                    "{source} is labelled data, but model.kind = {} is not a classifier; use text:PATH",
                    spec.model.kind()
                ))),
            }
        };
        match source {
            DatasetKind::Synthetic => {
                classifier()?;
                Ok(Workload::Synthetic { task: SyntheticTask::new(spec)?, partition, samples, seed })
            }
            DatasetKind::Idx(dir) => {
                let (dim, classes) = classifier()?;
                let split = idx::load_dir(Path::new(dir), classes)?;
                let (train, eval) = held_out(split.train, split.test, seed);
                check_dim(&train, dim, source)?;
                Ok(Workload::Labelled { train, eval: cap(eval, eval_cap), partition, samples, seed })
            }
            DatasetKind::Csv { path, label_column } => {
                let (dim, classes) = classifier()?;
                let all = csv::load(Path::new(path), *label_column, classes)?;
                let (train, eval) = held_out(all, None, seed);
                check_dim(&train, dim, source)?;
                Ok(Workload::Labelled { train, eval: cap(eval, eval_cap), partition, samples, seed })
            }
            DatasetKind::Text(path) => {
                if !spec.model.is_language_model() {
                    return Err(DataError::Malformed(format!(
                        "{source} is text for the language model, but model.kind = {}",
                        spec.model.kind()
                    )));
                }
                if matches!(partition, Partition::Dirichlet(_)) {
                    return Err(DataError::Malformed(
                        "text has no labels to partition by dirichlet; use partition = \"iid\"".into(),
                    ));
                }
                let bytes = text::load(Path::new(path))?;
                // A byte-level transformer's samples are 1 KiB of text to train on and
                // 64 bytes to evaluate; a gpt's are windows of its context.
                let (tokens, train_window, eval_window, seeded) = match &spec.model {
                    ModelSpec::Gpt(g) => (gpt_tokens(g, &bytes, tokenizer)?, g.context, g.context, true),
                    _ => (Corpus::from_bytes(&bytes).tokens, 1024, 64, false),
                };
                drop(bytes);
                // The last share of the text is held out: no window crosses into it.
                let held = ((tokens.len() as f64 * HELD_OUT_FRACTION) as usize).max(2);
                let cut = tokens.len().saturating_sub(held);
                let mut eval = tokens[cut..].to_vec();
                let mut train = tokens;
                train.truncate(cut);
                eval.truncate(eval_cap.saturating_mul(eval_window).saturating_add(1).max(2));
                Ok(Workload::Text {
                    train: Corpus { tokens: train },
                    eval: Corpus { tokens: eval },
                    max_tokens: samples.saturating_mul(train_window).saturating_add(1).max(2),
                    seeded,
                })
            }
        }
    }

    /// The training data of `shard`. For synthetic data under IID, shards are
    /// independent draws seeded by `shard_seed` (the node's key in a swarm) and
    /// the index is not used; everywhere else the shards of one count are disjoint.
    pub fn shard(&self, shard: Shard, shard_seed: u64) -> Result<TrainData, DataError> {
        match self {
            Workload::Synthetic { task, partition: Partition::Iid, samples, .. } => {
                Ok(task.shard(shard_seed, *samples).into())
            }
            Workload::Synthetic { task, partition, samples, seed } => {
                let pool = task.shard(TAG_POOL ^ seed, samples * shard.count);
                partition::split(&pool, *partition, shard, *seed).map(|d| cap(d, *samples).into())
            }
            Workload::Labelled { train, partition, samples, seed, .. } => {
                partition::split(train, *partition, shard, *seed).map(|d| cap(d, *samples).into())
            }
            Workload::Text { train, max_tokens, seeded, .. } => {
                let n = train.tokens.len();
                let (start, end) = (n * shard.index / shard.count, n * (shard.index + 1) / shard.count);
                let len = (end - start).min(*max_tokens);
                // samples_per_node bounds the shard; where that leaves some of it
                // over, each node's seed picks its own stretch.
                let slack = (end - start - len) as u64;
                let offset = if *seeded && slack > 0 { (shard_seed % (slack + 1)) as usize } else { 0 };
                let tokens = train.tokens[start + offset..start + offset + len].to_vec();
                if tokens.len() < 2 {
                    return Err(DataError::Malformed(format!(
                        "shard {}/{} of the text has {} tokens; use fewer nodes or more text",
                        shard.index,
                        shard.count,
                        tokens.len()
                    )));
                }
                Ok(TrainData::Text(Corpus { tokens }))
            }
        }
    }

    /// The held-out set, the same for every node.
    pub fn eval(&self) -> TrainData {
        match self {
            Workload::Synthetic { task, .. } => task.eval_set().into(),
            Workload::Labelled { eval, .. } => eval.clone().into(),
            Workload::Text { eval, .. } => TrainData::Text(eval.clone()),
        }
    }

    /// All training data of `shards` together: the centralized baseline's.
    pub fn union(&self, shards: &[TrainData]) -> Result<TrainData, DataError> {
        match shards.first() {
            Some(TrainData::Text(_)) => Ok(TrainData::Text(Corpus {
                tokens: shards
                    .iter()
                    .flat_map(|s| match s {
                        TrainData::Text(c) => c.tokens.clone(),
                        TrainData::Labelled(_) => Vec::new(),
                    })
                    .collect(),
            })),
            _ => {
                let parts: Vec<Dataset> = shards
                    .iter()
                    .filter_map(|s| match s {
                        TrainData::Labelled(d) => Some(d.clone()),
                        TrainData::Text(_) => None,
                    })
                    .collect();
                Dataset::concat(&parts).map(TrainData::Labelled)
            }
        }
    }
}

/// The tokens of a gpt model's text: its tokenizer's ids, or bytes without one.
fn gpt_tokens(
    model: &starling_protocol::spec::GptSpec,
    bytes: &[u8],
    path: Option<&Path>,
) -> Result<Vec<u32>, DataError> {
    let Some(spec) = &model.tokenizer else {
        return Ok(Corpus::from_bytes(bytes).tokens);
    };
    let tokenizer = TextTokenizer::load(spec, path)?;
    if tokenizer.vocab_size() > model.vocab {
        return Err(TokenizerError::Vocab {
            path: path.map_or_else(|| PathBuf::from(&spec.path), Path::to_path_buf),
            tokenizer: tokenizer.vocab_size(),
            model: model.vocab,
        }
        .into());
    }
    Ok(tokenizer.encode(&String::from_utf8_lossy(bytes))?)
}

fn check_dim(train: &Dataset, dim: usize, source: &DatasetKind) -> Result<(), DataError> {
    if train.dim != dim {
        return Err(DataError::Malformed(format!(
            "{source} has {} values per sample, but the model takes {dim} inputs; fix model.layers / model.input",
            train.dim
        )));
    }
    Ok(())
}

/// The first `n` samples.
fn cap(mut d: Dataset, n: usize) -> Dataset {
    let n = n.min(d.len());
    d.labels.truncate(n);
    d.features.truncate(n * d.dim);
    d
}

/// The training and held-out sets: the test split when there is one, otherwise
/// a seeded `HELD_OUT_FRACTION` of the samples.
fn held_out(train: Dataset, test: Option<Dataset>, seed: u64) -> (Dataset, Dataset) {
    if let Some(test) = test {
        return (train, test);
    }
    let order = partition::shuffled(train.len(), &mut rng_for(&[TAG_HOLD_OUT, seed]));
    let n_eval = ((train.len() as f64 * HELD_OUT_FRACTION).ceil() as usize).clamp(1, train.len().max(1));
    let (eval_idx, train_idx) = order.split_at(n_eval.min(order.len()));
    (partition::select(&train, train_idx), partition::select(&train, eval_idx))
}

/// Files under `path` (itself when a file), sorted, recursively.
pub(crate) fn files_under(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| DataError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DataError::Io { path: path.to_path_buf(), reason: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        out.extend(files_under(&entry)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use starling_protocol::spec::{CnnSpec, TransformerSpec};

    fn glyph_spec(dir: &Path, partition: Partition) -> RunSpec {
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::Cnn(CnnSpec { input: [1, 28, 28], channels: vec![2], classes: 10 });
        spec.dataset.kind = DatasetKind::Idx(dir.display().to_string());
        spec.dataset.partition = partition;
        spec.dataset.eval_samples = 30;
        spec
    }

    #[test]
    fn idx_shards_are_disjoint_reproducible_and_use_the_test_split() {
        let dir = tempfile::tempdir().unwrap();
        glyphs::write(dir.path(), 300, 40, 2).unwrap();
        for partition in [Partition::Iid, Partition::Dirichlet(0.5)] {
            let w = Workload::open(&glyph_spec(dir.path(), partition), None).unwrap();
            assert_eq!(w.eval().len(), 30, "eval is capped by eval_samples");
            let shards: Vec<TrainData> =
                (0..3).map(|index| w.shard(Shard { index, count: 3 }, 0).unwrap()).collect();
            assert_eq!(shards.iter().map(TrainData::len).sum::<usize>(), 300);
            let union = w.union(&shards).unwrap();
            let TrainData::Labelled(all) = union else { panic!("labelled") };
            let mut rows: Vec<Vec<u32>> =
                (0..all.len()).map(|i| all.row(i).iter().map(|v| v.to_bits()).collect()).collect();
            rows.sort();
            rows.dedup();
            assert!(rows.len() > 295, "shards overlap: {} distinct of 300", rows.len());
            let again = Workload::open(&glyph_spec(dir.path(), partition), None).unwrap();
            assert_eq!(again.shard(Shard { index: 1, count: 3 }, 9).unwrap(), shards[1]);
        }
    }

    #[test]
    fn a_source_that_does_not_fit_the_model_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        glyphs::write(dir.path(), 20, 0, 2).unwrap();
        let mut spec = glyph_spec(dir.path(), Partition::Iid);
        spec.model = ModelSpec::mlp(vec![100, 10]);
        let err = Workload::open(&spec, None).err().unwrap().to_string();
        assert!(err.contains("784 values per sample") && err.contains("100 inputs"), "{err}");
        spec.model = ModelSpec::Transformer(TransformerSpec {
            vocab: 256,
            d_model: 8,
            heads: 2,
            layers: 1,
            context: 8,
        });
        assert!(Workload::open(&spec, None).is_err());
        let text = DatasetKind::Text(dir.path().display().to_string());
        spec.dataset.partition = Partition::Dirichlet(0.1);
        assert!(Workload::open(&spec, Some(&text)).err().unwrap().to_string().contains("dirichlet"));
    }

    #[test]
    fn text_shards_are_contiguous_and_the_tail_is_held_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, (0..1000).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::Transformer(TransformerSpec {
            vocab: 256,
            d_model: 8,
            heads: 2,
            layers: 1,
            context: 8,
        });
        spec.dataset.kind = DatasetKind::Text(path.display().to_string());
        let w = Workload::open(&spec, None).unwrap();
        let a = w.shard(Shard { index: 0, count: 2 }, 0).unwrap();
        let b = w.shard(Shard { index: 1, count: 2 }, 0).unwrap();
        assert_eq!((a.len(), b.len(), w.eval().len()), (450, 450, 100));
    }

    /// A gpt spec on `SAMPLE_TEXT` (repeated) with a tokenizer trained on it, in `dir`.
    pub(crate) fn gpt_text_spec(dir: &Path) -> RunSpec {
        use crate::tokenizer::{TextTokenizer, SAMPLE_TEXT};
        let text = dir.join("text.txt");
        std::fs::write(&text, SAMPLE_TEXT.repeat(8)).unwrap();
        let tok = TextTokenizer::train(SAMPLE_TEXT, 320).unwrap();
        let mut model = starling_protocol::spec::GptSpec::sized(tok.vocab_size(), 32, 2, 2, 16);
        model.tokenizer = Some(tok.save(&dir.join("tokenizer.json")).unwrap());
        let mut spec = RunSpec::builtin();
        spec.model = ModelSpec::Gpt(model);
        spec.dataset.kind = DatasetKind::Text(text.display().to_string());
        spec.dataset.samples_per_node = 20;
        spec.dataset.eval_samples = 8;
        spec.inner.batch_size = 8;
        spec.inner.lr = 3e-3;
        spec.validate().unwrap();
        spec
    }

    #[test]
    fn gpt_text_is_tokenized_held_out_and_sharded_by_seed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = gpt_text_spec(dir.path());
        let w = Workload::open(&spec, None).unwrap();
        let TrainData::Text(eval) = w.eval() else { panic!("text") };
        assert_eq!(eval.tokens.len(), 8 * 16 + 1, "eval_samples windows of the context, and one more");
        // Alone on the text, a node's seed places its stretch of samples_per_node windows.
        let alone = |seed| w.shard(Shard { index: 0, count: 1 }, seed).unwrap();
        assert_eq!(alone(1).len(), 20 * 16 + 1);
        assert_eq!(alone(1), alone(1));
        assert_ne!(alone(1), alone(2));
        let Workload::Text { train, .. } = &w else { panic!("text") };
        assert!(train.tokens.len() > 20 * 16 + 1, "the text is longer than one shard");
        // Without its tokenizer file, or with another, the node refuses by name.
        let err = Workload::open_with(&spec, None, Some(&dir.path().join("nope.json"))).err().unwrap();
        assert!(err.to_string().contains("nope.json") && err.to_string().contains("--tokenizer"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let err = Workload::open(&spec, None).err().unwrap().to_string();
        assert!(err.contains("BLAKE3") && err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn every_spec_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs");
        let mut seen = 0;
        for file in files_under(&dir).unwrap() {
            let text = std::fs::read_to_string(&file).unwrap();
            RunSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            seen += 1;
        }
        assert!(seen >= 5);
    }
}
