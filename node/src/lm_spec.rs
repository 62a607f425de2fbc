//! `starling spec new --model lm-tiny|lm-small|gpt2-small --data text:PATH`:
//! a GPT-style language-model spec on the user's text, with a byte-level BPE
//! tokenizer trained on that text (or the user's `tokenizer.json`) written
//! beside the spec and pinned in it by its BLAKE3 hash.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use starling_protocol::{
    spec::{GptSpec, TokenizerSpec, GPT_PRESETS},
    DatasetKind, ModelSpec, RunSpec,
};
use starling_training::{datasets::text, tokenizer::TextTokenizer};

/// The model and data flags of `spec new`.
#[derive(Debug, Args, Clone)]
pub struct SpecModelArgs {
    /// The model: `mlp` (the built-in task) or a GPT-style language model preset:
    /// lm-tiny (~1M parameters), lm-small (~10M), gpt2-small (~124M). A language
    /// model needs --data text:PATH.
    #[arg(long, default_value = "mlp", value_parser = model_names())]
    pub model: String,
    /// The spec's data source (dataset.kind): text:PATH for a language model.
    #[arg(long, value_name = "SOURCE")]
    pub data: Option<DatasetKind>,
    /// Tokens of the BPE tokenizer trained on --data's text (the preset's when absent:
    /// 2048, 8192, 50257).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Use this tokenizer.json (e.g. GPT-2's) instead of training one on --data.
    #[arg(long, value_name = "FILE", conflicts_with = "vocab")]
    pub tokenizer: Option<PathBuf>,
}

fn model_names() -> Vec<&'static str> {
    std::iter::once("mlp").chain(GPT_PRESETS.iter().map(|(name, _, _)| *name)).collect()
}

impl SpecModelArgs {
    /// Applies the model and data to `spec`; `out` is where the spec will be
    /// written (a trained tokenizer goes beside it).
    pub fn apply(&self, spec: &mut RunSpec, out: Option<&Path>) -> Result<()> {
        let Some(preset) = GptSpec::preset(&self.model) else {
            if self.vocab.is_some() || self.tokenizer.is_some() {
                bail!("--vocab and --tokenizer are for the language models (--model lm-tiny, lm-small, gpt2-small)");
            }
            if let Some(data) = &self.data {
                spec.dataset.kind = data.clone();
            }
            return Ok(());
        };
        let Some(DatasetKind::Text(path)) = &self.data else {
            bail!(
                "--model {} trains on text: pass --data text:PATH (a text file or a directory of them)",
                self.model
            );
        };
        let (tokenizer, vocab) = match &self.tokenizer {
            Some(file) => given_tokenizer(file)?,
            None => {
                let target = out
                    .map_or_else(|| PathBuf::from("tokenizer.json"), |o| o.with_extension("tokenizer.json"));
                train_tokenizer(Path::new(path), self.vocab.unwrap_or(preset.vocab), &target)?
            }
        };
        *spec = lm_run(&self.model, preset, tokenizer, vocab, spec);
        spec.dataset.kind = DatasetKind::Text(path.clone());
        spec.validate().context("the language-model spec is not valid")?;
        Ok(())
    }
}

/// A spec for `preset` on `tokenizer`'s tokens, keeping `base`'s codec,
/// aggregation and access settings.
fn lm_run(name: &str, preset: GptSpec, tokenizer: TokenizerSpec, vocab: usize, base: &RunSpec) -> RunSpec {
    let big = preset.d_model >= 512;
    let mut spec = base.clone();
    spec.name = name.to_string();
    spec.seed = 1;
    spec.model = ModelSpec::Gpt(GptSpec { vocab, tokenizer: Some(tokenizer), ..preset });
    // samples count windows of the context: each node trains on at most
    // samples_per_node of them and every node evaluates the same eval_samples.
    spec.dataset.samples_per_node = 4096;
    spec.dataset.eval_samples = if big { 8 } else { 32 };
    spec.inner.steps = if big { 4 } else { 20 };
    spec.inner.batch_size = if big { 1 } else { 8 };
    spec.inner.lr = if big { 3e-4 } else { 1e-3 };
    spec.inner.weight_decay = 0.0;
    // Rounds take minutes on a CPU.
    spec.round.deadline_ms = 1_800_000;
    // What suits the codec on a language model (the base suited the MLP).
    let codec = spec.codec;
    spec.with_codec(codec)
}

/// Trains a byte-level BPE tokenizer of `vocab` tokens on the text at `path`
/// and writes it to `target`.
fn train_tokenizer(path: &Path, vocab: usize, target: &Path) -> Result<(TokenizerSpec, usize)> {
    let bytes = text::load(path)
        .with_context(|| format!("cannot read the text of --data text:{}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let tokenizer = TextTokenizer::train(&text, vocab).context("--vocab")?;
    let spec = tokenizer.save(target)?;
    eprintln!(
        "trained a BPE tokenizer of {} tokens on {} bytes of {}; wrote {} (every node needs this file, \
         at that path or given with --tokenizer)",
        tokenizer.vocab_size(),
        bytes.len(),
        path.display(),
        target.display()
    );
    Ok((spec, tokenizer.vocab_size()))
}

/// The user's tokenizer.json, checked and hashed.
fn given_tokenizer(file: &Path) -> Result<(TokenizerSpec, usize)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read --tokenizer {}", file.display()))?;
    let tokenizer = TextTokenizer::from_bytes(&bytes, file)?;
    let spec =
        TokenizerSpec { path: file.display().to_string(), blake3: blake3::hash(&bytes).to_hex().to_string() };
    Ok((spec, tokenizer.vocab_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "The quick brown fox jumps over the lazy dog.\nA journey of a thousand miles begins \
                        with a single step.\nAll that glitters is not gold.\n";

    fn args(model: &str, data: Option<&Path>) -> SpecModelArgs {
        SpecModelArgs {
            model: model.into(),
            data: data.map(|p| DatasetKind::Text(p.display().to_string())),
            vocab: Some(300),
            tokenizer: None,
        }
    }

    #[test]
    fn a_preset_trains_a_tokenizer_beside_the_spec_and_pins_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, TEXT.repeat(20)).unwrap();
        let out = dir.path().join("run.toml");
        let mut spec = RunSpec::builtin();
        args("lm-tiny", Some(&text)).apply(&mut spec, Some(&out)).unwrap();
        let ModelSpec::Gpt(g) = &spec.model else { panic!("gpt") };
        let tok = g.tokenizer.as_ref().unwrap();
        assert_eq!(Path::new(&tok.path), dir.path().join("run.tokenizer.json"));
        let bytes = std::fs::read(&tok.path).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), tok.blake3);
        assert!(g.vocab > 256 && g.vocab <= 300 && g.d_model == 128, "{g:?}");
        // The same tokenizer given with --tokenizer makes the same model.
        let mut again = RunSpec::builtin();
        let given = SpecModelArgs {
            vocab: None,
            tokenizer: Some(PathBuf::from(&tok.path)),
            ..args("lm-tiny", Some(&text))
        };
        given.apply(&mut again, None).unwrap();
        assert_eq!(again.model, spec.model);
        assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap().run_id(), spec.run_id());
    }

    #[test]
    fn a_language_model_without_text_is_refused_by_flag() {
        let err = args("lm-small", None).apply(&mut RunSpec::builtin(), None).unwrap_err().to_string();
        assert!(err.contains("--data text:PATH"), "{err}");
        let err = args("mlp", None).apply(&mut RunSpec::builtin(), None).unwrap_err().to_string();
        assert!(err.contains("--vocab"), "{err}");
    }
}
