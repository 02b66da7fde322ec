use std::collections::HashSet;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use crate::checkpoint::Weights;
use crate::config::{CODEBOOK_USAGE_LEN, VqConfig};
use crate::error::CheckpointError;

/// The training-mode losses of the quantizer.
#[derive(Debug, Clone)]
pub struct QuantizerLosses<B: Backend> {
    /// `mean((z_q − sg(z))²)`: moves the codebook towards the encoder outputs.
    pub vq_loss: Tensor<B, 1>,
    /// `β · mean((sg(z_q) − z)²)`: keeps the encoder close to its codes.
    pub commit_loss: Tensor<B, 1>,
    /// `entropy_loss_ratio · compute_entropy_loss(−d)`.
    pub entropy_loss: Tensor<B, 1>,
}

/// Output of a quantizer pass.
#[derive(Debug, Clone)]
pub struct Quantized<B: Backend> {
    /// Straight-through quantized latent `z + sg(z_q − z)`, `[batch, embed_dim, h, w]`.
    pub z_q: Tensor<B, 4>,
    /// Code indices `[batch · h · w]`, row-major over the grid.
    pub indices: Tensor<B, 1, Int>,
    /// Normalised encoder vectors `[batch · h · w, embed_dim]`.
    pub z: Tensor<B, 2>,
    /// Selected (normalised) codebook rows `[batch · h · w, embed_dim]`.
    pub codes: Tensor<B, 2>,
    /// Squared distances to every code `[batch · h · w, codebook_size]`.
    pub distances: Tensor<B, 2>,
}

/// Vector quantizer with an l2-normalised codebook. The codebook is stored un-normalised (as
/// the official checkpoints hold it) and normalised at lookup.
#[derive(Module, Debug)]
pub struct VectorQuantizer<B: Backend> {
    pub embedding: Embedding<B>,
    /// FIFO of the last 65,536 chosen codes (a state-dict buffer of the official model).
    pub codebook_used: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub beta: f64,
    #[module(skip)]
    pub entropy_loss_ratio: f64,
    #[module(skip)]
    pub l2_norm: bool,
}

/// `F.normalize(x, p=2, dim=-1)`: `x / max(‖x‖, 1e-12)`.
pub fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

impl<B: Backend> VectorQuantizer<B> {
    pub fn init(cfg: &VqConfig, device: &B::Device) -> Self {
        let mut embedding =
            EmbeddingConfig::new(cfg.codebook_size, cfg.codebook_embed_dim).init(device);
        // Official init: uniform(−1/n, 1/n), then l2-normalised.
        let n = cfg.codebook_size as f64;
        let w = Tensor::<B, 2>::random(
            [cfg.codebook_size, cfg.codebook_embed_dim],
            burn::tensor::Distribution::Uniform(-1.0 / n, 1.0 / n),
            device,
        );
        embedding.weight = Param::from_tensor(if cfg.codebook_l2_norm {
            l2_normalize(w)
        } else {
            w
        });
        Self {
            embedding,
            codebook_used: cfg.codebook_show_usage.then(|| {
                Param::from_tensor(Tensor::zeros([CODEBOOK_USAGE_LEN], device))
                    .set_require_grad(false)
            }),
            beta: cfg.commit_loss_beta,
            entropy_loss_ratio: cfg.entropy_loss_ratio,
            l2_norm: cfg.codebook_l2_norm,
        }
    }

    pub fn load(w: &Weights<B>, p: &str, cfg: &VqConfig) -> Result<Self, CheckpointError> {
        Ok(Self {
            embedding: w.embedding(
                &format!("{p}.embedding"),
                cfg.codebook_size,
                cfg.codebook_embed_dim,
            )?,
            codebook_used: if cfg.codebook_show_usage {
                Some(
                    Param::from_tensor(
                        w.tensor(&format!("{p}.codebook_used"), [CODEBOOK_USAGE_LEN])?,
                    )
                    .set_require_grad(false),
                )
            } else {
                None
            },
            beta: cfg.commit_loss_beta,
            entropy_loss_ratio: cfg.entropy_loss_ratio,
            l2_norm: cfg.codebook_l2_norm,
        })
    }

    /// The codebook as it is used for lookup `[codebook_size, embed_dim]`.
    pub fn codebook(&self) -> Tensor<B, 2> {
        let w = self.embedding.weight.val();
        if self.l2_norm { l2_normalize(w) } else { w }
    }

