//! Which model a run trains: an MLP, a small CNN for images, a small byte-level
//! transformer language model or a GPT-style decoder over BPE tokens, with its
//! sizes and its exact parameter count.
//!
//! In TOML a model is a table tagged by `kind`; a table without `kind` is an MLP,
//! so specs written before other models existed (`model = { layers = [...] }`)
//! keep parsing to the same run id.

use crate::codec::Matrix;
use serde::{Deserialize, Serialize};

/// The model every node trains.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    /// A multilayer perceptron with ReLU between layers.
    Mlp(MlpSpec),
    /// Conv3x3-ReLU-MaxPool2 blocks, then one linear layer to the classes.
    Cnn(CnnSpec),
    /// A causal transformer over bytes (pre-norm blocks, learned positions).
    Transformer(TransformerSpec),
    /// A GPT-2-style decoder: as the transformer, with the output head tied to
    /// the token embedding, over the tokens of a BPE tokenizer (or bytes).
    Gpt(GptSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Layer widths: input, hidden..., classes.
    pub layers: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnSpec {
    /// Input image as channels, height, width (e.g. `[1, 28, 28]`).
    pub input: [usize; 3],
    /// Output channels of each conv block; each block halves height and width.
    pub channels: Vec<usize>,
    pub classes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSpec {
    /// Token alphabet; 256 for bytes.
    pub vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Tokens of context the model sees (and predicts) at once.
    pub context: usize,
}

/// A GPT-style decoder language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptSpec {
    /// Token ids the model embeds and predicts: at least the tokenizer's
    /// vocabulary (256 for bytes when there is no tokenizer).
    pub vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Tokens of context the model sees (and predicts) at once.
    pub context: usize,
    /// The tokenizer every node must use; absent: the text is read as bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSpec>,
}

/// A tokenizer file (Hugging Face `tokenizer.json`) and the BLAKE3 hash (hex)
/// of its bytes: nodes refuse to train with any other file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub path: String,
    pub blake3: String,
}

/// The language-model presets of `starling spec new --model`, smallest first:
/// name, what it is, and its sizes with the vocabulary the preset's tokenizer
/// is trained to (the spec's vocab is the tokenizer's actual size).
pub const GPT_PRESETS: [(&str, &str, GptSpec); 3] = [
    (
        "lm-tiny",
        "~1M parameters: 4 blocks of width 128, 128 tokens of context",
        GptSpec::sized(2048, 128, 4, 4, 128),
    ),
    (
        "lm-small",
        "~10M parameters: 8 blocks of width 256, 256 tokens of context",
        GptSpec::sized(8192, 256, 8, 8, 256),
    ),
    (
        "gpt2-small",
        "GPT-2 small, ~124M parameters: 12 blocks of width 768, 12 heads, 1024 tokens of context",
        GptSpec::sized(50257, 768, 12, 12, 1024),
    ),
];

impl GptSpec {
    /// A byte-level spec of these sizes (no tokenizer yet).
    pub const fn sized(vocab: usize, d_model: usize, heads: usize, layers: usize, context: usize) -> Self {
        GptSpec { vocab, d_model, heads, layers, context, tokenizer: None }
    }

    /// The preset named `name` (see [`GPT_PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        GPT_PRESETS.iter().find(|(n, _, _)| *n == name).map(|(_, _, spec)| spec.clone())
    }

    /// The sizes as a transformer spec: the same blocks, without the tie or the tokenizer.
    pub fn dims(&self) -> TransformerSpec {
        TransformerSpec {
            vocab: self.vocab,
            d_model: self.d_model,
            heads: self.heads,
            layers: self.layers,
            context: self.context,
        }
    }
}

impl ModelSpec {
    /// An MLP of widths `layers`.
    pub fn mlp(layers: Vec<usize>) -> Self {
        ModelSpec::Mlp(MlpSpec { layers })
    }

    /// The MLP's widths, when the model is an MLP.
    pub fn mlp_layers(&self) -> Option<&[usize]> {
        match self {
            ModelSpec::Mlp(m) => Some(&m.layers),
            _ => None,
        }
    }

