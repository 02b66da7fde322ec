//! The Llama-architecture generator of LlamaGen (official `autoregressive/models/gpt.py`):
//! RMSNorm, SwiGLU, 2-D rotary embedding, fused-`wqkv` grouped-query attention with a KV cache,
//! and a class or caption embedder in front of the image tokens.

mod attention;
mod cache;
mod condition;
mod feed_forward;
mod fused;
mod model;
mod norm;
pub mod rope;

pub use attention::Attention;
pub use cache::{CacheLayout, KvCache, KvPart, LayerKv};
pub use condition::{CaptionEmbedder, Condition, ConditionEmbedder, LabelEmbedder};
pub use feed_forward::FeedForward;
pub use model::{Transformer, TransformerBlock, cross_entropy};
pub use norm::RmsNorm;

use burn::nn::Linear;
use burn::prelude::*;

/// The official `_init_weights`: linear and embedding weights ~ N(0, initializer_range).
pub(crate) fn normal_init(cfg: &crate::config::GptConfig) -> burn::nn::Initializer {
    burn::nn::Initializer::Normal {
        mean: 0.0,
        std: cfg.initializer_range,
    }
}

/// A linear layer on `[batch, seq, dim]` run as one `[batch·seq, dim]` matrix product: burn's
/// broadcasting batched matmul would otherwise multiply row by row (one GEMV per batch entry),
/// which is several times slower on the CPU during one-token decode steps.
pub(crate) fn linear3<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let x2 = x.reshape([b * s, d]);
    let y = if layer.weight.val().dtype() != x2.dtype() {
        mixed_linear(layer, x2)
    } else if crate::kernels::is_cpu::<B>() && b * s <= SKINNY_MAX_ROWS {
        skinny(layer, x2)
    } else {
        layer.forward(x2)
    };
    let out = y.dims()[1];
    y.reshape([b, s, out])
}

/// A linear layer on `[rows, dim]` (the fused decode step's): burn's product, or the mixed one
/// when the weight is held in another float type than `x`.
pub(crate) fn linear2<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    if layer.weight.val().dtype() != x.dtype() {
        mixed_linear(layer, x)
    } else {
        layer.forward(x)
    }
}

/// A linear layer whose weight is held in another type than `x`: half weights on the CPU
/// (f32 activations; the product widens the weights) or quantized weights on any backend. The
/// result has the type of `x`.
fn mixed_linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = layer.weight.val();
    let dtype = x.dtype();
    let y = if matches!(w.dtype(), burn::tensor::DType::QFloat(_)) {
        #[cfg(feature = "cpu")]
        let y = crate::kernels::cpu::quant_weight_matmul(x.clone(), w.clone());
        #[cfg(not(feature = "cpu"))]
        let y: Option<Tensor<B, 2>> = None;
        // burn's quantized product: on wgpu and cuda the kernel reads the packed values.
        y.unwrap_or_else(|| x.matmul(w))
    } else {
        #[cfg(feature = "cpu")]
        let y = crate::kernels::cpu::half_weight_matmul(x.clone(), w.clone());
        #[cfg(not(feature = "cpu"))]
        let y: Option<Tensor<B, 2>> = None;
        y.unwrap_or_else(|| x.cast(w.dtype()).matmul(w).cast(dtype))
    };
    match &layer.bias {
        Some(bias) => y + bias.val().cast(dtype).unsqueeze_dim(0),
        None => y,
    }
}

/// Few-row products (the decode steps) are below the CPU backend's threshold for running a
/// matrix product on several threads, so one core would do all the work: split the weight's
/// columns in two (strided views, no copy) and multiply both halves at once.
const SPLIT_MAX_ROWS: usize = 16;

/// Rows up to which a CPU linear layer reads its weights once with dot products per row
/// ([`crate::kernels::cpu::f32_weight_matmul`]) rather than through a general product that
/// packs the weight: decode steps and the passes of speculative decoding.
const SKINNY_MAX_ROWS: usize = 12;

fn skinny<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "cpu")]
    if let Some(y) = crate::kernels::cpu::f32_weight_matmul(x.clone(), layer.weight.val()) {
        return match &layer.bias {
            Some(bias) => y + bias.val().unsqueeze_dim(0),
            None => y,
        };
    }
    if x.dims()[0] <= SPLIT_MAX_ROWS {
        split_columns(layer, x)
    } else {
        layer.forward(x)
    }
}

fn split_columns<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = layer.weight.val();
    let [_, out] = w.dims();
    if out < 256 || rayon::current_num_threads() < 2 {
        return layer.forward(x);
    }
    let half = out / 2;
    let (wa, wb) = (w.clone().narrow(1, 0, half), w.narrow(1, half, out - half));
    let (ya, yb) = rayon::join(|| x.clone().matmul(wa), || x.clone().matmul(wb));
    let y = Tensor::cat(vec![ya, yb], 1);
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze_dim(0),
        None => y,
    }
}
