//! The T5 v1.1 / FLAN-T5 encoder stack (Hugging Face `T5EncoderModel`): a shared token
//! embedding, then `num_layers` pre-norm blocks of self-attention and feed-forward, then a final
//! layer norm. T5's particulars:
//!
//! - no biases anywhere, no embedding scaling and no `1/sqrt(d_kv)` scaling of the scores;
//! - the layer norm is RMS-style (`x · rsqrt(mean(x²) + eps) · w`, no mean subtraction, no bias);
//! - a learned relative position bias: relative distances are put in logarithmic buckets
//!   (bidirectional), looked up in a `[num_buckets, num_heads]` table that only the first layer
//!   owns, and the same bias is added to the scores of every layer;
//! - padded keys get `f32::MIN` added (padded query rows are still computed);
//! - the feed-forward of v1.1 / FLAN is gated: `wo(act(wi_0 x) · wi_1 x)` with `gelu_new` (the
//!   tanh approximation); the original T5's `wo(relu(wi x))` loads too.

use burn::nn::Embedding;
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu, softmax};
use burn::tensor::{Bool, DType, FloatDType, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{StateDict, Weights};
use crate::config::TensorSpec;
use crate::error::{CheckReport, CheckpointError, ConfigError};
use crate::gpt::RmsNorm;
use crate::gpt::linear3;

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "relu".into()
}
fn default_eos() -> Option<u32> {
    Some(1)
}
fn default_pad() -> Option<u32> {
    Some(0)
}

/// The encoder's part of a Hugging Face `T5Config` (`config.json`); other keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    /// Width of the hidden states (2048 for FLAN-T5-XL): the caption dimension.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `gated-gelu` (v1.1 / FLAN), `relu` (original T5), `gated-silu`, …
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
}

/// The feed-forward activation, as `transformers` derives it from `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// Exact (erf) GELU.
    Gelu,
    Silu,
}

impl T5Config {
    /// FLAN-T5-XL's encoder (`google/flan-t5-xl`), the text encoder of LlamaGen's t2i models.
    pub fn flan_t5_xl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 2048,
            d_kv: 64,
            d_ff: 5120,
            num_layers: 24,
            num_heads: 32,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            eos_token_id: Some(1),
            pad_token_id: Some(0),
        }
    }

    /// Whether the feed-forward is gated, and its activation (`transformers`' rules:
    /// `gated-gelu` means `gelu_new`; otherwise `[gated-]<act>`).
    pub fn feed_forward(&self) -> Result<(bool, Activation), ConfigError> {
        let proj = self.feed_forward_proj.as_str();
        if proj == "gated-gelu" {
            return Ok((true, Activation::GeluTanh));
        }
        let (gated, act) = match proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            None => (false, proj),
            Some(_) => {
                return Err(ConfigError::Invalid(format!(
                    "T5 feed_forward_proj '{proj}' is neither '<act>' nor 'gated-<act>'"
                )));
            }
        };
        let act = match act {
            "relu" => Activation::Relu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "T5 feed-forward activation '{other}' is not supported (relu, gelu, gelu_new, silu)"
                )));
            }
        };
        Ok((gated, act))
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.d_model == 0 || self.d_kv == 0 || self.num_heads == 0 || self.num_layers == 0 {
            return Err(ConfigError::Invalid(
                "T5 d_model, d_kv, num_heads and num_layers must be positive".into(),
            ));
        }
        if self.relative_attention_num_buckets < 4 || self.relative_attention_max_distance < 2 {
            return Err(ConfigError::Invalid(
                "T5 needs at least 4 relative-position buckets and a max distance of at least 2"
                    .into(),
            ));
        }
        self.feed_forward().map(|_| ())
    }

    /// Every encoder tensor (official names, PyTorch shapes). The token embedding is listed as
    /// `shared.weight`; checkpoints that only have `encoder.embed_tokens.weight` load as well.
    pub fn state_dict_specs(&self) -> Vec<TensorSpec> {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let gated = self.feed_forward().map(|(g, _)| g).unwrap_or(true);
        let mut specs = vec![TensorSpec::param("shared.weight", &[self.vocab_size, d])];
        for i in 0..self.num_layers {
            let p = format!("encoder.block.{i}.layer");
            for m in ["q", "k", "v"] {
                specs.push(TensorSpec::param(
                    format!("{p}.0.SelfAttention.{m}.weight"),
                    &[inner, d],
                ));
            }
            specs.push(TensorSpec::param(
                format!("{p}.0.SelfAttention.o.weight"),
                &[d, inner],
            ));
            if i == 0 {
                specs.push(TensorSpec::param(
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    &[self.relative_attention_num_buckets, self.num_heads],
                ));
            }
            specs.push(TensorSpec::param(format!("{p}.0.layer_norm.weight"), &[d]));
            if gated {
                for m in ["wi_0", "wi_1"] {
                    specs.push(TensorSpec::param(
                        format!("{p}.1.DenseReluDense.{m}.weight"),
                        &[ff, d],
                    ));
                }
            } else {
                specs.push(TensorSpec::param(
                    format!("{p}.1.DenseReluDense.wi.weight"),
                    &[ff, d],
                ));
            }
            specs.push(TensorSpec::param(
                format!("{p}.1.DenseReluDense.wo.weight"),
                &[d, ff],
            ));
            specs.push(TensorSpec::param(format!("{p}.1.layer_norm.weight"), &[d]));
        }
        specs.push(TensorSpec::param("encoder.final_layer_norm.weight", &[d]));
        specs
    }

    /// Exact number of encoder parameters (the embedding counted once).
    pub fn num_params(&self) -> usize {
        self.state_dict_specs()
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

/// T5's relative-position bucket of `relative_position = key_pos − query_pos`, bidirectional
/// (`T5Attention._relative_position_bucket`): half the buckets for positive distances; within
/// each half, distances below `num_buckets / 4` get their own bucket and larger ones share
/// logarithmically wider buckets up to `max_distance`. The logarithm is taken in f32, as the
/// official code does.
pub fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative_position > 0 { half } else { 0 };
    let n = relative_position.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let scaled = ((n as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (half - max_exact) as f32) as i64;
        bucket += (max_exact + scaled).min(half - 1);
    }
    bucket as usize
}