    /// Nearest-code quantization of `z` `[batch, embed_dim, h, w]`.
    pub fn quantize(&self, z: Tensor<B, 4>) -> Quantized<B> {
        let [b, c, h, w] = z.dims();
        let flat = z.permute([0, 2, 3, 1]).reshape([b * h * w, c]);
        let flat = if self.l2_norm {
            l2_normalize(flat)
        } else {
            flat
        };
        let codebook = self.codebook();
        // d = |z|² + |e|² − 2 z·e, as the official code computes it.
        let distances = flat.clone().powi_scalar(2).sum_dim(1)
            + codebook.clone().powi_scalar(2).sum_dim(1).transpose()
            - flat.clone().matmul(codebook.clone().transpose()) * 2.0;
        let indices = distances.clone().argmin(1).squeeze_dim::<1>(1);
        let codes = codebook.select(0, indices.clone());
        let st = flat.clone() + (codes.clone() - flat.clone()).detach();
        let z_q = st.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        Quantized {
            z_q,
            indices,
            z: flat,
            codes,
            distances,
        }
    }

    /// Training-mode losses of a quantizer pass.
    pub fn losses(&self, q: &Quantized<B>) -> QuantizerLosses<B> {
        let diff_codebook = (q.codes.clone() - q.z.clone().detach())
            .powi_scalar(2)
            .mean();
        let diff_commit = (q.codes.clone().detach() - q.z.clone())
            .powi_scalar(2)
            .mean();
        let entropy = if self.entropy_loss_ratio > 0.0 {
            compute_entropy_loss(q.distances.clone().neg()) * self.entropy_loss_ratio
        } else {
            Tensor::zeros([1], &q.z.device())
        };
        QuantizerLosses {
            vq_loss: diff_codebook,
            commit_loss: diff_commit * self.beta,
            entropy_loss: entropy,
        }
    }

    /// Pushes the chosen codes into the usage FIFO and returns the fraction of the codebook it
    /// holds (official: `len(unique(codebook_used)) / codebook_size`, initial zeros included).
    pub fn update_usage(&mut self, indices: &Tensor<B, 1, Int>) -> f64 {
        let Some(used) = &self.codebook_used else {
            return 0.0;
        };
        let n = indices.dims()[0].min(CODEBOOK_USAGE_LEN);
        let old = used.val();
        let device = old.device();
        let new_codes = indices.clone().narrow(0, indices.dims()[0] - n, n).float();
        let kept = old.narrow(0, n, CODEBOOK_USAGE_LEN - n);
        let updated = Tensor::cat(vec![kept, new_codes], 0);
        let values = updated
            .to_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        let distinct: HashSet<u32> = values.iter().map(|v| v.to_bits()).collect();
        // Detached: a buffer, never part of the graph (even if its parameter was marked as
        // trained, as a whole-module `require_grad` does).
        self.codebook_used =
            Some(Param::from_tensor(updated.detach().to_device(&device)).set_require_grad(false));
        distinct.len() as f64 / self.embedding.weight.dims()[0] as f64
    }

    /// Codebook rows for `indices` `[batch, h·w]`, channel-first `[batch, embed_dim, h, w]`.
    pub fn codebook_entry(&self, indices: Tensor<B, 2, Int>, h: usize, w: usize) -> Tensor<B, 4> {
        let [b, n] = indices.dims();
        let codebook = self.codebook();
        let c = codebook.dims()[1];
        codebook
            .select(0, indices.reshape([b * n]))
            .reshape([b, h, w, c])
            .permute([0, 3, 1, 2])
    }
}

/// Official `compute_entropy_loss(affinity, "softmax", temperature=0.01)`: the mean per-sample
/// entropy minus the entropy of the mean distribution.
pub fn compute_entropy_loss<B: Backend>(affinity: Tensor<B, 2>) -> Tensor<B, 1> {
    let flat = affinity / 0.01;
    let probs = softmax(flat.clone(), 1);
    let log_probs = log_softmax(flat + 1e-5, 1);
    let avg_probs = probs.clone().mean_dim(0);
    let avg_entropy = (avg_probs.clone() * (avg_probs + 1e-5).log()).sum().neg();
    let sample_entropy = (probs * log_probs).sum_dim(1).mean().neg();
    sample_entropy - avg_entropy
}