    /// The name used in the spec's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::Cnn(_) => "cnn",
            ModelSpec::Transformer(_) => "transformer",
            ModelSpec::Gpt(_) => "gpt",
        }
    }

    /// Values per input sample of a classifier (`None` for the language model).
    pub fn input_dim(&self) -> Option<usize> {
        match self {
            ModelSpec::Mlp(m) => m.layers.first().copied(),
            ModelSpec::Cnn(c) => Some(c.input.iter().product()),
            ModelSpec::Transformer(_) | ModelSpec::Gpt(_) => None,
        }
    }

    /// Whether the model is a language model (trained on `text:PATH`).
    pub fn is_language_model(&self) -> bool {
        matches!(self, ModelSpec::Transformer(_) | ModelSpec::Gpt(_))
    }

    /// Token context of a language model.
    pub fn context(&self) -> Option<usize> {
        match self {
            ModelSpec::Transformer(t) => Some(t.context),
            ModelSpec::Gpt(g) => Some(g.context),
            _ => None,
        }
    }

    /// Classes of a classifier (`None` for the language model).
    pub fn classes(&self) -> Option<usize> {
        match self {
            ModelSpec::Mlp(m) => m.layers.last().copied(),
            ModelSpec::Cnn(c) => Some(c.classes),
            ModelSpec::Transformer(_) | ModelSpec::Gpt(_) => None,
        }
    }

    /// Number of parameters: exactly the length of the flat vector nodes
    /// exchange, the sum of [`ModelSpec::shapes`]. (A GPT's head is its token
    /// embedding, transposed: no parameters of its own.)
    pub fn param_count(&self) -> usize {
        self.shapes().iter().map(|shape| shape.iter().product::<usize>()).sum()
    }

    /// The shape of every parameter tensor, in the flat order every node
    /// uses (the MLP's layer by layer, weight then bias; the others' sorted by
    /// variable name).
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        match self {
            ModelSpec::Mlp(m) => m.layers.windows(2).flat_map(|w| [vec![w[1], w[0]], vec![w[1]]]).collect(),
            ModelSpec::Cnn(c) => {
                let (mut ch, mut h, mut w) = (c.input[0], c.input[1], c.input[2]);
                let mut out = Vec::new();
                for &o in &c.channels {
                    out.extend([vec![o], vec![o, ch, 3, 3]]);
                    (ch, h, w) = (o, h / 2, w / 2);
                }
                out.extend([vec![c.classes], vec![c.classes, ch * h * w]]);
                out
            }
            ModelSpec::Transformer(t) => decoder_shapes(t, true),
            ModelSpec::Gpt(g) => decoder_shapes(&g.dims(), false),
        }
    }

    /// The weight matrices in the flat parameter vector (every tensor of two
    /// or more dimensions, as its first dimension × the rest): what the
    /// `lowrank` codec factors.
    pub fn matrices(&self) -> Vec<Matrix> {
        let mut offset = 0;
        let mut out = Vec::new();
        for shape in self.shapes() {
            let len: usize = shape.iter().product();
            if shape.len() >= 2 {
                out.push(Matrix { offset, rows: shape[0], cols: len / shape[0].max(1) });
            }
            offset += len;
        }
        out
    }

    /// Checks the sizes; the error names the field to fix.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field, reason: &str| Err((field, reason.to_string()));
        match self {
            ModelSpec::Mlp(m) => {
                if m.layers.len() < 2 {
                    return bad("model.layers", "needs at least an input and an output width");
                }
                if m.layers.iter().any(|&w| w == 0 || w > 65_536) {
                    return bad("model.layers", "every width must be between 1 and 65536");
                }
                if *m.layers.last().unwrap() < 2 {
                    return bad("model.layers", "the output layer needs at least 2 classes");
                }
            }
            ModelSpec::Cnn(c) => {
                if c.input.iter().any(|&v| v == 0 || v > 4096) {
                    return bad("model.input", "channels, height and width must be between 1 and 4096");
                }
                if c.channels.is_empty() || c.channels.iter().any(|&v| v == 0 || v > 4096) {
                    return bad("model.channels", "needs at least one block, each of 1 to 4096 channels");
                }
                let shrink = 1usize << c.channels.len().min(20);
                if c.input[1] < shrink || c.input[2] < shrink {
                    return bad(
                        "model.channels",
                        "each block halves the image; the image is too small for this many",
                    );
                }
                if c.classes < 2 {
                    return bad("model.classes", "needs at least 2 classes");
                }
            }
            ModelSpec::Gpt(g) => {
                ModelSpec::Transformer(g.dims()).validate()?;
                if g.tokenizer.is_none() && g.vocab < 256 {
                    return bad("model.vocab", "text without a tokenizer is read as bytes: set it to 256");
                }
                if let Some(t) = &g.tokenizer {
                    if t.blake3.len() != 64 || !t.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return bad(
                            "model.tokenizer.blake3",
                            "must be the 64 hex digits of the tokenizer file's BLAKE3 hash",
                        );
                    }
                }
            }
            ModelSpec::Transformer(t) => {
                if !(2..=65_536).contains(&t.vocab) {
                    return bad("model.vocab", "must be between 2 and 65536 (256 for bytes)");
                }
                if t.heads == 0 || t.d_model == 0 || t.d_model % t.heads != 0 {
                    return bad("model.d_model", "must be a positive multiple of model.heads");
                }
                if t.layers == 0 || t.layers > 100 {
                    return bad("model.layers", "a transformer needs 1 to 100 blocks");
                }
                if !(1..=8192).contains(&t.context) {
                    return bad("model.context", "must be between 1 and 8192 tokens");
                }
            }
        }
        if self.param_count() > MAX_PARAMS {
            return bad("model", "models over 200M parameters are not supported");
        }
        Ok(())
    }
}

