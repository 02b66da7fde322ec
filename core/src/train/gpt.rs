//! The generator's training (official `autoregressive/train/train_c2i.py`): next-token
//! cross-entropy on extracted code grids, AdamW (β 0.9/0.95, weight decay on tensors of rank ≥ 2
//! only), gradient clipping by the global norm, class dropout for classifier-free guidance, and
//! one of the augmented grids of each image drawn per epoch.
//!
//! Data parallelism: a step can be split into shards that run forward and backward on their own
//! device (or on the same one) in parallel; their gradients are combined by burn's
//! `MultiGradientsParams` (the accumulation burn-train's multi-device strategy uses) before one
//! optimizer step.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, MultiGradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::DeviceOps;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::checkpoint;
use super::data::CodeSet;
use super::optim::{clip_factor, combine_grads, grad_norm, scale_and_split};
use crate::config::GptConfig;
use crate::gpt::{Condition, Transformer};

/// Options of the generator's training (official defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GptTrainOptions {
    /// Learning rate (official: 1e-4 for a global batch of 256).
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Global gradient-norm clipping (0 = off).
    pub max_grad_norm: f32,
    pub batch_size: usize,
    pub seed: u64,
    /// Steps `(start, end)` over which the learning rate falls linearly from `lr` towards zero
    /// (`None`: constant, the official schedule). See [`GptTrainOptions::lr_at`].
    #[serde(default)]
    pub lr_decay: Option<(u64, u64)>,
}

impl Default for GptTrainOptions {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            max_grad_norm: 1.0,
            batch_size: 256,
            seed: 0,
            lr_decay: None,
        }
    }
}

impl GptTrainOptions {
    /// The learning rate of the step that starts at `step`: `lr` before the decay, then
    /// `lr · (end − step) / (end − start)`, which reaches `lr / (end − start)` on the last step and
    /// stays there past `end`.
    pub fn lr_at(&self, step: u64) -> f64 {
        match self.lr_decay {
            Some((start, end)) if end > start && step >= start => {
                self.lr * end.saturating_sub(step).max(1) as f64 / (end - start) as f64
            }
            _ => self.lr,
        }
    }
}

/// A batch: class labels (the null class `num_classes` where dropped) and code grids, and for
/// text-conditional training the rows' caption features.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeBatch {
    pub labels: Vec<i64>,
    /// `[batch, seq_len]`, row-major.
    pub codes: Vec<i64>,
    pub seq_len: usize,
    pub captions: Option<CaptionBatch>,
}

/// Left-padded caption features of a batch's rows, and which rows drop their caption for the
/// learned null caption (classifier-free guidance; the official `CaptionEmbedder.token_drop`
/// keeps the caption's attention mask).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionBatch {
    /// `[batch, tokens, dim]`, row-major.
    pub features: Vec<f32>,
    /// `[batch, tokens]`, true at valid (non-padding) positions.
    pub masks: Vec<bool>,
    pub dropped: Vec<bool>,
    pub tokens: usize,
    pub dim: usize,
}

impl CaptionBatch {
    fn slice(&self, from: usize, to: usize) -> CaptionBatch {
        let (t, d) = (self.tokens, self.dim);
        CaptionBatch {
            features: self.features[from * t * d..to * t * d].to_vec(),
            masks: self.masks[from * t..to * t].to_vec(),
            dropped: self.dropped[from..to].to_vec(),
            tokens: t,
            dim: d,
        }
    }

    /// The official t2i training mask `[batch, 1, L, L]` (true = may attend) for sequences of
    /// `len` positions whose first `tokens` are the caption: causal, padding columns of the
    /// caption switched off, and every position may always see itself.
    pub fn attention_allowed(&self, len: usize) -> Vec<bool> {
        let b = self.dropped.len();
        let t = self.tokens;
        let mut out = Vec::with_capacity(b * len * len);
        for r in 0..b {
            let mask = &self.masks[r * t..(r + 1) * t];
            for i in 0..len {
                for j in 0..len {
                    let visible = j >= t || mask[j];
                    out.push(i == j || (j < i && visible));
                }
            }
        }
        out
    }
}