/// Self-attention without biases or score scaling.
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: burn::nn::Linear<B>,
    pub k: burn::nn::Linear<B>,
    pub v: burn::nn::Linear<B>,
    pub o: burn::nn::Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub d_kv: usize,
}

impl<B: Backend> T5Attention<B> {
    fn load(w: &Weights<B>, name: &str, cfg: &T5Config) -> Result<Self, CheckpointError> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        Ok(Self {
            q: w.linear(&format!("{name}.q"), d, inner, false)?,
            k: w.linear(&format!("{name}.k"), d, inner, false)?,
            v: w.linear(&format!("{name}.v"), d, inner, false)?,
            o: w.linear(&format!("{name}.o"), inner, d, false)?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// `x` `[batch, len, d_model]`; `bias` `[batch or 1, heads, len, len]` with the padding
    /// already folded in.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let (h, dk) = (self.num_heads, self.d_kv);
        let split = |t: Tensor<B, 3>| t.reshape([b, l, h, dk]).swap_dims(1, 2);
        let q = split(linear3(&self.q, x.clone()));
        let k = split(linear3(&self.k, x.clone()));
        let v = split(linear3(&self.v, x));
        let dtype = q.dtype();
        // Scores, bias and softmax in f32 whatever the weights' type (as `transformers` does
        // for half-precision T5); `bias` is f32.
        let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) + bias;
        let weights = softmax(scores, 3).cast(dtype);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, l, h * dk]);
        linear3(&self.o, out)
    }
}

