//! The tokenizer's training (official `tokenizer/tokenizer_image/vq_train.py` and `vq_loss.py`):
//!
//! generator step: `rec·‖x − x̂‖² + perceptual·LPIPS(x, x̂) + vq + commit + entropy
//!                  + adopt(disc_weight, step ≥ disc_start) · gen_adv(D(x̂))`
//! discriminator step: `adopt(disc_weight) · d_loss(D(x), D(sg(x̂)))` (separate calls, as the
//! official code makes them, so BatchNorm sees real and fake batches apart).
//!
//! Two Adam optimizers (β 0.9/0.95), gradients clipped by their global norm, optional EMA of the
//! tokenizer. Before `disc_start` the adversarial terms are multiplied by zero in the official
//! code; here they are skipped, which gives the same parameters (zero gradients leave Adam's
//! moments at zero and its updates at zero) for less work.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::DeviceOps;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::checkpoint;
use super::discriminator::{GanLoss, PatchGan, PatchGanConfig, discriminator_loss, generator_loss};
use super::lpips::Lpips;
use super::optim::{clip_factor, combine_grads, grad_norm, scale_grads, update_ema};
use crate::config::VqConfig;
use crate::vq::VqModel;

/// Options of the tokenizer's training (official defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VqTrainOptions {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub max_grad_norm: f32,
    pub batch_size: usize,
    pub image_size: usize,
    pub reconstruction_weight: f64,
    /// Pixel loss of the reconstruction (official `reconstruction_loss`, default L2). Absent in
    /// the state of runs written before the option existed, which trained with L2.
    #[serde(default)]
    pub reconstruction_loss: ReconstructionLoss,
    pub perceptual_weight: f64,
    pub codebook_weight: f64,
    /// Weight of the generator's adversarial term (official `disc_weight`, paper: 0.5).
    pub disc_weight: f64,
    /// Step at which the adversarial terms switch on (paper: 20k).
    pub disc_start: u64,
    pub disc_loss: GanLoss,
    pub gen_loss: GanLoss,
    pub disc: PatchGanConfig,
    /// EMA decay of the tokenizer weights (`None` = no EMA).
    pub ema_decay: Option<f64>,
    pub seed: u64,
    /// Only `post_quant_conv` and the decoder learn: the encoder, `quant_conv` and the codebook
    /// keep their weights, so every image keeps its codes and the codes extracted with the
    /// tokenizer (and generators trained on them) stay valid. For fine-tuning the decoder of a
    /// trained tokenizer. The quantizer's losses are then constants, reported as 0.
    #[serde(default)]
    pub decoder_only: bool,
}

impl Default for VqTrainOptions {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            max_grad_norm: 1.0,
            batch_size: 128,
            image_size: 256,
            reconstruction_weight: 1.0,
            reconstruction_loss: ReconstructionLoss::L2,
            perceptual_weight: 1.0,
            codebook_weight: 1.0,
            disc_weight: 0.5,
            disc_start: 20_000,
            disc_loss: GanLoss::Hinge,
            gen_loss: GanLoss::Hinge,
            disc: PatchGanConfig::default(),
            ema_decay: None,
            seed: 0,
            decoder_only: false,
        }
    }
}

/// The pixel loss between an image and its reconstruction, as the official `VQLoss` offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconstructionLoss {
    /// Mean absolute error (`F.l1_loss`).
    L1,
    /// Mean squared error (`F.mse_loss`, the official default).
    #[default]
    L2,
}

impl ReconstructionLoss {
    /// The loss, averaged over every element.
    pub fn mean<B: Backend>(
        self,
        images: Tensor<B, 4>,
        reconstruction: Tensor<B, 4>,
    ) -> Tensor<B, 1> {
        let diff = images - reconstruction;
        match self {
            ReconstructionLoss::L1 => diff.abs().mean(),
            ReconstructionLoss::L2 => diff.powi_scalar(2).mean(),
        }
    }
}

/// The figures of one step.
#[derive(Debug, Clone, Copy, Default)]
pub struct VqStepStats {
    pub reconstruction: f32,
    pub perceptual: f32,
    pub vq: f32,
    pub commit: f32,
    pub entropy: f32,
    pub gen_adv: f32,
    pub disc: f32,
    pub codebook_usage: f64,
    pub grad_norm: f32,
}

impl VqStepStats {
    /// The generator-side total.
    pub fn total(&self) -> f32 {
        self.reconstruction + self.perceptual + self.vq + self.commit + self.entropy + self.gen_adv
    }

