//! A causal transformer decoder: token and learned position embeddings,
//! pre-norm blocks of multi-head self-attention and a GELU MLP, a final norm,
//! and an output head that is its own linear layer (the byte-level
//! `transformer`) or the token embedding transposed (the GPT-style `gpt`, as in
//! GPT-2). Attention and layer norm are the fused operations of
//! [`super::fused`], which keep no `t × t` scores for the backward pass.

use candle_core::{Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use starling_protocol::spec::TransformerSpec;

use super::fused;

const LN_EPS: f64 = 1e-5;

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(d, "weight")?, bias: vb.get(d, "bias")? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, LN_EPS)
    }
}

struct Block {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc: Linear,
    fc2: Linear,
}

pub struct Transformer {
    heads: usize,
    context: usize,
    tokens: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// The output head; `None` when tied to the token embedding.
    head: Option<Linear>,
}

impl Transformer {
    /// The decoder of `spec`'s sizes; with `tied`, the logits are the final
    /// states times the token embedding, transposed, and there is no `head`.
    pub fn new(spec: &TransformerSpec, tied: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = spec.d_model;
        let tokens = candle_nn::embedding(spec.vocab, d, vb.pp("tok_emb"))?;
        let positions = vb.get((spec.context, d), "pos_emb")?;
        let mut blocks = Vec::with_capacity(spec.layers);
        for i in 0..spec.layers {
            let vb = vb.pp(format!("blocks.{i:02}"));
            blocks.push(Block {
                ln1: Norm::new(d, vb.pp("ln1"))?,
                qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
                proj: candle_nn::linear(d, d, vb.pp("proj"))?,
                ln2: Norm::new(d, vb.pp("ln2"))?,
                fc: candle_nn::linear(d, 4 * d, vb.pp("fc"))?,
                fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
            });
        }
        let ln_f = Norm::new(d, vb.pp("ln_f"))?;
        let head = if tied { None } else { Some(candle_nn::linear(d, spec.vocab, vb.pp("head"))?) };
        Ok(Self { heads: spec.heads, context: spec.context, tokens, positions, blocks, ln_f, head })
    }

    /// Logits `(batch, t, vocab)` for token ids `(batch, t)`, `t ≤ context`.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.states(ids)?;
        match &self.head {
            Some(head) => fused::linear(&x, head),
            None => {
                let (b, t, d) = x.dims3()?;
                let table = self.tokens.embeddings();
                x.reshape((b * t, d))?.matmul(&table.t()?)?.reshape((b, t, table.dim(0)?))
            }
        }
    }

    /// Mean cross-entropy of the next tokens `targets` `(batch, t)` after `ids`:
    /// with a tied head, without holding the logits.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let targets = targets.flatten_all()?;
        if self.head.is_some() {
            let logits = self.forward(ids)?;
            return fused::cross_entropy(&logits.flatten_to(1)?, &targets);
        }
        let x = self.states(ids)?;
        fused::tied_head_cross_entropy(&x.flatten_to(1)?, self.tokens.embeddings(), &targets)
    }

    /// The final normed states `(batch, t, d_model)` for token ids `(batch, t)`.
    fn states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t > self.context {
            candle_core::bail!("{t} tokens exceed the model's context of {}", self.context);
        }
        let mut x = self.tokens.forward(ids)?.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        for block in &self.blocks {
            x = (&x + self.attention(block, &block.ln1.forward(&x)?)?)?;
            let h = fused::linear(&block.ln2.forward(&x)?, &block.fc)?.gelu()?;
            x = (&x + fused::linear(&h, &block.fc2)?)?;
        }
        self.ln_f.forward(&x)
    }

    fn attention(&self, block: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        let qkv = fused::linear(x, &block.qkv)?;
        fused::linear(&fused::causal_attention(&qkv, self.heads)?, &block.proj)
    }
}
