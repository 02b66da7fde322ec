//! The generation loop shared by the CLI and the studio: a batch of requests, each with its own
//! condition and sampler settings; prefill, then one-token decode steps on the KV cache, CFG
//! doubling the batch as the official code does; one event per token; cancellable between
//! tokens; resampling from a kept prefix. Besides one token a pass, the same run can decode
//! several tokens a pass ([`Decoding`]: speculative Jacobi decoding, ZipAR).

mod decoding;
mod sjd;
mod zipar;

pub use decoding::{Decoding, DecodingError};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::prelude::*;
use burn::tensor::{Bool, TensorData};

use crate::config::ModelType;
use crate::gpt::{CacheLayout, Condition, KvCache, Transformer};
use crate::kernels::DeviceSampler;
use crate::sampling::{SamplerParams, SamplingError, TokenSampler, TokenSampling};
use crate::vq::VqModel;

/// What one sample is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestCondition {
    /// An ImageNet (or data-set) class id.
    Class(usize),
    /// Caption features `[cls_token_num, caption_dim]` (left-padded) and the validity of each
    /// caption position.
    Caption { features: Vec<f32>, mask: Vec<bool> },
}

/// One image to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub condition: RequestCondition,
    pub params: SamplerParams,
    /// Tokens kept from an earlier result; generation continues after them.
    pub prefix: Vec<u32>,
}

impl Request {
    pub fn class(class: usize, params: SamplerParams) -> Self {
        Self {
            condition: RequestCondition::Class(class),
            params,
            prefix: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    #[error("empty batch: nothing to generate")]
    EmptyBatch,
    #[error("sample {index}: {source}")]
    Sampling { index: usize, source: SamplingError },
    #[error("sample {index}: class {class} is out of range (the model has {num_classes} classes)")]
    ClassOutOfRange {
        index: usize,
        class: usize,
        num_classes: usize,
    },
    #[error("sample {index}: {reason}")]
    Condition { index: usize, reason: String },
    #[error(transparent)]
    Decoding(#[from] DecodingError),
    #[error("sample {index}: prefix of {len} tokens {reason}")]
    Prefix {
        index: usize,
        len: usize,
        reason: String,
    },
}

/// Per-token detail an observer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventDetail {
    /// Probability of the chosen token and entropy of the distribution, per sample.
    pub confidence: bool,
    /// The (CFG-combined) logits each sample was drawn from.
    pub logits: bool,
}

/// One generated token for every sample of the batch.
#[derive(Debug)]
pub struct TokenEvent<'a> {
    /// Index of the token just generated (0-based, in the image grid).
    pub index: usize,
    /// Tokens per image.
    pub total: usize,
    /// Tokens so far, per sample.
    pub tokens: &'a [Vec<u32>],
    /// Probability of each sample's chosen token (when asked for).
    pub probs: Option<&'a [f32]>,
    /// Entropy of each sample's distribution (when asked for).
    pub entropy: Option<&'a [f32]>,
    /// The logits each sample was drawn from (when asked for).
    pub logits: Option<&'a [Vec<f32>]>,
    /// Forward passes of the generator so far (the prefill included): `index + 1` when
    /// decoding one token a pass, fewer with [`Decoding::Sjd`] or [`Decoding::Zipar`].
    pub passes: usize,
}

/// Receives the per-token events. `()` ignores them and costs nothing.
pub trait Observer {
    fn detail(&self) -> EventDetail {
        EventDetail::default()
    }
    fn on_token(&mut self, _event: &TokenEvent<'_>) {}
}

impl Observer for () {}

impl<F: FnMut(&TokenEvent<'_>)> Observer for F {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self(event)
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Token grid of every sample, row-major; shorter than `block_size` when cancelled.
    pub tokens: Vec<Vec<u32>>,
    /// Probability of each chosen token (prefix tokens: NaN).
    pub probs: Vec<Vec<f32>>,
    /// Entropy at each token (prefix tokens: NaN).
    pub entropy: Vec<Vec<f32>>,
    pub cancelled: bool,
    /// Where the tokens were drawn.
    pub sampling: TokenSampling,
    /// Forward passes of the generator that produced tokens (the prefill, or the pass over a
    /// kept prefix, included): one per token when decoding sequentially.
    pub forward_passes: usize,
}

impl Generation {
    pub fn is_complete(&self, block_size: usize) -> bool {
        !self.cancelled && self.tokens.iter().all(|t| t.len() == block_size)
    }
}

/// Device-to-host reads made by the decode loops of [`Generator::generate`] since the process
/// started (one per step on GPU backends, with device sampling; one per step on the host
/// sampler's path too, where the whole logits come back). `llamagen bench` reports it per step.
pub static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// Generates image tokens with a transformer; reusable across runs (each run has its own cache).
pub struct Generator<'a, B: Backend> {
    pub gpt: &'a Transformer<B>,
    /// How forward passes become tokens (sequential unless set).
    pub decoding: Decoding,
}

/// What a decoding strategy starts from: the cache holds the condition and any kept prefix, and
/// `last` holds the logits that predict the first token to generate.
pub(crate) struct Run<'r, B: Backend> {
    gpt: &'r Transformer<B>,
    cache: KvCache<B>,
    /// `[rows, 1, vocab]`.
    last: Tensor<B, 3>,
    requests: &'r [Request],
    use_cfg: bool,
    prefix_len: usize,
    detail: EventDetail,
    /// Forward passes so far.
    passes: usize,
}