/// The caption features of a code set, computed once: each distinct caption's left-padded
/// features, and which one each image has.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionTable {
    /// Index into the distinct captions, per image.
    pub per_image: Vec<u32>,
    /// `[distinct, tokens, dim]`.
    pub features: Vec<f32>,
    /// `[distinct, tokens]`.
    pub masks: Vec<bool>,
    pub tokens: usize,
    pub dim: usize,
}

impl CaptionTable {
    /// Builds the table from per-image captions with `encode`, which maps a list of distinct
    /// captions to their left-padded `(features [tokens · dim], mask [tokens])`.
    pub fn build<E>(
        captions: &[String],
        tokens: usize,
        dim: usize,
        mut encode: impl FnMut(&[String]) -> Result<Vec<(Vec<f32>, Vec<bool>)>, E>,
    ) -> Result<Self, E> {
        let mut distinct: Vec<String> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let per_image = captions
            .iter()
            .map(|c| {
                *index.entry(c.clone()).or_insert_with(|| {
                    distinct.push(c.clone());
                    (distinct.len() - 1) as u32
                })
            })
            .collect();
        let mut features = Vec::with_capacity(distinct.len() * tokens * dim);
        let mut masks = Vec::with_capacity(distinct.len() * tokens);
        for chunk in distinct.chunks(64) {
            for (f, m) in encode(chunk)? {
                assert_eq!(
                    (f.len(), m.len()),
                    (tokens * dim, tokens),
                    "encoder output shape"
                );
                features.extend(f);
                masks.extend(m);
            }
        }
        Ok(Self {
            per_image,
            features,
            masks,
            tokens,
            dim,
        })
    }

    pub fn distinct(&self) -> usize {
        self.masks.len() / self.tokens.max(1)
    }

    /// The caption rows of `images` (indices into the per-image captions); `dropped` marks
    /// the rows that take the null caption.
    pub fn gather(&self, images: &[usize], dropped: Vec<bool>) -> CaptionBatch {
        let (t, d) = (self.tokens, self.dim);
        let mut features = Vec::with_capacity(images.len() * t * d);
        let mut masks = Vec::with_capacity(images.len() * t);
        for &image in images {
            let id = self.per_image[image] as usize;
            features.extend_from_slice(&self.features[id * t * d..(id + 1) * t * d]);
            masks.extend_from_slice(&self.masks[id * t..(id + 1) * t]);
        }
        CaptionBatch {
            features,
            masks,
            dropped,
            tokens: t,
            dim: d,
        }
    }
}

impl CodeBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows `[from, to)`.
    pub fn slice(&self, from: usize, to: usize) -> CodeBatch {
        CodeBatch {
            labels: self.labels[from..to].to_vec(),
            codes: self.codes[from * self.seq_len..to * self.seq_len].to_vec(),
            seq_len: self.seq_len,
            captions: self.captions.as_ref().map(|c| c.slice(from, to)),
        }
    }
}

/// Draws batches from a code set deterministically from `(seed, step)`: each epoch is a fresh
/// permutation of the images, each image takes one of its augmented grids at random, and labels
/// are replaced by the null class with probability `class_dropout` (with `captions`, the same
/// draw drops the caption for the null caption).
pub struct CodeBatcher<'a> {
    pub set: &'a CodeSet,
    pub batch_size: usize,
    pub seed: u64,
    pub class_dropout: f64,
    pub num_classes: usize,
    pub captions: Option<&'a CaptionTable>,
}

impl CodeBatcher<'_> {
    pub fn steps_per_epoch(&self) -> u64 {
        (self.set.meta.num_images / self.batch_size).max(1) as u64
    }

    /// The batch of global step `step` (0-based).
    pub fn batch(&self, step: u64) -> CodeBatch {
        let spe = self.steps_per_epoch();
        let (epoch, within) = (step / spe, (step % spe) as usize);
        let n = self.set.meta.num_images;
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9e37_79b9_7f4a_7c15);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
        let mut batch_rng = ChaCha8Rng::seed_from_u64(self.seed);
        batch_rng.set_stream((1 << 40) + step);
        let seq = self.set.meta.seq_len;
        let mut labels = Vec::with_capacity(self.batch_size);
        let mut codes = Vec::with_capacity(self.batch_size * seq);
        let mut images = Vec::with_capacity(self.batch_size);
        let mut dropped = Vec::with_capacity(self.batch_size);
        for k in 0..self.batch_size {
            let image = order[(within * self.batch_size + k) % n];
            let aug = batch_rng.random_range(0..self.set.meta.num_aug);
            let drop = batch_rng.random::<f64>() < self.class_dropout;
            labels.push(if drop {
                self.num_classes as i64
            } else {
                self.set.labels[image] as i64
            });
            codes.extend(self.set.grid(image, aug).iter().map(|&c| c as i64));
            images.push(image);
            dropped.push(drop);
        }
        let captions = self.captions.map(|t| t.gather(&images, dropped));
        CodeBatch {
            labels,
            codes,
            seq_len: seq,
            captions,
        }
    }
}

