use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, DType};

use super::attention::{Attention, AttnMask};
use super::cache::{CacheLayout, KvCache};
use super::condition::{Condition, ConditionEmbedder};
use super::feed_forward::FeedForward;
use super::norm::RmsNorm;
use super::rope;
use crate::checkpoint::{StateDict, Weights};
use crate::config::{GptConfig, ModelType};
use crate::error::{CheckpointError, ConfigError};
use crate::precision::Precision;
use crate::quant::{Quantize, quantize_weight};

/// Pre-norm Llama block: `h = x + attn(norm(x))`, `out = h + ffn(norm(h))`.
#[derive(Module, Debug)]
pub struct TransformerBlock<B: Backend> {
    pub attention: Attention<B>,
    pub feed_forward: FeedForward<B>,
    pub attention_norm: RmsNorm<B>,
    pub ffn_norm: RmsNorm<B>,
}

impl<B: Backend> TransformerBlock<B> {
    fn init(cfg: &GptConfig, device: &B::Device) -> Self {
        Self {
            attention: Attention::init(cfg, device),
            feed_forward: FeedForward::init(cfg, device),
            attention_norm: RmsNorm::new(cfg.dim, cfg.norm_eps, device),
            ffn_norm: RmsNorm::new(cfg.dim, cfg.norm_eps, device),
        }
    }

