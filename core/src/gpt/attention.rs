use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType};

use super::cache::{KvPart, LayerKv};
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
        // RoPE in f32 (the official `x.float()`), back to the activations' type.
        let dtype = q.dtype();
        let q = apply_rotary_emb(q.cast(DType::F32), freqs.clone())
            .cast(dtype)
            .swap_dims(1, 2);
        let k = apply_rotary_emb(k.cast(DType::F32), freqs)
            .cast(dtype)
            .swap_dims(1, 2);
        let v = v.swap_dims(1, 2);

        // Keys and values to attend over, in position order: the cache's parts, or this
        // call's own.
        let rep = nh / nkv;
        let (parts, start) = match cache {
            Some((kv, start)) => {
                debug_assert_eq!(kv.len(), start, "the cache is written in position order");
                kv.append(k, v);
                (kv.parts(), start)
            }
            None => (vec![KvPart { k, v }], 0),
        };
        let lens: Vec<usize> = parts.iter().map(KvPart::len).collect();
        let len: usize = lens.iter().sum();

        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores: Vec<Tensor<B, 4>> = parts
            .iter()
            .map(|p| {
                (q.clone()
                    .matmul(repeat_kv(p.k.clone(), rep).swap_dims(2, 3))
                    * scale)
                    .cast(DType::F32)
            })
            .collect();
        let scores = if scores.len() == 1 {
            scores.remove(0)
        } else {
            Tensor::cat(scores, 3)
        };
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
        // Scores and their softmax in f32; the weights meet the values in their type.
        let weights = softmax(scores.mask_fill(blocked, f32::NEG_INFINITY), 3).cast(dtype);
        let mut at = 0;
        let mut out: Option<Tensor<B, 4>> = None;
        for (p, l) in parts.into_iter().zip(lens) {
            let w = if l == len {
                weights.clone()
            } else {
                weights.clone().narrow(3, at, l)
            };
            let o = w.matmul(repeat_kv(p.v, rep));
            out = Some(match out {
                Some(acc) => acc + o,
                None => o,
            });
            at += l;
        }
        let out = out
            .expect("at least one key")
            .swap_dims(1, 2)
            .reshape([b, s, dim]);
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