/// Loss and gradient figures of one step.
#[derive(Debug, Clone, Copy)]
pub struct GptStepStats {
    pub loss: f32,
    pub grad_norm: f32,
}

type Adam<B> = OptimizerAdaptor<AdamW, Transformer<B>, B>;

/// The generator with its two AdamW optimizers (with and without weight decay).
pub struct GptTrainer<B: AutodiffBackend> {
    pub model: Transformer<B>,
    decay_opt: Adam<B>,
    no_decay_opt: Adam<B>,
    pub opts: GptTrainOptions,
    /// Optimizer steps taken.
    pub step: u64,
}

fn adamw<B: AutodiffBackend>(opts: &GptTrainOptions, wd: f64) -> Adam<B> {
    AdamWConfig::new()
        .with_beta_1(opts.beta1 as f32)
        .with_beta_2(opts.beta2 as f32)
        .with_epsilon(1e-8)
        .with_weight_decay(wd as f32)
        .init()
}

/// What [`GptTrainer::start_from`] did: layers taken from the source, and identity layers
/// added after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFrom {
    pub copied_layers: usize,
    pub new_layers: usize,
}

/// Replaces every float parameter of `dst` by the one at the same place in `src` (same
/// module type, so the same order), keeping `dst`'s parameter ids and gradient flags.
fn graft_module<B: Backend, M: Module<B>>(dst: M, src: M) -> Result<M, TrainError> {
    struct Collect<B: Backend>(Vec<(Vec<usize>, burn::tensor::TensorPrimitive<B>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val().detach();
            self.0.push((t.dims().to_vec(), t.into_primitive()));
        }
    }
    struct Replace<B: Backend> {
        from: std::vec::IntoIter<(Vec<usize>, burn::tensor::TensorPrimitive<B>)>,
        error: Option<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Replace<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some((dims, value)) = self.from.next() else {
                self.error
                    .get_or_insert_with(|| "it has fewer tensors".into());
                return param;
            };
            let shape = param.lazy_shape().dims::<D>().to_vec();
            if shape != dims {
                self.error.get_or_insert_with(|| {
                    format!("a tensor of shape {dims:?} stands where {shape:?} is")
                });
                return param;
            }
            param.map(|t| {
                let grad = t.is_require_grad();
                Tensor::<B, D>::from_primitive(value).set_require_grad(grad)
            })
        }
    }
    let mut collect = Collect::<B>(Vec::new());
    src.visit(&mut collect);
    let mut replace = Replace {
        from: collect.0.into_iter(),
        error: None,
    };
    let grafted = dst.map(&mut replace);
    match replace.error {
        Some(e) => Err(TrainError::StartFrom(e)),
        None if replace.from.next().is_some() => {
            Err(TrainError::StartFrom("it has more tensors".into()))
        }
        None => Ok(grafted),
    }
}

