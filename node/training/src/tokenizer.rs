//! The language model's BPE tokenizer: a byte-level BPE (as GPT-2's) trained
//! on the run's text at `spec new` time, or any Hugging Face `tokenizer.json`,
//! pinned by the BLAKE3 hash of its file in the spec so every node cuts the
//! text into the same tokens.

use std::path::{Path, PathBuf};

use starling_protocol::spec::TokenizerSpec;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Ends a document in the trained vocabulary, as in GPT-2.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// Text is encoded in pieces of about this many bytes, cut after a newline,
/// so encoding runs in parallel and its memory stays bounded.
const ENCODE_PIECE: usize = 1 << 16;

/// Why a tokenizer could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "the run's tokenizer file {path} cannot be read ({reason}); copy the run's tokenizer.json \
         there or pass its path with --tokenizer FILE"
    )]
    Missing { path: PathBuf, reason: String },
    #[error(
        "tokenizer file {path} has BLAKE3 {found}, but the spec's model.tokenizer.blake3 is {expected}: \
         it is not this run's tokenizer; pass the run's tokenizer.json with --tokenizer FILE"
    )]
    Mismatch { path: PathBuf, found: String, expected: String },
    #[error("tokenizer file {path} is not a usable tokenizer.json: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error(
        "tokenizer {path} has {tokenizer} tokens, more than the model's vocab of {model}; \
         set model.vocab to at least {tokenizer}"
    )]
    Vocab { path: PathBuf, tokenizer: usize, model: usize },
    #[error("cannot train a BPE tokenizer: {0}")]
    Train(String),
    #[error("cannot write the tokenizer to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot tokenize the text: {0}")]
    Encode(String),
}

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// A byte-level BPE tokenizer of at most `vocab` tokens (256 bytes, the merges
    /// learnt from `text`, and [`END_OF_TEXT`]). Deterministic for equal inputs.
    pub fn train(text: &str, vocab: usize) -> Result<Self, TokenizerError> {
        if vocab < 257 {
            return Err(TokenizerError::Train(format!(
                "a vocabulary of {vocab} is too small: byte-level BPE needs 256 byte tokens and one more"
            )));
        }
        let bpe = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab)
            .min_frequency(2)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(bpe);
        let mut inner = Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level)).with_decoder(Some(byte_level));
        inner
            .train(&mut trainer, text.split_inclusive('\n'))
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The tokenizer `spec` names: read from `path` (`--tokenizer`) or else the
    /// spec's own path, refused unless its bytes hash to the spec's BLAKE3.
    pub fn load(spec: &TokenizerSpec, path: Option<&Path>) -> Result<Self, TokenizerError> {
        let path = path.map_or_else(|| PathBuf::from(&spec.path), Path::to_path_buf);
        let bytes = std::fs::read(&path)
            .map_err(|e| TokenizerError::Missing { path: path.clone(), reason: e.to_string() })?;
        let found = blake3::hash(&bytes).to_hex().to_string();
        if !found.eq_ignore_ascii_case(&spec.blake3) {
            return Err(TokenizerError::Mismatch { path, found, expected: spec.blake3.clone() });
        }
        Self::from_bytes(&bytes, &path)
    }

    /// A tokenizer from the bytes of a `tokenizer.json` (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| TokenizerError::Bad { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { inner })
    }

    /// Writes the tokenizer as `tokenizer.json` to `path`; returns what the spec
    /// records of it (the path as given, and the file's hash).
    pub fn save(&self, path: &Path) -> Result<TokenizerSpec, TokenizerError> {
        let write = |reason: String| TokenizerError::Write { path: path.to_path_buf(), reason };
        let json = self.inner.to_string(true).map_err(|e| write(e.to_string()))?;
        std::fs::write(path, json.as_bytes()).map_err(|e| write(e.to_string()))?;
        Ok(TokenizerSpec {
            path: path.display().to_string(),
            blake3: blake3::hash(json.as_bytes()).to_hex().to_string(),
        })
    }

    /// Tokens in the vocabulary, special tokens included: the model's vocab.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The token ids of `text`, encoded piece by piece (cut after newlines).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let pieces = pieces(text, ENCODE_PIECE);
        let encodings =
            self.inner.encode_batch_fast(pieces, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect())
    }

    /// The text of `ids` (for samples and tests).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Encode(e.to_string()))
    }
}

/// `text` cut into consecutive pieces of about `size` bytes, each ending after
/// a newline where one comes soon enough.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / size + 1);
    let mut rest = text;
    while !rest.is_empty() {
        if rest.len() <= size {
            out.push(rest);
            break;
        }
        let mut cut = size;
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let cut = rest[cut..].find('\n').map_or(rest.len(), |i| cut + i + 1);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// Real English text (Austen, public domain), embedded so tests need no package or download.
#[cfg(test)]
pub(crate) const SAMPLE_TEXT: &str = "\
It is a truth universally acknowledged, that a single man in possession of a good fortune, \
must be in want of a wife.
However little known the feelings or views of such a man may be on his first entering a \
neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he \
is considered the rightful property of some one or other of their daughters.
\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is \
let at last?\"
Mr. Bennet replied that he had not.
\"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\"
Mr. Bennet made no answer.
\"Do you not want to know who has taken it?\" cried his wife impatiently.
\"You want to tell me, and I have no objection to hearing it.\"
This was invitation enough.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trained_tokenizer_round_trips_text_and_compresses_it() {
        let tok = TextTokenizer::train(SAMPLE_TEXT, 400).unwrap();
        assert!(tok.vocab_size() > 257 && tok.vocab_size() <= 400, "{}", tok.vocab_size());
        let ids = tok.encode(SAMPLE_TEXT).unwrap();
        assert!(
            ids.len() < SAMPLE_TEXT.len() * 2 / 3,
            "{} tokens for {} bytes",
            ids.len(),
            SAMPLE_TEXT.len()
        );
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids).unwrap(), SAMPLE_TEXT);
        // Training is deterministic: the same text gives the same file, so the same hash.
        let dir = tempfile::tempdir().unwrap();
        let a = tok.save(&dir.path().join("a.json")).unwrap();
        let b = TextTokenizer::train(SAMPLE_TEXT, 400).unwrap().save(&dir.path().join("b.json")).unwrap();
        assert_eq!(a.blake3, b.blake3);
    }

    #[test]
    fn a_different_or_missing_tokenizer_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let spec = TextTokenizer::train(SAMPLE_TEXT, 300).unwrap().save(&path).unwrap();
        assert!(TextTokenizer::load(&spec, None).unwrap().vocab_size() <= 300);

        let other = dir.path().join("other.json");
        TextTokenizer::train(SAMPLE_TEXT, 350).unwrap().save(&other).unwrap();
        let err = TextTokenizer::load(&spec, Some(&other)).err().unwrap();
        assert!(matches!(err, TokenizerError::Mismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("other.json") && text.contains("--tokenizer") && text.contains(&spec.blake3));

        let err = TextTokenizer::load(&spec, Some(&dir.path().join("gone.json"))).err().unwrap().to_string();
        assert!(err.contains("gone.json") && err.contains("--tokenizer"), "{err}");
    }

    #[test]
    fn pieces_cover_the_text_and_end_at_newlines() {
        let text = "ab\ncd\nef\n\u{e9}\u{e9}\u{e9}\ngh";
        let p = pieces(text, 4);
        assert_eq!(p.concat(), text);
        assert!(p[..p.len() - 1].iter().all(|s| s.ends_with('\n')), "{p:?}");
        assert_eq!(pieces("", 4), Vec::<&str>::new());
    }
}
