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