impl<B: AutodiffBackend> GptTrainer<B> {
    /// A freshly initialised generator (official initialisation).
    pub fn new(
        cfg: &GptConfig,
        opts: GptTrainOptions,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            model: super::optim::materialize(Transformer::init(cfg, device)?),
            decay_opt: adamw(&opts, opts.weight_decay),
            no_decay_opt: adamw(&opts, 0.0),
            opts,
            step: 0,
        })
    }

    /// Picks up a run where its latest checkpoint in `out` left it.
    pub fn resume(out: &Path, device: &B::Device) -> Result<Option<Self>, TrainError> {
        let Some(r) = checkpoint::open_latest::<GptConfig, GptTrainOptions>(out, "gpt")? else {
            return Ok(None);
        };
        let (dir, step) = (r.dir, r.step);
        let mut t = Self::new(&r.config, r.options, device)?;
        let train = dir.join("train");
        t.model = t
            .model
            .load_record(checkpoint::load_record(&train.join("model"), device)?);
        t.decay_opt = t
            .decay_opt
            .load_record(checkpoint::load_record(&train.join("optim_decay"), device)?);
        t.no_decay_opt = t.no_decay_opt.load_record(checkpoint::load_record(
            &train.join("optim_no_decay"),
            device,
        )?);
        t.step = step;
        Ok(Some(t))
    }

    /// Starts from a trained generator's weights instead of a fresh initialisation: to
    /// fine-tune it on other codes, or to grow it deeper. Every tensor of `source` replaces the
    /// model's own. When `source` has fewer layers, its layers become the first ones, and each
    /// layer past them starts as the identity: its attention and feed-forward output
    /// projections are zero (their gradients are not, so they learn from the first step), the
    /// rest keeps its fresh initialisation. The grown model then computes exactly what `source`
    /// does. Only before the first step; widths, heads, vocabulary and conditions must match.
    pub fn start_from(&mut self, source: Transformer<B>) -> Result<StartFrom, TrainError> {
        if self.step != 0 {
            return Err(TrainError::StartFrom(format!(
                "the run is at step {}, not at its start",
                self.step
            )));
        }
        let (to, from) = (&self.model.config, &source.config);
        let fits = [
            (
                "model type",
                format!("{:?}", to.model_type),
                format!("{:?}", from.model_type),
            ),
            ("width", to.dim.to_string(), from.dim.to_string()),
            ("heads", to.n_head.to_string(), from.n_head.to_string()),
            (
                "key/value heads",
                to.kv_heads().to_string(),
                from.kv_heads().to_string(),
            ),
            (
                "feed-forward width",
                to.ffn_hidden_dim().to_string(),
                from.ffn_hidden_dim().to_string(),
            ),
            (
                "codebook",
                to.vocab_size.to_string(),
                from.vocab_size.to_string(),
            ),
            (
                "classes",
                to.num_classes.to_string(),
                from.num_classes.to_string(),
            ),
            (
                "condition tokens",
                to.cls_token_num.to_string(),
                from.cls_token_num.to_string(),
            ),
            (
                "caption width",
                to.caption_dim.to_string(),
                from.caption_dim.to_string(),
            ),
        ];
        if let Some((what, ours, theirs)) = fits.iter().find(|(_, a, b)| a != b) {
            return Err(TrainError::StartFrom(format!(
                "its {what} is {theirs}, the generator being trained has {ours}"
            )));
        }
        let (n_to, n_from) = (to.n_layer, from.n_layer);
        if n_from > n_to {
            return Err(TrainError::StartFrom(format!(
                "it has {n_from} layers, more than the {n_to} being trained"
            )));
        }
        let Transformer {
            cls_embedding,
            tok_embeddings,
            layers,
            norm,
            output,
            ..
        } = source;
        // Built aside and swapped in whole, so that a mismatch found halfway leaves the model
        // as it was.
        let mut model = self.model.clone();
        model.cls_embedding = graft_module(model.cls_embedding, cls_embedding)?;
        model.tok_embeddings = graft_module(model.tok_embeddings, tok_embeddings)?;
        model.norm = graft_module(model.norm, norm)?;
        model.output = graft_module(model.output, output)?;
        let mut blocks = Vec::with_capacity(n_to);
        let mut fresh = std::mem::take(&mut model.layers).into_iter();
        for src in layers {
            let block = fresh.next().expect("n_from <= n_to");
            blocks.push(graft_module(block, src)?);
        }
        let zero = |p: Param<Tensor<B, 2>>| {
            p.map(|w| {
                let grad = w.is_require_grad();
                w.zeros_like().set_require_grad(grad)
            })
        };
        for mut block in fresh {
            block.attention.wo.weight = zero(block.attention.wo.weight);
            block.feed_forward.w2.weight = zero(block.feed_forward.w2.weight);
            blocks.push(block);
        }
        model.layers = blocks;
        self.model = model;
        Ok(StartFrom {
            copied_layers: n_from,
            new_layers: n_to - n_from,
        })
    }

    fn shard_grads(
        model: &Transformer<B>,
        batch: &CodeBatch,
        weight: f32,
        device: &B::Device,
    ) -> (f32, GradientsParams) {
        let loss = batch_loss(model, batch, device);
        let value = loss.clone().into_scalar().elem::<f32>();
        let grads = GradientsParams::from_grads((loss * weight).backward(), model);
        (value, grads)
    }

    /// One optimizer step on `batch`, split into `devices.len()` shards run in parallel (one
    /// shard on the model's own device when `devices` is empty).
    pub fn train_step(
        &mut self,
        batch: &CodeBatch,
        devices: &[B::Device],
    ) -> Result<GptStepStats, TrainError> {
        let home = self.model.device();
        let devices: Vec<B::Device> = if devices.is_empty() {
            vec![home.clone()]
        } else {
            devices.to_vec()
        };
        let n = batch.len();
        let k = devices.len().min(n).max(1);
        let (loss, grads) = if k == 1 {
            Self::shard_grads(&self.model, batch, 1.0, &devices[0])
        } else {
            let bounds: Vec<(usize, usize)> =
                (0..k).map(|i| (i * n / k, (i + 1) * n / k)).collect();
            let results: Vec<(f32, f32, GradientsParams, B::Device)> = std::thread::scope(|s| {
                let handles: Vec<_> = bounds
                    .iter()
                    .zip(&devices)
                    .map(|(&(a, z), dev)| {
                        let replica = self.model.clone().fork(dev);
                        let shard = batch.slice(a, z);
                        let w = (z - a) as f32 / n as f32;
                        let dev = dev.clone();
                        s.spawn(move || {
                            let (l, g) = Self::shard_grads(&replica, &shard, w, &dev);
                            (l, w, g, dev)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training shard panicked"))
                    .collect()
            });
            let loss = results.iter().map(|(l, w, _, _)| l * w).sum();
            let mut multi = MultiGradientsParams::default();
            for (_, _, g, dev) in results {
                multi.grads.push((g, dev.id()));
            }
            (loss, combine_grads(&self.model, multi))
        };
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                value: loss,
            });
        }
        let norm = grad_norm(&self.model, &grads);
        let split = scale_and_split(
            &self.model,
            grads,
            clip_factor(norm, self.opts.max_grad_norm),
        );
        let model = self.model.clone();
        let lr = self.opts.lr_at(self.step);
        let model = self.decay_opt.step(lr, model, split.decay);
        self.model = self.no_decay_opt.step(lr, model, split.no_decay);
        self.step += 1;
        Ok(GptStepStats {
            loss,
            grad_norm: norm,
        })
    }

    /// Writes a checkpoint into `out` (see [`checkpoint`]); `extra` goes into state.json.
    pub fn save(&self, out: &Path, extra: serde_json::Value) -> Result<PathBuf, TrainError> {
        checkpoint::save(out, self.step, |dir| {
            let inner = self.model.valid();
            let tensors =
                crate::checkpoint::state_dict(&inner, &self.model.config.state_dict_specs())?;
            let meta = crate::checkpoint::config_metadata(
                crate::checkpoint::GPT_CONFIG_KEY,
                &self.model.config,
            );
            crate::checkpoint::write_safetensors(&dir.join("model.safetensors"), &tensors, meta)?;
            let train = dir.join("train");
            std::fs::create_dir_all(&train).map_err(|e| TrainError::io(&train, e))?;
            checkpoint::save_record(self.model.clone().into_record(), &train.join("model"))?;
            checkpoint::save_record(self.decay_opt.to_record(), &train.join("optim_decay"))?;
            checkpoint::save_record(self.no_decay_opt.to_record(), &train.join("optim_no_decay"))?;
            checkpoint::save_state(
                dir,
                &serde_json::json!({
                    "kind": "gpt",
                    "step": self.step,
                    "config": self.model.config,
                    "options": self.opts,
                    "extra": extra,
                }),
            )
        })
    }
}