impl<'a, B: Backend> Generator<'a, B> {
    pub fn new(gpt: &'a Transformer<B>) -> Self {
        Self {
            gpt,
            decoding: Decoding::Sequential,
        }
    }

    /// This generator with another decoding strategy.
    pub fn with_decoding(mut self, decoding: Decoding) -> Self {
        self.decoding = decoding;
        self
    }

    fn validate(&self, requests: &[Request]) -> Result<usize, GenerateError> {
        let cfg = &self.gpt.config;
        let first = requests.first().ok_or(GenerateError::EmptyBatch)?;
        let prefix_len = first.prefix.len();
        for (index, r) in requests.iter().enumerate() {
            r.params
                .validate()
                .map_err(|source| GenerateError::Sampling { index, source })?;
            match (&r.condition, cfg.model_type) {
                (RequestCondition::Class(c), ModelType::C2i) => {
                    if *c >= cfg.num_classes {
                        return Err(GenerateError::ClassOutOfRange {
                            index,
                            class: *c,
                            num_classes: cfg.num_classes,
                        });
                    }
                }
                (RequestCondition::Caption { features, mask }, ModelType::T2i) => {
                    let want = cfg.cls_token_num * cfg.caption_dim;
                    if features.len() != want || mask.len() != cfg.cls_token_num {
                        return Err(GenerateError::Condition {
                            index,
                            reason: format!(
                                "caption features must be {} × {} with a {}-entry mask, got {} values and {} mask entries",
                                cfg.cls_token_num,
                                cfg.caption_dim,
                                cfg.cls_token_num,
                                features.len(),
                                mask.len()
                            ),
                        });
                    }
                }
                (RequestCondition::Class(_), ModelType::T2i) => {
                    return Err(GenerateError::Condition {
                        index,
                        reason: "this is a text-conditional model: give it a prompt, not a class"
                            .into(),
                    });
                }
                (RequestCondition::Caption { .. }, ModelType::C2i) => {
                    return Err(GenerateError::Condition {
                        index,
                        reason: "this is a class-conditional model: give it a class, not a prompt"
                            .into(),
                    });
                }
            }
            if r.prefix.len() != prefix_len {
                return Err(GenerateError::Prefix {
                    index,
                    len: r.prefix.len(),
                    reason: format!("differs from the batch's prefix length {prefix_len}"),
                });
            }
            if r.prefix.len() >= cfg.block_size {
                return Err(GenerateError::Prefix {
                    index,
                    len: r.prefix.len(),
                    reason: format!(
                        "leaves nothing to generate ({} tokens per image)",
                        cfg.block_size
                    ),
                });
            }
            if let Some(t) = r.prefix.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(GenerateError::Prefix {
                    index,
                    len: r.prefix.len(),
                    reason: format!(
                        "holds token {t}, outside the vocabulary of {}",
                        cfg.vocab_size
                    ),
                });
            }
        }
        Ok(prefix_len)
    }

    fn condition(
        &self,
        requests: &[Request],
        device: &B::Device,
    ) -> (Condition<B>, Option<Tensor<B, 2, Bool>>) {
        let cfg = &self.gpt.config;
        let b = requests.len();
        match cfg.model_type {
            ModelType::C2i => {
                let ids: Vec<i64> = requests
                    .iter()
                    .map(|r| match r.condition {
                        RequestCondition::Class(c) => c as i64,
                        _ => unreachable!("validated"),
                    })
                    .collect();
                (
                    Condition::Class(Tensor::from_data(TensorData::new(ids, [b]), device)),
                    None,
                )
            }
            ModelType::T2i => {
                let (t, d) = (cfg.cls_token_num, cfg.caption_dim);
                let mut feats = Vec::with_capacity(b * t * d);
                let mut masks = Vec::with_capacity(b * t);
                for r in requests {
                    if let RequestCondition::Caption { features, mask } = &r.condition {
                        feats.extend_from_slice(features);
                        masks.extend(mask.iter().copied());
                    }
                }
                (
                    Condition::Caption(Tensor::from_data(
                        TensorData::new(feats, [b, t, d]),
                        device,
                    )),
                    Some(Tensor::from_data(TensorData::new(masks, [b, t]), device)),
                )
            }
        }
    }

    /// Runs a batch. Stops between tokens once `cancel` is set (the result is then marked
    /// cancelled and holds the tokens made so far).
    pub fn generate(
        &self,
        requests: &[Request],
        observer: &mut dyn Observer,
        cancel: Option<&AtomicBool>,
    ) -> Result<Generation, GenerateError> {
        let prefix_len = self.validate(requests)?;
        self.decoding.validate(self.gpt.config.grid_size())?;
        let gpt = self.gpt;
        let cfg = &gpt.config;
        let device = gpt.device();
        let b = requests.len();
        let t = cfg.cls_token_num;
        let v = cfg.vocab_size;
        let total = cfg.block_size;
        let detail = observer.detail();
        let use_cfg = requests.iter().any(|r| r.params.cfg_scale > 1.0);
        let rows = if use_cfg { 2 * b } else { b };

        let (cond, masks) = self.condition(requests, &device);
        let cond = if use_cfg {
            Condition::cat(cond.clone(), gpt.null_condition(&cond))
        } else {
            cond
        };
        // ZipAR writes a stand-in entry for the start of each row.
        let extra = match self.decoding {
            Decoding::Zipar { .. } => cfg.grid_size(),
            _ => 0,
        };
        let mut cache = gpt.new_cache_sized(rows, extra, CacheLayout::for_backend::<B>());
        if let Some(m) = masks {
            // The unconditional half uses the same caption masks (official generate()).
            cache.mask_captions(if use_cfg {
                Tensor::cat(vec![m.clone(), m], 0)
            } else {
                m
            });
        }

        let mut samplers: Vec<TokenSampler> = requests
            .iter()
            .map(|r| TokenSampler::new(r.params))
            .collect();
        let mut tokens: Vec<Vec<u32>> = requests.iter().map(|r| r.prefix.clone()).collect();
        let mut probs: Vec<Vec<f32>> = vec![vec![f32::NAN; prefix_len]; b];
        let mut entropy: Vec<Vec<f32>> = vec![vec![f32::NAN; prefix_len]; b];
        let mut cancelled = false;

        // Prefill the condition, then feed any kept prefix in one step.
        let logits = gpt.prefill(&cond, &mut cache);
        let mut last = logits.slice([0..rows, t - 1..t, 0..v]);
        let mut passes = 1;
        if prefix_len > 0 {
            let mut ids = Vec::with_capacity(rows * prefix_len);
            for _ in 0..rows / b {
                for r in requests {
                    ids.extend(r.prefix.iter().map(|&x| x as i64));
                }
            }
            let prefix =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, prefix_len]), &device);
            let out = gpt.decode(prefix, t, &mut cache);
            last = out.slice([0..rows, prefix_len - 1..prefix_len, 0..v]);
            passes += 1;
        }

        if self.decoding != Decoding::Sequential {
            let run = Run {
                gpt,
                cache,
                last,
                requests,
                use_cfg,
                prefix_len,
                detail,
                passes,
            };
            return Ok(match self.decoding {
                Decoding::Sjd { window } => sjd::run(run, window, observer, cancel),
                Decoding::Zipar { window } => zipar::run(run, window, observer, cancel),
                Decoding::Sequential => unreachable!("handled below"),
            });
        }
        // The pass that filled the cache gave the first token's logits.
        passes -= 1;

        // GPU backends: tokens drawn on the device and fed straight back; only each step's
        // (token, probability, entropy) comes back, read while the next step is queued.
        // Observers that want the logits get the host sampler.
        let device_sampler = (!detail.logits
            && cache.layout == CacheLayout::Fixed
            && DeviceSampler::<B>::supported())
        .then(|| {
            let params: Vec<SamplerParams> = requests.iter().map(|r| r.params).collect();
            DeviceSampler::<B>::new(&params, v, &device)
        });
        let sampling = if device_sampler.is_some() {
            TokenSampling::Device
        } else {
            TokenSampling::Host
        };
        if let Some(sampler) = device_sampler {
            let bias = crate::kernels::key_bias(&cache.allowed);
            let mut last = last.reshape([rows, v]);
            let mut record = |index: usize, host: Vec<f32>, passes: usize| {
                HOST_READS.fetch_add(1, Ordering::Relaxed);
                let mut step_probs = Vec::with_capacity(b);
                let mut step_entropy = Vec::with_capacity(b);
                for i in 0..b {
                    tokens[i].push(host[i * 3] as u32);
                    probs[i].push(host[i * 3 + 1]);
                    entropy[i].push(host[i * 3 + 2]);
                    step_probs.push(host[i * 3 + 1]);
                    step_entropy.push(host[i * 3 + 2]);
                }
                observer.on_token(&TokenEvent {
                    index,
                    total,
                    tokens: &tokens,
                    probs: detail.confidence.then_some(&step_probs[..]),
                    entropy: detail.confidence.then_some(&step_entropy[..]),
                    logits: None,
                    passes,
                });
            };
            // Each step: draw on the device, request the draw's (token, probability, entropy)
            // at once, queue the next decode step behind it, then wait for the read: the GPU
            // runs the draw while the host queues the step.
            for index in prefix_len..total {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    cancelled = true;
                    break;
                }
                let draw = sampler
                    .sample(last.clone(), index, use_cfg)
                    .expect("device sampler supported");
                let read = crate::kernels::PendingRead::start(draw.info);
                passes += 1;
                if index + 1 < total {
                    last = gpt.decode_fused(draw.ids, t + index, &mut cache, &bias);
                }
                record(index, read.wait(), passes);
            }
        } else {
            for index in prefix_len..total {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    cancelled = true;
                    break;
                }
                let host = read_logits(last.clone());
                passes += 1;
                let mut step_logits: Vec<Vec<f32>> = Vec::with_capacity(b);
                let mut step_probs = Vec::with_capacity(b);
                let mut step_entropy = Vec::with_capacity(b);
                let mut next = Vec::with_capacity(rows);
                for (i, sampler) in samplers.iter_mut().enumerate() {
                    let row = |r: usize| &host[r * v..(r + 1) * v];
                    let combined =
                        guided(&sampler.params, index, row(i), use_cfg.then(|| row(b + i)));
                    let choice = sampler.sample(&combined);
                    tokens[i].push(choice.token as u32);
                    probs[i].push(choice.prob);
                    entropy[i].push(choice.entropy);
                    step_probs.push(choice.prob);
                    step_entropy.push(choice.entropy);
                    next.push(choice.token as i64);
                    if detail.logits {
                        step_logits.push(combined);
                    }
                }
                observer.on_token(&TokenEvent {
                    index,
                    total,
                    tokens: &tokens,
                    probs: detail.confidence.then_some(&step_probs[..]),
                    entropy: detail.confidence.then_some(&step_entropy[..]),
                    logits: detail.logits.then_some(&step_logits[..]),
                    passes,
                });
                if index + 1 == total {
                    break;
                }
                if use_cfg {
                    next.extend_from_within(..);
                }
                let input =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(next, [rows, 1]), &device);
                last = gpt.decode(input, t + index, &mut cache);
            }
        }
        Ok(Generation {
            tokens,
            probs,
            entropy,
            cancelled,
            sampling,
            forward_passes: passes,
        })
    }
}

