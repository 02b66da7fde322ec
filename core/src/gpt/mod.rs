//! The Llama-architecture generator of LlamaGen (official `autoregressive/models/gpt.py`):
//! RMSNorm, SwiGLU, 2-D rotary embedding, fused-`wqkv` grouped-query attention with a KV cache,
//! and a class or caption embedder in front of the image tokens.

mod attention;
mod cache;
mod condition;
mod feed_forward;
mod model;
mod norm;
pub mod rope;

pub use attention::Attention;
pub use cache::KvCache;
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
    let y = layer.forward(x.reshape([b * s, d]));
    let out = y.dims()[1];
    y.reshape([b, s, out])
}