/// Mean next-token cross-entropy of `model` on `batch` (dropout acts only on an autodiff
/// backend, so on a plain one this is the evaluation loss).
fn batch_loss<B: Backend>(
    model: &Transformer<B>,
    batch: &CodeBatch,
    device: &B::Device,
) -> Tensor<B, 1> {
    let b = batch.len();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels.clone(), [b]), device);
    let codes = Tensor::<B, 2, Int>::from_data(
        TensorData::new(batch.codes.clone(), [b, batch.seq_len]),
        device,
    );
    let input = codes.clone().narrow(1, 0, batch.seq_len - 1);
    let (cond, allowed) = match &batch.captions {
        None => (Condition::Class(labels), None),
        Some(c) => caption_condition(model, c, batch.seq_len, device),
    };
    let logits = model.forward_train(&cond, input, allowed);
    model.loss(logits, codes, None)
}

/// Mean next-token loss of `model` over every image of `set`: its centre-crop grid,
/// its own class (or caption, from `captions`), nothing dropped. On a held-out set this is the
/// figure that tells learning from memorising.
pub fn held_out_loss<B: Backend>(
    model: &Transformer<B>,
    set: &CodeSet,
    captions: Option<&CaptionTable>,
    batch_size: usize,
    device: &B::Device,
) -> f32 {
    let n = set.meta.num_images;
    let seq = set.meta.seq_len;
    let centre = set.meta.centre_aug();
    let mut total = 0.0f64;
    for from in (0..n).step_by(batch_size.max(1)) {
        let to = (from + batch_size.max(1)).min(n);
        let images: Vec<usize> = (from..to).collect();
        let batch = CodeBatch {
            labels: images.iter().map(|&i| set.labels[i] as i64).collect(),
            codes: images
                .iter()
                .flat_map(|&i| set.grid(i, centre).iter().map(|&c| c as i64))
                .collect(),
            seq_len: seq,
            captions: captions.map(|t| t.gather(&images, vec![false; images.len()])),
        };
        let loss = batch_loss(model, &batch, device)
            .into_scalar()
            .elem::<f32>();
        total += loss as f64 * (to - from) as f64;
    }
    (total / n.max(1) as f64) as f32
}