    /// Adds a shard's loss figures, weighted by its share of the batch.
    fn accumulate(&mut self, shard: &VqStepStats, weight: f32) {
        self.reconstruction += shard.reconstruction * weight;
        self.perceptual += shard.perceptual * weight;
        self.vq += shard.vq * weight;
        self.commit += shard.commit * weight;
        self.entropy += shard.entropy * weight;
        self.gen_adv += shard.gen_adv * weight;
    }
}

type AdamOf<M, B> = OptimizerAdaptor<Adam, M, B>;

/// Tokenizer, discriminator, optional LPIPS, their optimizers and the EMA copy.
pub struct VqTrainer<B: AutodiffBackend> {
    pub vq: VqModel<B>,
    pub disc: PatchGan<B>,
    pub lpips: Option<Lpips<B>>,
    pub ema: Option<VqModel<B::InnerBackend>>,
    opt_g: AdamOf<VqModel<B>, B>,
    opt_d: AdamOf<PatchGan<B>, B>,
    pub opts: VqTrainOptions,
    pub step: u64,
}

fn adam<B: AutodiffBackend, M: AutodiffModule<B>>(opts: &VqTrainOptions) -> AdamOf<M, B> {
    AdamConfig::new()
        .with_beta_1(opts.beta1 as f32)
        .with_beta_2(opts.beta2 as f32)
        .with_epsilon(1e-8)
        .init()
}

impl<B: AutodiffBackend> VqTrainer<B> {
    pub fn new(
        cfg: &VqConfig,
        opts: VqTrainOptions,
        lpips: Option<Lpips<B>>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let vq = super::optim::materialize(VqModel::init(cfg, device)?);
        Self::with_model(vq, opts, lpips, device)
    }

    /// A trainer around a materialised tokenizer; the discriminator and optimizers start fresh.
    fn with_model(
        vq: VqModel<B>,
        opts: VqTrainOptions,
        lpips: Option<Lpips<B>>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let ema = opts.ema_decay.map(|_| vq.valid());
        Ok(Self {
            disc: super::optim::materialize(PatchGan::init(&opts.disc, device)?),
            vq,
            lpips,
            ema,
            opt_g: adam(&opts),
            opt_d: adam(&opts),
            opts,
            step: 0,
        })
    }

    /// A trainer that starts from the weights of a trained tokenizer (its configuration is the
    /// model's); the discriminator and both optimizers start fresh. Every weight of `vq` is
    /// marked as trained, whatever its `require_grad` flags were (with `decoder_only`, only the
    /// decoder's then receive gradients).
    pub fn from_model(
        vq: VqModel<B>,
        opts: VqTrainOptions,
        lpips: Option<Lpips<B>>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        vq.config.validate()?;
        let vq = super::optim::materialize(super::optim::require_grad(vq));
        Self::with_model(vq, opts, lpips, device)
    }

    /// Picks up a run where its latest checkpoint in `out` left it.
    pub fn resume(
        out: &Path,
        lpips: Option<Lpips<B>>,
        device: &B::Device,
    ) -> Result<Option<Self>, TrainError> {
        let Some(r) = checkpoint::open_latest::<VqConfig, VqTrainOptions>(out, "vq")? else {
            return Ok(None);
        };
        let (dir, step) = (r.dir, r.step);
        let mut t = Self::new(&r.config, r.options, lpips, device)?;
        let train = dir.join("train");
        t.vq =
            t.vq.load_record(checkpoint::load_record(&train.join("vq"), device)?);
        t.disc = t
            .disc
            .load_record(checkpoint::load_record(&train.join("disc"), device)?);
        t.opt_g = t
            .opt_g
            .load_record(checkpoint::load_record(&train.join("optim_vq"), device)?);
        t.opt_d = t
            .opt_d
            .load_record(checkpoint::load_record(&train.join("optim_disc"), device)?);
        if let Some(ema) = t.ema.take() {
            let inner = ema.quant_conv.weight.device();
            t.ema = Some(ema.load_record(checkpoint::load_record(&train.join("ema"), &inner)?));
        }
        t.step = step;
        Ok(Some(t))
    }

    fn adversarial_on(&self) -> bool {
        self.step >= self.opts.disc_start && self.opts.disc_weight > 0.0
    }

    /// One step of both players on a batch of images in [−1, 1] `[batch, 3, H, W]`.
    pub fn train_step(&mut self, images: Tensor<B, 4>) -> Result<VqStepStats, TrainError> {
        self.train_step_on(images, &[])
    }