/// `wo(act(wi_0 x) · wi_1 x)` (gated) or `wo(act(wi x))`.
#[derive(Module, Debug)]
pub struct T5FeedForward<B: Backend> {
    /// `wi_0` when gated, `wi` otherwise.
    pub wi: burn::nn::Linear<B>,
    /// `wi_1` (gated only).
    pub wi_gate: Option<burn::nn::Linear<B>>,
    pub wo: burn::nn::Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> T5FeedForward<B> {
    fn load(w: &Weights<B>, name: &str, cfg: &T5Config) -> Result<Self, CheckpointError> {
        let (gated, act) = cfg.feed_forward()?;
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let (wi, wi_gate) = if gated {
            (
                w.linear(&format!("{name}.wi_0"), d, ff, false)?,
                Some(w.linear(&format!("{name}.wi_1"), d, ff, false)?),
            )
        } else {
            (w.linear(&format!("{name}.wi"), d, ff, false)?, None)
        };
        Ok(Self {
            wi,
            wi_gate,
            wo: w.linear(&format!("{name}.wo"), ff, d, false)?,
            activation: act,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let pre = linear3(&self.wi, x.clone());
        let act = match self.activation {
            Activation::Relu => relu(pre),
            Activation::GeluTanh => gelu_approximate(pre),
            Activation::Gelu => gelu(pre),
            Activation::Silu => silu(pre),
        };
        let hidden = match &self.wi_gate {
            Some(gate) => act * linear3(gate, x),
            None => act,
        };
        linear3(&self.wo, hidden)
    }
}

/// One encoder block: `h = x + attn(norm(x))`, `out = h + ff(norm(h))`.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    pub attention_norm: RmsNorm<B>,
    pub attention: T5Attention<B>,
    pub ff_norm: RmsNorm<B>,
    pub feed_forward: T5FeedForward<B>,
}

/// The T5 encoder (`T5EncoderModel`), in inference mode (dropout is the identity).
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    /// `[num_buckets, num_heads]`, owned by the first layer's attention in the checkpoint.
    pub relative_attention_bias: Embedding<B>,
    pub blocks: Vec<T5Block<B>>,
    pub final_layer_norm: RmsNorm<B>,
    #[module(skip)]
    pub config: T5Config,
}

impl<B: Backend> T5Encoder<B> {
    /// Checks the state dict against the config (every missing or mis-shaped tensor listed at
    /// once; decoder and LM-head tensors of full T5 checkpoints are ignored) and loads it in
    /// f32.
    pub fn load(
        state: &StateDict,
        cfg: &T5Config,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        Self::load_as(state, cfg, FloatDType::F32, device)
    }

    /// [`T5Encoder::load`] with the weights in `dtype` (bf16 or f16 halve the memory; each
    /// tensor is converted as it is read). Norm statistics, attention scores and softmax are
    /// computed in f32 whatever `dtype` is, as `transformers` does.
    pub fn load_as(
        state: &StateDict,
        cfg: &T5Config,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        cfg.validate()?;
        let embed_name = if state.contains("shared.weight") {
            "shared"
        } else {
            "encoder.embed_tokens"
        };
        let specs: Vec<TensorSpec> = cfg
            .state_dict_specs()
            .into_iter()
            .map(|mut s| {
                if s.name == "shared.weight" {
                    s.name = format!("{embed_name}.weight");
                }
                s
            })
            .collect();
        let mut report = state.check(&specs);
        report.unexpected.clear();
        CheckReport::into_result(report)?;

        let w = Weights::<B>::new(state, device).with_dtype(dtype);
        let (d, eps) = (cfg.d_model, cfg.layer_norm_epsilon);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            blocks.push(T5Block {
                attention_norm: RmsNorm::load(&w, &format!("{p}.0.layer_norm"), d, eps)?,
                attention: T5Attention::load(&w, &format!("{p}.0.SelfAttention"), cfg)?,
                ff_norm: RmsNorm::load(&w, &format!("{p}.1.layer_norm"), d, eps)?,
                feed_forward: T5FeedForward::load(&w, &format!("{p}.1.DenseReluDense"), cfg)?,
            });
        }
        Ok(Self {
            embed_tokens: w.embedding(embed_name, cfg.vocab_size, d)?,
            relative_attention_bias: w.embedding(
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
            )?,
            blocks,
            final_layer_norm: RmsNorm::load(&w, "encoder.final_layer_norm", d, eps)?,
            config: cfg.clone(),
        })
    }

    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// The float type the weights are held in.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.weight.val().dtype()
    }

    /// Bytes the weights take (their element count × the element size).
    pub fn weight_bytes(&self) -> usize {
        self.config.num_params() * self.dtype().size()
    }

    /// The relative position bias `[1, heads, len, len]` shared by every layer (before the
    /// padding mask is added).
    pub fn position_bias(&self, len: usize) -> Tensor<B, 4> {
        let cfg = &self.config;
        let buckets: Vec<i64> = (0..len)
            .flat_map(|q| {
                (0..len).map(move |k| {
                    relative_position_bucket(
                        k as i64 - q as i64,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    ) as i64
                })
            })
            .collect();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [len, len]), &self.device());
        // [len, len, heads] → [heads, len, len], in f32 (it is added to f32 scores).
        self.relative_attention_bias
            .forward(ids)
            .permute([2, 0, 1])
            .unsqueeze::<4>()
            .cast(DType::F32)
    }

    /// `last_hidden_state` `[batch, len, d_model]` of `input_ids` `[batch, len]`;
    /// `attention_mask` `[batch, len]` is true at real tokens (padded keys are ignored; padded
    /// query rows are computed all the same, as in `transformers`).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, l] = input_ids.dims();
        let h = self.config.num_heads;
        let bias = self.position_bias(l);
        let bias = match attention_mask {
            Some(mask) => {
                let padded = mask.bool_not().reshape([b, 1, 1, l]).expand([b, h, l, l]);
                bias.expand([b, h, l, l]).mask_fill(padded, f32::MIN)
            }
            None => bias,
        };
        let mut x = self.embed_tokens.forward(input_ids);
        let f16 = x.dtype() == DType::F16;
        for block in &self.blocks {
            let normed = t5_norm(&block.attention_norm, x.clone());
            x = clamp_f16(x + block.attention.forward(normed, bias.clone()), f16);
            let normed = t5_norm(&block.ff_norm, x.clone());
            x = clamp_f16(x + block.feed_forward.forward(normed), f16);
        }
        t5_norm(&self.final_layer_norm, x).cast(DType::F32)
    }
}

