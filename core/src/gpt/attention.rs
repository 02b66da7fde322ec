use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Bool;
use burn::tensor::activation::softmax;

use super::cache::LayerKv;
use super::rope::apply_rotary_emb;
use crate::checkpoint::Weights;
use crate::config::GptConfig;
use crate::error::CheckpointError;

/// Which key positions a query may not see.
#[derive(Debug, Clone)]
pub enum AttnMask<B: Backend> {
    /// Plain causal attention over the keys of this call (training without a mask).
    Causal,
    /// True = blocked; broadcastable to `[batch, heads, queries, keys]`.
    Blocked(Tensor<B, 4, Bool>),
}

/// Multi-head attention with one fused `wqkv` projection split as `[dim, kv_dim, kv_dim]`,
/// grouped-query heads (`n_kv_head`), no biases.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub wqkv: Linear<B>,
    pub wo: Linear<B>,
    pub resid_dropout: Dropout,
    #[module(skip)]
    pub n_head: usize,
    #[module(skip)]
    pub n_kv_head: usize,
    #[module(skip)]
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn init(cfg: &GptConfig, device: &B::Device) -> Self {
        let kv_dim = cfg.kv_heads() * cfg.head_dim();
        Self {
            wqkv: LinearConfig::new(cfg.dim, cfg.dim + 2 * kv_dim)
                .with_bias(false)
                .with_initializer(super::normal_init(cfg))
                .init(device),
            wo: LinearConfig::new(cfg.dim, cfg.dim)
                .with_bias(false)
                .with_initializer(super::normal_init(cfg))
                .init(device),
            resid_dropout: DropoutConfig::new(cfg.resid_dropout_p).init(),
            n_head: cfg.n_head,
            n_kv_head: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
        }
    }

    pub fn load(w: &Weights<B>, name: &str, cfg: &GptConfig) -> Result<Self, CheckpointError> {
        let kv_dim = cfg.kv_heads() * cfg.head_dim();
        Ok(Self {
            wqkv: w.linear(
                &format!("{name}.wqkv"),
                cfg.dim,
                cfg.dim + 2 * kv_dim,
                false,
            )?,
            wo: w.linear(&format!("{name}.wo"), cfg.dim, cfg.dim, false)?,
            resid_dropout: DropoutConfig::new(cfg.resid_dropout_p).init(),
            n_head: cfg.n_head,
            n_kv_head: cfg.kv_heads(),
            head_dim: cfg.head_dim(),
        })
    }

    /// `x` `[batch, seq, dim]`, `freqs` `[seq, head_dim/2, 2]`. With a cache, the new keys and
    /// values are written at `[start, start+seq)` and the queries attend to `[0, start+seq)`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        freqs: Tensor<B, 3>,
        mask: AttnMask<B>,
        cache: Option<(&mut LayerKv<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, s, dim] = x.dims();
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let kv_dim = nkv * hd;
        let qkv = super::linear3(&self.wqkv, x);
        let q = qkv.clone().narrow(2, 0, dim).reshape([b, s, nh, hd]);
        let k = qkv.clone().narrow(2, dim, kv_dim).reshape([b, s, nkv, hd]);
        let v = qkv.narrow(2, dim + kv_dim, kv_dim).reshape([b, s, nkv, hd]);
        let q = apply_rotary_emb(q, freqs.clone()).swap_dims(1, 2);
        let k = apply_rotary_emb(k, freqs).swap_dims(1, 2);
        let v = v.swap_dims(1, 2);

        let (keys, values, start) = match cache {
            Some((kv, start)) => {
                let end = start + s;
                // Move the cache tensors out so the write can happen in place (a shared tensor
                // would be copied whole at every step).
                let device = k.device();
                let k_cache = std::mem::replace(&mut kv.k, Tensor::empty([0, 0, 0, 0], &device));
                let v_cache = std::mem::replace(&mut kv.v, Tensor::empty([0, 0, 0, 0], &device));
                kv.k = k_cache.slice_assign([0..b, 0..nkv, start..end, 0..hd], k);
                kv.v = v_cache.slice_assign([0..b, 0..nkv, start..end, 0..hd], v);
                let keys = kv.k.clone().slice([0..b, 0..nkv, 0..end, 0..hd]);
                let values = kv.v.clone().slice([0..b, 0..nkv, 0..end, 0..hd]);
                (keys, values, start)
            }
            None => (k, v, 0),
        };
        // Grouped-query attention: query head h uses kv head h / (n_head / n_kv_head), as the
        // official repeat_interleave along the head axis.
        let keys = repeat_kv(keys, nh / nkv);
        let values = repeat_kv(values, nh / nkv);
        let len = keys.dims()[2];

        let scores = q.matmul(keys.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let blocked = match mask {
            AttnMask::Causal => {
                Tensor::<B, 2, Bool>::tril_mask([s, len], start as i64, &scores.device())
                    .unsqueeze::<4>()
            }
            AttnMask::Blocked(m) => m,
        };
        let [mb, mh, mq, mk] = blocked.dims();
        let blocked = if [mb, mh, mq, mk] == [b, nh, s, len] {
            blocked
        } else {
            blocked.expand([b, nh, s, len])
        };
        let weights = softmax(scores.mask_fill(blocked, f32::NEG_INFINITY), 3);
        let out = weights.matmul(values).swap_dims(1, 2).reshape([b, s, dim]);
        self.resid_dropout.forward(super::linear3(&self.wo, out))
    }
}

fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, nkv, l, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, rep, l, hd])
        .reshape([b, nkv * rep, l, hd])
}