    /// [`VqTrainer::train_step`] with the tokenizer's forward and backward split into
    /// `devices.len()` shards that run in parallel (on one device or several); their gradients
    /// are summed by burn's `MultiGradientsParams` before the one optimizer step. Each shard's
    /// losses are weighted by its share of the batch, so the mean-squared, LPIPS, VQ, commitment
    /// and adversarial terms equal the whole batch's; the entropy term is each shard's own (its
    /// average code distribution is taken over the shard). The discriminator's step sees the
    /// whole batch.
    pub fn train_step_on(
        &mut self,
        images: Tensor<B, 4>,
        devices: &[B::Device],
    ) -> Result<VqStepStats, TrainError> {
        let o = self.opts.clone();
        let adversarial = self.adversarial_on();
        let n = images.dims()[0];
        let k = devices.len().min(n);
        let (mut stats, grads, reconstruction) = if k <= 1 {
            let (stats, grads, rec, _) = Self::generator_grads(
                &mut self.vq,
                self.lpips.as_ref(),
                &self.disc,
                images.clone(),
                &o,
                adversarial,
                1.0,
            );
            (stats, grads, rec)
        } else {
            let bounds: Vec<(usize, usize)> =
                (0..k).map(|i| (i * n / k, (i + 1) * n / k)).collect();
            type Shard<B> = (
                VqStepStats,
                GradientsParams,
                Tensor<B, 4>,
                Tensor<B, 1, Int>,
                f32,
            );
            let results: Vec<(Shard<B>, B::Device)> = std::thread::scope(|s| {
                let handles: Vec<_> = bounds
                    .iter()
                    .zip(devices)
                    .map(|(&(a, z), dev)| {
                        let mut vq = self.vq.clone().fork(dev);
                        let lpips = self.lpips.clone().map(|l| l.fork(dev));
                        let disc = self.disc.clone().fork(dev);
                        let shard = images.clone().narrow(0, a, z - a).to_device(dev);
                        let w = (z - a) as f32 / n as f32;
                        let (o, dev) = (o.clone(), dev.clone());
                        s.spawn(move || {
                            let (st, g, rec, idx) = Self::generator_grads(
                                &mut vq,
                                lpips.as_ref(),
                                &disc,
                                shard,
                                &o,
                                adversarial,
                                w,
                            );
                            ((st, g, rec, idx, w), dev)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training shard panicked"))
                    .collect()
            });
            let home = self.vq.quant_conv.weight.device();
            let mut stats = VqStepStats::default();
            let mut multi = MultiGradientsParams::default();
            let (mut recs, mut indices) = (Vec::new(), Vec::new());
            for ((st, g, rec, idx, w), dev) in results {
                stats.accumulate(&st, w);
                multi.grads.push((g, dev.id()));
                recs.push(rec.to_device(&home));
                indices.push(idx.to_device(&home));
            }
            // The usage FIFO lives in the home model: the shards' codes, in batch order.
            stats.codebook_usage = self.vq.quantize.update_usage(&Tensor::cat(indices, 0));
            (stats, combine_grads(&self.vq, multi), Tensor::cat(recs, 0))
        };
        if !stats.total().is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                value: stats.total(),
            });
        }
        let norm = grad_norm(&self.vq, &grads);
        stats.grad_norm = norm;
        let grads = scale_grads(&self.vq, grads, clip_factor(norm, o.max_grad_norm));
        self.vq = self.opt_g.step(o.lr, self.vq.clone(), grads);

        if adversarial {
            let logits_real = self.disc.forward(images.detach());
            let logits_fake = self.disc.forward(reconstruction);
            let d = discriminator_loss(o.disc_loss, logits_real, logits_fake) * o.disc_weight;
            stats.disc = d.clone().into_scalar().elem();
            let grads = GradientsParams::from_grads(d.backward(), &self.disc);
            let norm = grad_norm(&self.disc, &grads);
            let grads = scale_grads(&self.disc, grads, clip_factor(norm, o.max_grad_norm));
            self.disc = self.opt_d.step(o.lr, self.disc.clone(), grads);
        }
        if let (Some(decay), Some(ema)) = (o.ema_decay, self.ema.take()) {
            self.ema = Some(update_ema(ema, &self.vq.valid(), decay));
        }
        self.step += 1;
        Ok(stats)
    }

    /// The tokenizer's loss on `images` and its gradients (the loss scaled by `weight`, a
    /// shard's share of the batch; the reported figures unscaled), with the detached
    /// reconstruction and the codes.
    fn generator_grads(
        vq: &mut VqModel<B>,
        lpips: Option<&Lpips<B>>,
        disc: &PatchGan<B>,
        images: Tensor<B, 4>,
        o: &VqTrainOptions,
        adversarial: bool,
        weight: f32,
    ) -> (
        VqStepStats,
        GradientsParams,
        Tensor<B, 4>,
        Tensor<B, 1, Int>,
    ) {
        let out = if o.decoder_only {
            // The codes come from the fixed encoder and codebook; the gradients stop at the
            // quantized latent, so only post_quant_conv and the decoder receive any.
            let q = vq
                .quantize
                .quantize(vq.encode_latent(images.clone().detach()));
            let codebook_usage = vq.quantize.update_usage(&q.indices);
            let zero = Tensor::zeros([1], &images.device());
            crate::vq::VqTrainOutput {
                reconstruction: vq.decode(q.z_q.detach()),
                losses: crate::vq::QuantizerLosses {
                    vq_loss: zero.clone(),
                    commit_loss: zero.clone(),
                    entropy_loss: zero,
                },
                codebook_usage,
                indices: q.indices,
            }
        } else {
            vq.forward_train(images.clone())
        };
        let mut stats = VqStepStats {
            codebook_usage: out.codebook_usage,
            ..Default::default()
        };
        let rec = o
            .reconstruction_loss
            .mean(images.clone(), out.reconstruction.clone());
        let mut loss = rec.clone() * o.reconstruction_weight;
        stats.reconstruction = rec.into_scalar().elem();
        if let Some(lpips) = lpips
            && o.perceptual_weight > 0.0
        {
            let p = lpips
                .forward(images.clone(), out.reconstruction.clone())
                .mean();
            stats.perceptual = p.clone().into_scalar().elem::<f32>() * o.perceptual_weight as f32;
            loss = loss + p * o.perceptual_weight;
        }
        let l = out.losses;
        stats.vq = l.vq_loss.clone().into_scalar().elem();
        stats.commit = l.commit_loss.clone().into_scalar().elem();
        stats.entropy = l.entropy_loss.clone().into_scalar().elem();
        loss = loss + (l.vq_loss + l.commit_loss + l.entropy_loss) * o.codebook_weight;
        if adversarial {
            let logits_fake = disc.forward(out.reconstruction.clone());
            let g = generator_loss(o.gen_loss, logits_fake) * o.disc_weight;
            stats.gen_adv = g.clone().into_scalar().elem();
            loss = loss + g;
        }
        // The generator's gradients reach the discriminator's parameters too; only the
        // tokenizer's are used (the official code zeroes the discriminator's before its step).
        let grads = GradientsParams::from_grads((loss * weight).backward(), &*vq);
        (stats, grads, out.reconstruction.detach(), out.indices)
    }

    /// The weights to export: the EMA copy when kept, else the live tokenizer.
    pub fn export_model(&self) -> VqModel<B::InnerBackend> {
        self.ema.clone().unwrap_or_else(|| self.vq.valid())
    }

    /// Writes a checkpoint into `out`; `model.safetensors` holds the exported weights (EMA when
    /// kept) under the official names, `model.raw.safetensors` the live ones when EMA is on.
    pub fn save(&self, out: &Path, extra: serde_json::Value) -> Result<PathBuf, TrainError> {
        checkpoint::save(out, self.step, |dir| {
            let specs = self.vq.config.state_dict_specs();
            let tensors = crate::checkpoint::state_dict(&self.export_model(), &specs)?;
            let meta = crate::checkpoint::config_metadata(
                crate::checkpoint::VQ_CONFIG_KEY,
                &self.vq.config,
            );
            crate::checkpoint::write_safetensors(&dir.join("model.safetensors"), &tensors, meta)?;
            let train = dir.join("train");
            std::fs::create_dir_all(&train).map_err(|e| TrainError::io(&train, e))?;
            checkpoint::save_record(self.vq.clone().into_record(), &train.join("vq"))?;
            checkpoint::save_record(self.disc.clone().into_record(), &train.join("disc"))?;
            checkpoint::save_record(self.opt_g.to_record(), &train.join("optim_vq"))?;
            checkpoint::save_record(self.opt_d.to_record(), &train.join("optim_disc"))?;
            if let Some(ema) = &self.ema {
                checkpoint::save_record(ema.clone().into_record(), &train.join("ema"))?;
            }
            checkpoint::save_state(
                dir,
                &serde_json::json!({
                    "kind": "vq",
                    "step": self.step,
                    "config": self.vq.config,
                    "options": self.opts,
                    "extra": extra,
                }),
            )
        })
    }
}