/// The caption condition of a batch (dropped rows take the model's null caption) and its
/// attention mask.
fn caption_condition<B: Backend>(
    model: &Transformer<B>,
    c: &CaptionBatch,
    seq_len: usize,
    device: &B::Device,
) -> (Condition<B>, Option<Tensor<B, 4, Bool>>) {
    let (b, t, d) = (c.dropped.len(), c.tokens, c.dim);
    let mut features =
        Tensor::<B, 3>::from_data(TensorData::new(c.features.clone(), [b, t, d]), device);
    if c.dropped.iter().any(|&x| x) {
        let null = model.null_condition(&Condition::Caption(features.clone()));
        let Condition::Caption(null) = null else {
            unreachable!("the null of a caption is a caption")
        };
        let dropped =
            Tensor::<B, 1, Bool>::from_data(TensorData::new(c.dropped.clone(), [b]), device)
                .reshape([b, 1, 1])
                .expand([b, t, d]);
        features = features.mask_where(dropped, null);
    }
    // The image part is one shorter than the codes: the last code is only a target.
    let len = t + seq_len - 1;
    let allowed = Tensor::<B, 4, Bool>::from_data(
        TensorData::new(c.attention_allowed(len), [b, 1, len, len]),
        device,
    );
    (Condition::Caption(features), Some(allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_is_constant_then_falls_linearly_over_the_decay() {
        let constant = GptTrainOptions {
            lr: 1.0,
            ..GptTrainOptions::default()
        };
        assert_eq!(constant.lr_at(0), 1.0);
        assert_eq!(constant.lr_at(1_000_000), 1.0);
        let decayed = GptTrainOptions {
            lr_decay: Some((6, 10)),
            ..constant
        };
        let lrs: Vec<f64> = (4..12).map(|s| decayed.lr_at(s)).collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.25, 0.25]);
    }

    #[test]
    fn the_caption_mask_is_causal_hides_padding_and_keeps_the_diagonal() {
        // One row, 3 caption tokens of which the first is padding, then 2 image positions.
        let c = CaptionBatch {
            features: vec![0.0; 3],
            masks: vec![false, true, true],
            dropped: vec![false],
            tokens: 3,
            dim: 1,
        };
        let a = c.attention_allowed(5);
        let row = |i: usize| -> String {
            (0..5)
                .map(|j| if a[i * 5 + j] { '1' } else { '0' })
                .collect()
        };
        assert_eq!(row(0), "10000"); // padding sees only itself
        assert_eq!(row(1), "01000");
        assert_eq!(row(2), "01100");
        assert_eq!(row(3), "01110");
        assert_eq!(row(4), "01111");
    }
}
