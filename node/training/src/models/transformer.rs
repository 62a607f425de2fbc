//! A causal transformer decoder: token and learned position embeddings,
//! pre-norm blocks of multi-head self-attention and a GELU MLP, a final norm,
//! and an output head that is its own linear layer (the byte-level
//! `transformer`) or the token embedding transposed (the GPT-style `gpt`, as in
//! GPT-2). Built from plain tensor operations that all have gradients (candle's
//! fused softmax and layer norm have none).

use candle_core::{Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use starling_protocol::spec::TransformerSpec;

const LN_EPS: f64 = 1e-5;
/// Added to the scores of future positions: large enough to zero them after
/// softmax, finite so no NaN appears.
const MASKED: f32 = -1e9;

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(d, "weight")?, bias: vb.get(d, "bias")? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        x.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
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
    /// `(context, context)`: 0 on and below the diagonal, `MASKED` above.
    mask: Tensor,
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
        let t = spec.context;
        let mask: Vec<f32> = (0..t * t).map(|k| if k % t > k / t { MASKED } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), vb.device())?;
        Ok(Self { heads: spec.heads, context: t, tokens, positions, blocks, ln_f, head, mask })
    }

    /// Logits `(batch, t, vocab)` for token ids `(batch, t)`, `t ≤ context`.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.context {
            candle_core::bail!("{t} tokens exceed the model's context of {}", self.context);
        }
        let mut x = self.tokens.forward(ids)?.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        for block in &self.blocks {
            x = (&x + self.attention(block, &block.ln1.forward(&x)?, &mask, b, t)?)?;
            let h = block.fc.forward(&block.ln2.forward(&x)?)?.gelu()?;
            x = (&x + block.fc2.forward(&h)?)?;
        }
        let x = self.ln_f.forward(&x)?;
        match &self.head {
            Some(head) => head.forward(&x),
            None => {
                let table = self.tokens.embeddings();
                let d = x.dim(2)?;
                x.reshape((b * t, d))?.matmul(&table.t()?)?.reshape((b, t, table.dim(0)?))
            }
        }
    }

    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        b: usize,
        t: usize,
    ) -> candle_core::Result<Tensor> {
        let d = x.dim(2)?;
        let hd = d / self.heads;
        let qkv = block.qkv.forward(x)?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * d, d)?.reshape((b, t, self.heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        block.proj.forward(&y)
    }
}
