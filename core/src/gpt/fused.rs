//! The decode step of GPU backends: one token per row on a fixed-layout cache, through the fused
//! kernels of [`crate::kernels`] (about ten launches a layer: norm, four matrix products, RoPE +
//! cache write, attention, SwiGLU, residual + norm).

use burn::prelude::*;

use super::cache::{KvCache, LayerKv};
use super::linear2;
use super::model::Transformer;
use crate::kernels;

impl<B: Backend> Transformer<B> {
    /// One decode step on a [`CacheLayout::Fixed`](super::CacheLayout::Fixed) cache: `ids`
    /// `[rows, 1]` at absolute position `pos` (the cache holds `[0, pos)`), `bias` the cache's
    /// [`kernels::key_bias`]. Returns the logits `[rows, vocab]`. Same arithmetic as
    /// [`Transformer::decode`]; shapes do not depend on `pos`.
    pub fn decode_fused(
        &self,
        ids: Tensor<B, 2, Int>,
        pos: usize,
        cache: &mut KvCache<B>,
        bias: &Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let cfg = &self.config;
        let [rows, _] = ids.dims();
        let (dim, hd, nh) = (cfg.dim, cfg.head_dim(), cfg.n_head);
        let kv_dim = cfg.kv_heads() * hd;
        let eps = cfg.norm_eps as f32;
        let h = self
            .tok_embeddings
            .forward(ids)
            .reshape([rows, dim])
            .cast(self.act_dtype());
        let mut normed =
            kernels::rms_norm(h.clone(), self.layers[0].attention_norm.weight.val(), eps);
        let mut h = h;
        for (i, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let LayerKv::Fixed { buf, len } = kv else {
                panic!("decode_fused needs a cache in the fixed layout");
            };
            debug_assert_eq!(*len, pos, "the cache is written in position order");
            let a = &layer.attention;
            let qkv = linear2(&a.wqkv, normed);
            let q = kernels::rope_cache(
                qkv,
                self.freqs_cis.clone(),
                &mut buf.k,
                &mut buf.v,
                pos,
                dim,
                kv_dim,
                hd,
            );
            *len = pos + 1;
            let att = kernels::decode_attention(q, &buf.k, &buf.v, bias, pos + 1, nh, hd);
            let o = linear2(&a.wo, att);
            let (h2, n2) = kernels::add_rms_norm(h, o, layer.ffn_norm.weight.val(), eps);
            let ff = &layer.feed_forward;
            let gate = kernels::swiglu(linear2(&ff.w1, n2.clone()), linear2(&ff.w3, n2));
            let y = linear2(&ff.w2, gate);
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => next.attention_norm.weight.val(),
                None => self.norm.weight.val(),
            };
            let (h3, n3) = kernels::add_rms_norm(h2, y, next_norm, eps);
            h = h3;
            normed = n3;
        }
        linear2(&self.output, normed).cast(burn::tensor::DType::F32)
    }
}
