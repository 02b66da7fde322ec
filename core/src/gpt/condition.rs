use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu_approximate;

use crate::checkpoint::Weights;
use crate::config::{GptConfig, ModelType};
use crate::error::CheckpointError;

/// What one batch is conditioned on.
#[derive(Debug, Clone)]
pub enum Condition<B: Backend> {
    /// Class ids `[batch]`; id `num_classes` is the null class of CFG.
    Class(Tensor<B, 1, Int>),
    /// Caption features `[batch, cls_token_num, caption_dim]` (left-padded FLAN-T5 output).
    Caption(Tensor<B, 3>),
}

impl<B: Backend> Condition<B> {
    pub fn batch(&self) -> usize {
        match self {
            Condition::Class(t) => t.dims()[0],
            Condition::Caption(t) => t.dims()[0],
        }
    }

    /// The conditional rows followed by the unconditional rows, as CFG runs them.
    pub fn cat(a: Self, b: Self) -> Self {
        match (a, b) {
            (Condition::Class(a), Condition::Class(b)) => {
                Condition::Class(Tensor::cat(vec![a, b], 0))
            }
            (Condition::Caption(a), Condition::Caption(b)) => {
                Condition::Caption(Tensor::cat(vec![a, b], 0))
            }
            _ => panic!("cannot batch a class condition with a caption condition"),
        }
    }
}

/// Class embedding table with one extra row, the null class (official `LabelEmbedder`).
#[derive(Module, Debug)]
pub struct LabelEmbedder<B: Backend> {
    pub embedding_table: Embedding<B>,
    #[module(skip)]
    pub num_classes: usize,
}

/// `fc2(gelu_tanh(fc1(x)))`, no biases (official `MLP` inside `CaptionEmbedder`).
#[derive(Module, Debug)]
pub struct CaptionMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// Caption projection plus the learned null caption used for CFG (official `CaptionEmbedder`).
#[derive(Module, Debug)]
pub struct CaptionEmbedder<B: Backend> {
    pub cap_proj: CaptionMlp<B>,
    /// A buffer in the official state dict (`[cls_token_num, caption_dim]`), not trained.
    pub uncond_embedding: Param<Tensor<B, 2>>,
}

/// The condition embedder of either model type.
#[derive(Module, Debug)]
pub struct ConditionEmbedder<B: Backend> {
    pub label: Option<LabelEmbedder<B>>,
    pub caption: Option<CaptionEmbedder<B>>,
}

impl<B: Backend> ConditionEmbedder<B> {
    pub fn init(cfg: &GptConfig, device: &B::Device) -> Self {
        match cfg.model_type {
            ModelType::C2i => Self {
                label: Some(LabelEmbedder {
                    embedding_table: EmbeddingConfig::new(cfg.class_table_rows(), cfg.dim)
                        .with_initializer(super::normal_init(cfg))
                        .init(device),
                    num_classes: cfg.num_classes,
                }),
                caption: None,
            },
            ModelType::T2i => {
                let lin = |i, o| {
                    LinearConfig::new(i, o)
                        .with_bias(false)
                        .with_initializer(super::normal_init(cfg))
                        .init(device)
                };
                let uncond = Tensor::<B, 2>::random(
                    [cfg.cls_token_num, cfg.caption_dim],
                    burn::tensor::Distribution::Normal(0.0, 1.0 / (cfg.caption_dim as f64).sqrt()),
                    device,
                );
                Self {
                    label: None,
                    caption: Some(CaptionEmbedder {
                        cap_proj: CaptionMlp {
                            fc1: lin(cfg.caption_dim, cfg.dim),
                            fc2: lin(cfg.dim, cfg.dim),
                        },
                        uncond_embedding: Param::from_tensor(uncond).set_require_grad(false),
                    }),
                }
            }
        }
    }

    pub fn load(w: &Weights<B>, name: &str, cfg: &GptConfig) -> Result<Self, CheckpointError> {
        Ok(match cfg.model_type {
            ModelType::C2i => Self {
                label: Some(LabelEmbedder {
                    embedding_table: w.embedding(
                        &format!("{name}.embedding_table"),
                        cfg.class_table_rows(),
                        cfg.dim,
                    )?,
                    num_classes: cfg.num_classes,
                }),
                caption: None,
            },
            ModelType::T2i => Self {
                label: None,
                caption: Some(CaptionEmbedder {
                    cap_proj: CaptionMlp {
                        fc1: w.linear(
                            &format!("{name}.cap_proj.fc1"),
                            cfg.caption_dim,
                            cfg.dim,
                            false,
                        )?,
                        fc2: w.linear(&format!("{name}.cap_proj.fc2"), cfg.dim, cfg.dim, false)?,
                    },
                    uncond_embedding: Param::from_tensor(w.tensor(
                        &format!("{name}.uncond_embedding"),
                        [cfg.cls_token_num, cfg.caption_dim],
                    )?)
                    .set_require_grad(false),
                }),
            },
        })
    }

    /// Condition embeddings `[batch, tokens, dim]`.
    pub fn forward(&self, cond: &Condition<B>) -> Tensor<B, 3> {
        match (cond, &self.label, &self.caption) {
            (Condition::Class(labels), Some(l), _) => {
                l.embedding_table.forward(labels.clone().unsqueeze_dim(1))
            }
            (Condition::Caption(c), _, Some(e)) => {
                // Caption features arrive in f32; they meet the projection in its type.
                let c = c.clone().cast(e.uncond_embedding.val().dtype());
                let hidden = gelu_approximate(super::linear3(&e.cap_proj.fc1, c));
                super::linear3(&e.cap_proj.fc2, hidden)
            }
            (Condition::Class(_), None, _) => {
                panic!("class condition given to a text-conditional model")
            }
            (Condition::Caption(_), _, None) => {
                panic!("caption condition given to a class-conditional model")
            }
        }
    }

    /// The unconditional counterpart of `cond` for CFG: the null class, or the learned null
    /// caption (official: `zeros_like(cond) + uncond_embedding`).
    pub fn null_condition(&self, cond: &Condition<B>) -> Condition<B> {
        match (cond, &self.label, &self.caption) {
            (Condition::Class(labels), Some(l), _) => {
                Condition::Class(labels.zeros_like().add_scalar(l.num_classes as i64))
            }
            (Condition::Caption(c), _, Some(e)) => {
                let [b, t, d] = c.dims();
                let null = e.uncond_embedding.val().cast(c.dtype());
                Condition::Caption(null.unsqueeze::<3>().expand([b, t, d]))
            }
            _ => panic!("condition does not match the model type"),
        }
    }
}
