//! The transformer's memory-heavy pieces as fused candle operations with
//! hand-written CPU kernels and backward passes: causal self-attention, layer
//! norm, linear layers and cross-entropy.
//!
//! Built from candle's plain operations, each of these keeps every
//! intermediate tensor of its forward pass alive until the backward pass: the
//! attention its scores, scaled scores, masked scores and the softmax's pieces
//! (about six `batch × heads × t²` tensors a block), the loss about five
//! `tokens × vocab` tensors, the norm nine `tokens × d_model` tensors, a linear
//! layer its product and its sum with the bias. At
//! `gpt2-small` (t = 1024, vocab 50257) that is most of a step's 10 GB. The
//! fused operations keep only their inputs and output and recompute what the
//! backward pass needs (the attention row by row, in blocks of queries, as
//! FlashAttention does), so no `t²` or extra `tokens × vocab` tensor outlives
//! its block. With a tied output head, the head and the loss are one operation
//! that never holds the logits at all.
//!
//! They run on the CPU in `f32`; on another device or dtype each function falls
//! back to the same computation in candle's operations. Results match those
//! operations to float rounding (tests below) and are deterministic: the same
//! inputs give bit-identical outputs whatever the thread count.

mod attention;
mod head;
mod linear;
mod loss;
mod norm;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};

/// Causal softmax attention of `heads` heads from the packed projection `qkv`
/// `(batch, t, 3·d_model)` (queries, then keys, then values):
/// `softmax(q·kᵀ/√head_dim + causal mask)·v` per head, `(batch, t, d_model)`.
pub fn causal_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    if fusable(qkv) {
        qkv.contiguous()?.apply_op1(attention::CausalAttention { heads })
    } else {
        attention::reference(qkv, heads)
    }
}

/// `layer` (`x·wᵀ + b`) applied to `x` `(.., in)`, keeping only its output
/// for the backward pass (candle's `Linear` keeps the product and the sum).
pub fn linear(x: &Tensor, layer: &candle_nn::Linear) -> Result<Tensor> {
    match layer.bias() {
        Some(bias) if fusable(x) => {
            x.contiguous()?.apply_op3(&layer.weight().contiguous()?, &bias.contiguous()?, linear::Linear)
        }
        _ => candle_core::Module::forward(layer, x),
    }
}

/// Layer norm over the last dimension of `x`, with `weight` and `bias` of that size.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) {
        x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, norm::LayerNorm { eps })
    } else {
        norm::reference(x, weight, bias, eps)
    }
}

/// Mean cross-entropy of `logits` `(n, classes)` against `targets` `(n)` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fusable(logits) && targets.dtype() == DType::U32 {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, loss::CrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

/// Mean cross-entropy of the logits `h·tableᵀ` (`h` `(n, d)`, `table`
/// `(vocab, d)`, a tied output head) against `targets` `(n)` (u32), without
/// holding the logits.
pub fn tied_head_cross_entropy(h: &Tensor, table: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fusable(h) && targets.dtype() == DType::U32 {
        let (h, table, targets) = (h.contiguous()?, table.contiguous()?, targets.contiguous()?);
        h.apply_op3(&table, &targets, head::TiedHeadCrossEntropy::default())
    } else {
        cross_entropy(&h.matmul(&table.t()?)?, targets)
    }
}

fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous `f32` data of a CPU tensor, as a slice of its storage.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// Runs `f` over the contiguous `f32` data of `t`, a CPU tensor (copied first
/// when it is not contiguous).
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{what}: expected a CPU tensor");
    };
    f(f32_slice(cpu, layout, what)?)
}

/// The last dimension of `layout`, and how many rows of it there are.
fn rows_of(layout: &Layout) -> Result<(usize, usize)> {
    let d = layout.dims().last().copied().unwrap_or(1);
    if d == 0 {
        candle_core::bail!("an empty last dimension");
    }
    Ok((layout.shape().elem_count() / d, d))
}