/// The largest model a spec may name: GPT-2 small (124M) and some room.
pub const MAX_PARAMS: usize = 200_000_000;

/// A decoder's tensors sorted by name: `blocks.NN.{fc, fc2, ln1, ln2, proj,
/// qkv}` (bias before weight), `head` (the byte-level model's own), `ln_f`,
/// `pos_emb`, `tok_emb`.
fn decoder_shapes(t: &TransformerSpec, head: bool) -> Vec<Vec<usize>> {
    let d = t.d_model;
    let mut out = Vec::new();
    for _ in 0..t.layers {
        out.extend([vec![4 * d], vec![4 * d, d], vec![d], vec![d, 4 * d]]);
        out.extend([vec![d], vec![d], vec![d], vec![d]]);
        out.extend([vec![d], vec![d, d], vec![3 * d], vec![3 * d, d]]);
    }
    if head {
        out.extend([vec![t.vocab], vec![t.vocab, d]]);
    }
    out.extend([vec![d], vec![d], vec![t.context, d], vec![t.vocab, d]]);
    out
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("kind") {
            None => "mlp".to_string(),
            Some(toml::Value::String(kind)) => kind,
            Some(other) => return Err(D::Error::custom(format!("model.kind must be a string, not {other}"))),
        };
        let value = toml::Value::Table(table);
        let fail = |e: toml::de::Error| D::Error::custom(format!("model of kind `{kind}`: {}", e.message()));
        match kind.as_str() {
            "mlp" => value.try_into().map(ModelSpec::Mlp).map_err(fail),
            "cnn" => value.try_into().map(ModelSpec::Cnn).map_err(fail),
            "transformer" => value.try_into().map(ModelSpec::Transformer).map_err(fail),
            "gpt" => value.try_into().map(ModelSpec::Gpt).map_err(fail),
            other => Err(D::Error::custom(format!(
                "model.kind `{other}` is unknown; use \"mlp\", \"cnn\", \"transformer\" or \"gpt\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Wrap {
        model: ModelSpec,
    }

    fn parse(text: &str) -> Result<ModelSpec, toml::de::Error> {
        toml::from_str::<Wrap>(text).map(|w| w.model)
    }

    #[test]
    fn a_table_without_kind_is_an_mlp() {
        assert_eq!(parse("model = { layers = [4, 8, 2] }").unwrap(), ModelSpec::mlp(vec![4, 8, 2]));
        assert_eq!(parse("[model]\nlayers = [4, 2]").unwrap(), ModelSpec::mlp(vec![4, 2]));
    }

    #[test]
    fn every_kind_round_trips_through_toml() {
        for model in [
            ModelSpec::mlp(vec![3, 2]),
            ModelSpec::Cnn(CnnSpec { input: [1, 28, 28], channels: vec![8, 16], classes: 10 }),
            ModelSpec::Transformer(TransformerSpec {
                vocab: 256,
                d_model: 32,
                heads: 2,
                layers: 2,
                context: 16,
            }),
        ] {
            let text = toml::to_string(&Wrap { model: model.clone() }).unwrap();
            assert_eq!(parse(&text).unwrap(), model, "{text}");
        }
    }

    #[test]
    fn bad_kinds_and_fields_are_named() {
        let err = parse("model = { kind = \"rnn\" }").unwrap_err().to_string();
        assert!(err.contains("rnn"), "{err}");
        let err = parse("model = { kind = \"cnn\", layers = [1] }").unwrap_err().to_string();
        assert!(err.contains("cnn") && err.contains("layers"), "{err}");
    }

    #[test]
    fn gpt_specs_round_trip_and_count_a_tied_head() {
        let mut gpt = GptSpec::preset("lm-tiny").unwrap();
        gpt.tokenizer = Some(TokenizerSpec { path: "tok.json".into(), blake3: "ab".repeat(32) });
        let model = ModelSpec::Gpt(gpt.clone());
        let text = toml::to_string(&Wrap { model: model.clone() }).unwrap();
        assert!(text.contains("kind = \"gpt\""), "{text}");
        assert_eq!(parse(&text).unwrap(), model, "{text}");
        model.validate().unwrap();
        // The tied head adds nothing to the transformer of the same sizes without its head.
        let untied = ModelSpec::Transformer(gpt.dims()).param_count();
        assert_eq!(model.param_count(), untied - (gpt.d_model * gpt.vocab + gpt.vocab));
        gpt.tokenizer.as_mut().unwrap().blake3 = "xyz".into();
        assert_eq!(ModelSpec::Gpt(gpt).validate().unwrap_err().0, "model.tokenizer.blake3");
    }

    #[test]
    fn presets_span_a_million_to_gpt2_small() {
        let count = |name| ModelSpec::Gpt(GptSpec::preset(name).unwrap()).param_count();
        assert!((800_000..1_500_000).contains(&count("lm-tiny")), "{}", count("lm-tiny"));
        assert!((7_000_000..15_000_000).contains(&count("lm-small")), "{}", count("lm-small"));
        // Exactly GPT-2 small's 124,439,808 (its vocabulary of 50257, 1024 positions).
        assert_eq!(count("gpt2-small"), 124_439_808);
        for (_, _, spec) in GPT_PRESETS {
            ModelSpec::Gpt(spec).validate().unwrap();
        }
        assert!(GptSpec::preset("gpt5").is_none());
    }

    #[test]
    fn shapes_add_up_to_the_parameter_count_and_matrices_lie_inside() {
        let cnn = ModelSpec::Cnn(CnnSpec { input: [1, 8, 8], channels: vec![2, 3], classes: 4 });
        let lm =
            ModelSpec::Transformer(TransformerSpec { vocab: 5, d_model: 4, heads: 2, layers: 2, context: 3 });
        let mlp = ModelSpec::Mlp(MlpSpec { layers: vec![6, 5, 3] });
        for spec in [cnn, lm, mlp] {
            let sizes: usize = spec.shapes().iter().map(|s| s.iter().product::<usize>()).sum();
            assert_eq!(sizes, spec.param_count());
            let matrices = spec.matrices();
            assert!(matrices.windows(2).all(|w| w[0].offset + w[0].rows * w[0].cols <= w[1].offset));
            let last = matrices.last().unwrap();
            assert!(last.offset + last.rows * last.cols <= spec.param_count());
        }
    }

    #[test]
    fn param_counts_follow_the_architectures() {
        let cnn = ModelSpec::Cnn(CnnSpec { input: [1, 8, 8], channels: vec![2, 3], classes: 4 });
        assert_eq!(cnn.param_count(), (2 * 9 + 2) + (3 * 2 * 9 + 3) + (3 * 2 * 2 * 4 + 4));
        let lm =
            ModelSpec::Transformer(TransformerSpec { vocab: 5, d_model: 4, heads: 2, layers: 1, context: 3 });
        let block = 8 + (4 * 12 + 12) + (16 + 4) + 8 + (4 * 16 + 16) + (16 * 4 + 4);
        assert_eq!(lm.param_count(), 20 + 12 + block + 8 + (20 + 5));
    }
}
