use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::checkpoint::Weights;
use crate::config::GptConfig;
use crate::error::CheckpointError;

/// SwiGLU feed-forward: `w2(silu(w1 x) · w3 x)`, no biases.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub w1: Linear<B>,
    pub w3: Linear<B>,
    pub w2: Linear<B>,
    pub ffn_dropout: Dropout,
}

impl<B: Backend> FeedForward<B> {
    pub fn init(cfg: &GptConfig, device: &B::Device) -> Self {
        let (d, h) = (cfg.dim, cfg.ffn_hidden_dim());
        let lin = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(super::normal_init(cfg))
                .init(device)
        };
        Self {
            w1: lin(d, h),
            w3: lin(d, h),
            w2: lin(h, d),
            ffn_dropout: DropoutConfig::new(cfg.ffn_dropout_p).init(),
        }
    }

    pub fn load(w: &Weights<B>, name: &str, cfg: &GptConfig) -> Result<Self, CheckpointError> {
        let (d, h) = (cfg.dim, cfg.ffn_hidden_dim());
        Ok(Self {
            w1: w.linear(&format!("{name}.w1"), d, h, false)?,
            w3: w.linear(&format!("{name}.w3"), d, h, false)?,
            w2: w.linear(&format!("{name}.w2"), h, d, false)?,
            ffn_dropout: DropoutConfig::new(cfg.ffn_dropout_p).init(),
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(super::linear3(&self.w1, x.clone()));
        let hidden = gate * super::linear3(&self.w3, x);
        self.ffn_dropout.forward(super::linear3(&self.w2, hidden))
    }
}