/// The logits a sample draws token `index` from: `uncond + (cond − uncond) · scale` while its
/// guidance is on (official `generate()`), else the conditional row.
pub(crate) fn guided(
    params: &SamplerParams,
    index: usize,
    cond: &[f32],
    uncond: Option<&[f32]>,
) -> Vec<f32> {
    match uncond {
        Some(uncond) if params.cfg_active(index) => uncond
            .iter()
            .zip(cond)
            .map(|(&u, &c)| u + (c - u) * params.cfg_scale)
            .collect(),
        _ => cond.to_vec(),
    }
}

/// A pass's logits on the host in f32, row-major, counted in [`HOST_READS`].
pub(crate) fn read_logits<B: Backend, const D: usize>(logits: Tensor<B, D>) -> Vec<f32> {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits")
}

/// Decodes finished token grids to images `[batch, 3, H, W]` (roughly in [−1, 1]).
pub fn decode_tokens<B: Backend>(
    vq: &VqModel<B>,
    tokens: &[Vec<u32>],
    grid: usize,
) -> Tensor<B, 4> {
    let device = vq.quant_conv.weight.device();
    let b = tokens.len();
    let ids: Vec<i64> = tokens
        .iter()
        .flat_map(|t| t.iter().map(|&x| x as i64))
        .collect();
    let indices = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, grid * grid]), &device);
    vq.decode_code(indices, grid, grid)
}