    fn load(w: &Weights<B>, name: &str, cfg: &GptConfig) -> Result<Self, CheckpointError> {
        Ok(Self {
            attention: Attention::load(w, &format!("{name}.attention"), cfg)?,
            feed_forward: FeedForward::load(w, &format!("{name}.feed_forward"), cfg)?,
            attention_norm: RmsNorm::load(
                w,
                &format!("{name}.attention_norm"),
                cfg.dim,
                cfg.norm_eps,
            )?,
            ffn_norm: RmsNorm::load(w, &format!("{name}.ffn_norm"), cfg.dim, cfg.norm_eps)?,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        freqs: Tensor<B, 3>,
        mask: AttnMask<B>,
        cache: Option<(&mut super::cache::LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let h = x.clone()
            + self
                .attention
                .forward(self.attention_norm.forward(x), freqs, mask, cache);
        h.clone() + self.feed_forward.forward(self.ffn_norm.forward(h))
    }
}

/// The LlamaGen generator (official `Transformer`).
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    pub cls_embedding: ConditionEmbedder<B>,
    pub tok_embeddings: Embedding<B>,
    pub tok_dropout: Dropout,
    pub layers: Vec<TransformerBlock<B>>,
    pub norm: RmsNorm<B>,
    pub output: Linear<B>,
    /// 2-D rotary table `[cls_token_num + block_size, head_dim/2, 2]` (not a weight).
    #[module(skip)]
    pub freqs_cis: Tensor<B, 3>,
    #[module(skip)]
    pub config: GptConfig,
}

impl<B: Backend> Transformer<B> {
    /// A freshly initialised model (for training): the official initialisation, N(0, 0.02) for
    /// linear and embedding weights and a zero output head.
    pub fn init(cfg: &GptConfig, device: &B::Device) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            cls_embedding: ConditionEmbedder::init(cfg, device),
            tok_embeddings: EmbeddingConfig::new(cfg.vocab_size, cfg.dim)
                .with_initializer(super::normal_init(cfg))
                .init(device),
            tok_dropout: DropoutConfig::new(cfg.token_dropout_p).init(),
            layers: (0..cfg.n_layer)
                .map(|_| TransformerBlock::init(cfg, device))
                .collect(),
            norm: RmsNorm::new(cfg.dim, cfg.norm_eps, device),
            // The official initialisation zeroes the output head.
            output: LinearConfig::new(cfg.dim, cfg.vocab_size)
                .with_bias(false)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
            freqs_cis: Self::rope_table(cfg, device),
            config: cfg.clone(),
        })
    }

    /// Builds the model from an official state dict, after checking every tensor against `cfg`.
    pub fn load(
        sd: &StateDict,
        cfg: &GptConfig,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        Self::load_as(sd, cfg, Precision::F32, device)
    }

    /// [`Transformer::load`] with the weights in `precision` (each tensor converted as it is
    /// read, so the model never exists in f32 as a whole). On GPU backends every weight takes
    /// that type and so do the activations; on the CPU the weight matrices alone do, and the
    /// arithmetic stays f32 (see [`crate::precision`]). The caller checks that the backend
    /// runs `precision` ([`Precision::check`]).
    pub fn load_as(
        sd: &StateDict,
        cfg: &GptConfig,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        Self::load_with(sd, cfg, precision, Quantize::None, device)
    }

    /// [`Transformer::load_as`] with every linear layer quantized as it is read
    /// ([`crate::quant`]).
    pub fn load_with(
        sd: &StateDict,
        cfg: &GptConfig,
        precision: Precision,
        quantize: Quantize,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        cfg.validate()?;
        sd.check(&cfg.state_dict_specs()).into_result()?;
        let held = sd.quantization();
        if held != Quantize::None && quantize != Quantize::None && quantize != held {
            return Err(CheckpointError::Requantize {
                path: sd.path.clone(),
                held: held.name(),
                asked: quantize.name(),
            });
        }
        let w = Weights::<B>::new(sd, device).with_quantize(quantize);
        let w = match precision {
            Precision::F32 => w,
            p if crate::kernels::is_cpu::<B>() => w.with_matrix_dtype(p.dtype()),
            p => w.with_dtype(p.dtype()),
        };
        Ok(Self {
            cls_embedding: ConditionEmbedder::load(&w, "cls_embedding", cfg)?,
            tok_embeddings: w.embedding("tok_embeddings", cfg.vocab_size, cfg.dim)?,
            tok_dropout: DropoutConfig::new(cfg.token_dropout_p).init(),
            layers: (0..cfg.n_layer)
                .map(|i| TransformerBlock::load(&w, &format!("layers.{i}"), cfg))
                .collect::<Result<_, _>>()?,
            norm: RmsNorm::load(&w, "norm", cfg.dim, cfg.norm_eps)?,
            output: w.linear("output", cfg.dim, cfg.vocab_size, false)?,
            freqs_cis: Self::rope_table(cfg, device),
            config: cfg.clone(),
        })
    }

    /// This model with its weights in `precision`, as [`Transformer::load_as`] would have
    /// loaded them (for models made here, such as the benchmark's random ones).
    pub fn into_precision(mut self, precision: Precision) -> Self {
        let d = precision.dtype();
        let everything = !crate::kernels::is_cpu::<B>();
        let all = |p: Param<Tensor<B, 1>>| if everything { p.map(|t| t.cast(d)) } else { p };
        let table = |p: Param<Tensor<B, 2>>| p.map(|t| t.cast(d));
        // Cast in PyTorch's `[out, in]` order, the layout the loader leaves and the CPU's
        // half products read.
        // The values are copied in that order (a cast to the same type would keep the
        // storage as it is).
        let linear = |l: Linear<B>| Linear {
            weight: l.weight.map(|w| {
                let device = w.device();
                Tensor::<B, 2>::from_data(w.transpose().into_data(), &device)
                    .cast(d)
                    .transpose()
            }),
            bias: l.bias.map(all),
        };
        for layer in &mut self.layers {
            let a = &mut layer.attention;
            a.wqkv = linear(a.wqkv.clone());
            a.wo = linear(a.wo.clone());
            let f = &mut layer.feed_forward;
            f.w1 = linear(f.w1.clone());
            f.w2 = linear(f.w2.clone());
            f.w3 = linear(f.w3.clone());
            layer.attention_norm.weight = all(layer.attention_norm.weight.clone());
            layer.ffn_norm.weight = all(layer.ffn_norm.weight.clone());
        }
        if let Some(l) = &mut self.cls_embedding.label {
            l.embedding_table.weight = table(l.embedding_table.weight.clone());
        }
        if let Some(c) = &mut self.cls_embedding.caption {
            c.cap_proj.fc1 = linear(c.cap_proj.fc1.clone());
            c.cap_proj.fc2 = linear(c.cap_proj.fc2.clone());
            if everything {
                c.uncond_embedding = table(c.uncond_embedding.clone());
            }
        }
        self.tok_embeddings.weight = table(self.tok_embeddings.weight.clone());
        self.norm.weight = all(self.norm.weight.clone());
        self.output = linear(self.output.clone());
        self
    }

    /// This model with every linear layer's weight quantized, as [`Transformer::load_with`]
    /// would have loaded it (for models made here, such as the benchmark's random ones).
    pub fn quantized(mut self, q: Quantize) -> Self {
        if q == Quantize::None {
            return self;
        }
        let linear = |l: Linear<B>| Linear {
            weight: l.weight.map(|w| quantize_weight(w, q)),
            bias: l.bias,
        };
        for layer in &mut self.layers {
            let a = &mut layer.attention;
            a.wqkv = linear(a.wqkv.clone());
            a.wo = linear(a.wo.clone());
            let f = &mut layer.feed_forward;
            f.w1 = linear(f.w1.clone());
            f.w2 = linear(f.w2.clone());
            f.w3 = linear(f.w3.clone());
        }
        if let Some(c) = &mut self.cls_embedding.caption {
            c.cap_proj.fc1 = linear(c.cap_proj.fc1.clone());
            c.cap_proj.fc2 = linear(c.cap_proj.fc2.clone());
        }
        self.output = linear(self.output.clone());
        self
    }

    /// How the linear layers' weights are held.
    pub fn quantization(&self) -> Quantize {
        Quantize::of(self.output.weight.val().dtype())
    }

    fn rope_table(cfg: &GptConfig, device: &B::Device) -> Tensor<B, 3> {
        rope::freqs_cis_2d(
            cfg.grid_size(),
            cfg.head_dim(),
            cfg.rope_base,
            cfg.cls_token_num,
            device,
        )
    }

    pub fn device(&self) -> B::Device {
        self.tok_embeddings.weight.device()
    }

    /// The float type of the activations (the norms' weights are held in it).
    pub fn act_dtype(&self) -> DType {
        self.norm.weight.val().dtype()
    }

    /// The precision of the weight matrices.
    pub fn precision(&self) -> Precision {
        Precision::of(self.tok_embeddings.weight.val().dtype()).unwrap_or_default()
    }

    /// Bytes of all weights as they are held.
    pub fn weight_bytes(&self) -> usize {
        struct Bytes(usize);
        impl<B: Backend> burn::module::ModuleVisitor<B> for Bytes {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
                let t = param.val();
                self.0 += crate::quant::held_bytes(t.dtype(), t.shape().num_elements());
            }
        }
        let mut bytes = Bytes(0);
        self.visit(&mut bytes);
        bytes.0
    }

    /// Checks that a condition fits this model (type, caption shape), so that the forward
    /// passes below cannot fail on user input.
    pub fn check_condition(&self, cond: &Condition<B>) -> Result<(), ConfigError> {
        let cfg = &self.config;
        match (cond, cfg.model_type) {
            (Condition::Class(_), ModelType::C2i) => Ok(()),
            (Condition::Caption(c), ModelType::T2i) => {
                let [_, t, d] = c.dims();
                if d != cfg.caption_dim {
                    Err(ConfigError::Invalid(format!(
                        "caption features have dimension {d}, the model expects {}",
                        cfg.caption_dim
                    )))
                } else if t != cfg.cls_token_num {
                    Err(ConfigError::Invalid(format!(
                        "caption has {t} tokens, the model expects {}",
                        cfg.cls_token_num
                    )))
                } else {
                    Ok(())
                }
            }
            (Condition::Class(_), ModelType::T2i) => Err(ConfigError::Invalid(
                "this is a text-conditional model: give it a prompt, not a class".into(),
            )),
            (Condition::Caption(_), ModelType::C2i) => Err(ConfigError::Invalid(
                "this is a class-conditional model: give it a class, not a prompt".into(),
            )),
        }
    }

    /// Condition embeddings `[batch, cls_token_num, dim]`.
    pub fn condition_embeddings(&self, cond: &Condition<B>) -> Tensor<B, 3> {
        let emb = self.cls_embedding.forward(cond).cast(self.act_dtype());
        let [b, t, d] = emb.dims();
        emb.slice([0..b, 0..t.min(self.config.cls_token_num), 0..d])
    }

    pub fn null_condition(&self, cond: &Condition<B>) -> Condition<B> {
        self.cls_embedding.null_condition(cond)
    }

    /// Logits in f32 whatever the model's precision (as the official `.float()`).
    fn head(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        super::linear3(&self.output, self.norm.forward(h)).cast(DType::F32)
    }

    /// Teacher-forced forward (the official training branch): condition tokens then the image
    /// tokens `idx` `[batch, block_size - 1]`; returns logits `[batch, block_size, vocab]` where
    /// row j predicts image token j. `allowed` (`[batch, 1, L, L]`, true = may attend) replaces
    /// the causal mask, as the t2i training passes its caption mask.
    pub fn forward_train(
        &self,
        cond: &Condition<B>,
        idx: Tensor<B, 2, Int>,
        allowed: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let cond_emb = self.condition_embeddings(cond);
        let tok = self.tok_embeddings.forward(idx);
        let h = self
            .tok_dropout
            .forward(Tensor::cat(vec![cond_emb, tok], 1));
        let [b, len, _] = h.dims();
        let freqs = self.freqs_cis.clone().narrow(0, 0, len);
        let mask = match allowed {
            Some(a) => AttnMask::Blocked(a.bool_not()),
            None => AttnMask::Causal,
        };
        let mut h = h;
        for layer in &self.layers {
            h = layer.forward(h, freqs.clone(), mask.clone(), None);
        }
        let logits = self.head(h);
        let [_, _, v] = logits.dims();
        let first = self.config.cls_token_num - 1;
        logits.slice([0..b, first..len, 0..v])
    }

    /// A KV cache for `batch` rows and a whole sequence (condition + image tokens), in the
    /// layout of this backend ([`CacheLayout::for_backend`]).
    pub fn new_cache(&self, batch: usize) -> KvCache<B> {
        self.new_cache_with(batch, CacheLayout::for_backend::<B>())
    }

    /// A KV cache in a chosen layout.
    pub fn new_cache_with(&self, batch: usize, layout: CacheLayout) -> KvCache<B> {
        self.new_cache_sized(batch, 0, layout)
    }

    /// A KV cache with room for `extra` positions beyond the whole sequence (entries that are
    /// written and later hidden, as [`Transformer::decode_at`]'s callers may write).
    pub fn new_cache_sized(&self, batch: usize, extra: usize, layout: CacheLayout) -> KvCache<B> {
        let cfg = &self.config;
        KvCache::new(
            cfg.n_layer,
            batch,
            cfg.cls_token_num + cfg.block_size + extra,
            (cfg.kv_heads(), cfg.head_dim()),
            layout,
            self.act_dtype(),
            &self.device(),
        )
    }

    fn forward_cached(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [_, s, _] = h.dims();
        let freqs = self.freqs_cis.clone().narrow(0, start, s);
        let mask = AttnMask::Blocked(cache.blocked(start, s));
        let mut h = h;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(h, freqs.clone(), mask.clone(), Some((kv, start)));
        }
        self.head(h)
    }

    /// Runs the condition tokens through the model, filling the cache at positions
    /// `[0, cls_token_num)`; returns their logits `[batch, cls_token_num, vocab]` (the last row
    /// predicts the first image token).
    pub fn prefill(&self, cond: &Condition<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let h = self.condition_embeddings(cond);
        self.forward_cached(h, 0, cache)
    }

    /// One decode step: image tokens `[batch, n]` at absolute positions `[start, start+n)`
    /// (`start ≥ cls_token_num`); returns logits `[batch, n, vocab]`.
    pub fn decode(
        &self,
        tokens: Tensor<B, 2, Int>,
        start: usize,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let h = self.tok_embeddings.forward(tokens).cast(self.act_dtype());
        self.forward_cached(h, start, cache)
    }

    /// Image tokens `[batch, n]` at any absolute positions (`positions`, one per column, each
    /// `≥ cls_token_num`), appended to the cache after what it holds, in this order; `blocked`
    /// (`[batch, 1, n, columns]`, true = not attended; columns as [`KvCache::blocked`] counts
    /// them) says which cache entries each query sees. Returns logits `[batch, n, vocab]`. For
    /// decoding orders other than raster order (ZipAR), where the cache's entry order is not
    /// the position order.
    pub fn decode_at(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: &[usize],
        blocked: Tensor<B, 4, Bool>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let device = self.device();
        let ids: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let n = ids.len();
        let freqs = self.freqs_cis.clone().select(
            0,
            Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(ids, [n]), &device),
        );
        let mut h = self.tok_embeddings.forward(tokens).cast(self.act_dtype());
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let start = kv.len();
            h = layer.forward(
                h,
                freqs.clone(),
                AttnMask::Blocked(blocked.clone()),
                Some((kv, start)),
            );
        }
        self.head(h)
    }

    /// Mean cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`;
    /// with `valid` `[batch]` (0/1) the official t2i weighting
    /// `sum(ce · valid) / max(sum(valid), 1)` over all tokens.
    pub fn loss(
        &self,
        logits: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        valid: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 1> {
        let [b, s, v] = logits.dims();
        let ce = cross_entropy(logits.reshape([b * s, v]), targets.reshape([b * s]));
        match valid {
            None => ce.mean(),
            Some(valid) => {
                let weights = valid.unsqueeze_dim::<2>(1).expand([b, s]).reshape([b * s]);
                let denom = weights.clone().sum().clamp_min(1.0);
                (ce * weights).sum() / denom
            }
        }
    }
}

/// Per-row cross-entropy `[n]` of logits `[n, vocab]` against class ids `[n]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let logp = log_softmax(logits, 1);
    logp.gather(1, targets.unsqueeze_dim(1))
        .squeeze_dim::<1>(1)
        .neg()
}