/// T5's layer norm (`T5LayerNorm`): the mean square taken in f32, the normalised values
/// brought back to the weights' type, then scaled.
fn t5_norm<B: Backend>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return norm.forward(x);
    }
    let x = x.cast(DType::F32);
    let mean_sq = x.clone().powi_scalar(2).mean_dim(2);
    let normed = (x / (mean_sq + norm.eps).sqrt()).cast(dtype);
    normed * norm.weight.val().unsqueeze()
}

/// f16 hidden states are kept inside the finite range, as `transformers` clamps them (T5's
/// activations outgrow f16; bf16 has f32's range and needs no clamp).
fn clamp_f16<B: Backend>(x: Tensor<B, 3>, f16: bool) -> Tensor<B, 3> {
    if f16 {
        let limit = 65504.0 - 1000.0;
        x.clamp(-limit, limit)
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flan_t5_xl_encoder_size() {
        let cfg = T5Config::flan_t5_xl();
        // 32128·2048 embedding + 24 × (4·2048² attention + 3·2048·5120 FFN + 2·2048 norms)
        // + 32·32 bucket table + 2048 final norm.
        assert_eq!(cfg.num_params(), 1_223_527_424);
        assert_eq!(cfg.feed_forward().unwrap(), (true, Activation::GeluTanh));
    }

    #[test]
    fn buckets_near_zero_are_exact() {
        for d in 0..8 {
            assert_eq!(relative_position_bucket(-d, 32, 128), d as usize);
            assert_eq!(
                relative_position_bucket(d, 32, 128),
                if d == 0 { 0 } else { 16 + d as usize }
            );
        }
        assert_eq!(relative_position_bucket(-1000, 32, 128), 15);
        assert_eq!(relative_position_bucket(1000, 32, 128), 31);
    }

    #[test]
    fn feed_forward_kinds() {
        let mut cfg = T5Config::flan_t5_xl();
        cfg.feed_forward_proj = "relu".into();
        assert_eq!(cfg.feed_forward().unwrap(), (false, Activation::Relu));
        cfg.feed_forward_proj = "gated-silu".into();
        assert_eq!(cfg.feed_forward().unwrap(), (true, Activation::Silu));
        cfg.feed_forward_proj = "gated-tanh".into();
        assert!(cfg.feed_forward().is_err());
    }
}
