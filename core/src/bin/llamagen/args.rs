//! The options several subcommands share (models, sampler, backend, precision) and the
//! backend dispatch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use llamagen::backend::{BackendKind, wgpu_adapter};
use llamagen::bundle::{BundleError, Demo, LoadOptions, ModelBundle};
use llamagen::config::ModelType;
use llamagen::error::CheckpointError;
use llamagen::precision::Precision;
use llamagen::quant::Quantize;
use llamagen::sampling::SamplerParams;
use llamagen::text::{CaptionFeatures, T5Precision};

use crate::common::{Plan, PlanCondition, encode_prompts};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// wgpu when a GPU adapter is available, else the CPU.
    Auto,
    /// Vulkan / Metal / DX12 through wgpu.
    Wgpu,
    /// The CPU (burn-flex: SIMD kernels, all cores).
    Cpu,
    /// NVIDIA GPUs (builds with `--features cuda`).
    Cuda,
}

/// `--precision`: the generator's weights' float type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// The fastest this device runs: bf16 on CUDA, f16 on a GPU with SHADER_F16 through wgpu
    /// and on an x86-64 CPU with F16C, else f32 (the choice is printed).
    Auto,
    /// Full precision (the reference).
    F32,
    /// Half the weights' memory; wgpu (with SHADER_F16), CUDA and the CPU.
    F16,
    /// Half the weights' memory, f32's range; CUDA and the CPU.
    Bf16,
}

impl PrecisionArg {
    /// The precision named, `None` for `auto`.
    pub fn exact(self) -> Option<Precision> {
        match self {
            PrecisionArg::Auto => None,
            PrecisionArg::F32 => Some(Precision::F32),
            PrecisionArg::F16 => Some(Precision::F16),
            PrecisionArg::Bf16 => Some(Precision::Bf16),
        }
    }

    pub fn of(p: Precision) -> Self {
        match p {
            Precision::F32 => PrecisionArg::F32,
            Precision::F16 => PrecisionArg::F16,
            Precision::Bf16 => PrecisionArg::Bf16,
        }
    }
}

/// `--quantize`: how the generator's linear layers are held.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantizeArg {
    /// In the precision's float type.
    None,
    /// 8-bit values with one f16 scale per 32 weights (about a quarter of f32's memory).
    Q8,
    /// 4-bit values with one f16 scale per 32 weights (about an eighth of f32's memory on a
    /// GPU; the CPU backend keeps one byte a value).
    Q4,
}

impl From<QuantizeArg> for Quantize {
    fn from(q: QuantizeArg) -> Self {
        match q {
            QuantizeArg::None => Quantize::None,
            QuantizeArg::Q8 => Quantize::Q8,
            QuantizeArg::Q4 => Quantize::Q4,
        }
    }
}

/// How a written file stores its float tensors.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoredFloatArg {
    /// Four bytes a value, as trained.
    F32,
    /// IEEE half precision: two bytes a value, 11 significant bits, finite up to ±65504.
    F16,
    /// bfloat16: two bytes a value, f32's range, 8 significant bits.
    Bf16,
}

impl From<StoredFloatArg> for llamagen::checkpoint::StoredFloat {
    fn from(s: StoredFloatArg) -> Self {
        match s {
            StoredFloatArg::F32 => Self::F32,
            StoredFloatArg::F16 => Self::F16,
            StoredFloatArg::Bf16 => Self::BF16,
        }
    }
}

impl QuantizeArg {
    pub fn of(q: Quantize) -> Self {
        match q {
            Quantize::None => QuantizeArg::None,
            Quantize::Q8 => QuantizeArg::Q8,
            Quantize::Q4 => QuantizeArg::Q4,
        }
    }
}

/// The precision `arg` stands for on backend `B`: `auto` is resolved (and said), an explicit
/// one is checked against the device.
pub fn resolve_precision<B: Backend>(arg: PrecisionArg, device: &B::Device) -> Result<Precision> {
    let Some(explicit) = arg.exact() else {
        let p = Precision::auto::<B>(device);
        eprintln!(
            "precision: auto chose {p} on {}",
            llamagen::precision::backend_name::<B>()
        );
        return Ok(p);
    };
    explicit
        .check::<B>(device)
        .map_err(|e| anyhow!("{e}\nhint: --precision auto picks what this device runs fastest"))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum T5PrecisionArg {
    Auto,
    F32,
    Bf16,
    F16,
}

impl From<T5PrecisionArg> for T5Precision {
    fn from(p: T5PrecisionArg) -> Self {
        match p {
            T5PrecisionArg::Auto => T5Precision::Auto,
            T5PrecisionArg::F32 => T5Precision::F32,
            T5PrecisionArg::Bf16 => T5Precision::Bf16,
            T5PrecisionArg::F16 => T5Precision::F16,
        }
    }
}

/// Which generator and tokenizer, how they are held, and where they run (`generate`, `sample`).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Generator checkpoint: official .pt (c2i_B_256.pt …) or .safetensors.
    #[arg(long)]
    pub gpt_ckpt: Option<PathBuf>,
    /// Tokenizer checkpoint: official .pt (vq_ds16_c2i.pt) or .safetensors.
    #[arg(long)]
    pub vq_ckpt: Option<PathBuf>,
    /// Generator size when the weights do not say it (GPT-B, GPT-L, GPT-XL, …).
    #[arg(long)]
    pub gpt_model: Option<String>,
    /// Attention heads, for a generator width that is not a named size.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Image size in pixels (default: from the file name, e.g. c2i_L_384.pt → 384, else 256).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Take the `ema` weights of training checkpoints when present.
    #[arg(long)]
    pub ema: bool,
    /// Float type of the generator's weights, and on GPUs the tokenizer's. On GPUs the
    /// arithmetic follows (norms, RoPE, attention scores, softmaxes and logits stay f32); on the
    /// CPU the generator's weights alone are held in half and widened in the products, and the
    /// tokenizer stays f32. Default: f32, or the precision recorded in the --from PNG.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Quantize the generator's linear layers as they load (weights only; activations stay in
    /// the precision). Default: none, or what the --from PNG records.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// The FLAN-T5 model folder of text-conditional models (Hugging Face layout: config.json,
    /// model.safetensors or its shards or pytorch_model*.bin, tokenizer.json), e.g. a download
    /// of google/flan-t5-xl. Freed once the prompts are encoded. Default: the folder the
    /// model's card names (the bundled text demo model has its own small encoder).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Precision of the T5 text encoder's weights: auto = bf16 where the backend computes in
    /// it, else f16, else f32 (half the memory of f32: FLAN-T5-XL's encoder takes 2.45 GB
    /// instead of 4.89 GB).
    #[arg(long, value_enum, default_value_t = T5PrecisionArg::Auto)]
    pub t5_precision: T5PrecisionArg,
    /// Decode images in tiles of N×N tokens (overlapping by a quarter, blended), so that large
    /// images decode in the memory of one tile. Each tile is normalised on its own: the result
    /// is close to, not equal to, a whole decode. Default: whole images.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub vq_tile: Option<u32>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// The sampler options; each one not given keeps the model card's value (`generate`, `sample`).
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// Classifier-free guidance scale (1 = off). Default: the model card's (the bundled demo
    /// models: 4), else the official sampler's 4.
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f32>,
    /// Decode step after which guidance stops (−1 = never). Default: the model card's, else −1.
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_interval: Option<i32>,
    /// Sampling temperature (> 0). Default: the model card's, else 1.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0 = all; values above the vocabulary keep all). Default:
    /// the model card's (the bundled demo models: 0), else the official sampler's 2000.
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Nucleus sampling mass in (0, 1] (1 = off). Default: the model card's, else 1.
    #[arg(long)]
    pub top_p: Option<f32>,
}

impl SamplerArgs {
    /// The sampler options given on the command line, written over `params`.
    pub fn apply(&self, params: &mut SamplerParams) {
        if let Some(v) = self.cfg_scale {
            params.cfg_scale = v;
        }
        if let Some(v) = self.cfg_interval {
            params.cfg_interval = v;
        }
        if let Some(v) = self.temperature {
            params.temperature = v;
        }
        if let Some(v) = self.top_k {
            params.top_k = v.max(0) as usize;
        }
        if let Some(v) = self.top_p {
            params.top_p = v;
        }
    }
}

impl SamplerArgs {
    /// Refuses a top-k larger than the model's vocabulary (once the model is known).
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        if let Some(k) = self.top_k.filter(|&k| k as usize > vocab) {
            bail!(
                "--top-k {k} is more than the model's {vocab} image tokens\nhint: pass at most {vocab}, or 0 to keep every token"
            );
        }
        Ok(())
    }

    /// Refuses what no model takes (before any model is loaded).
    pub fn check(&self) -> Result<()> {
        if let Some(k) = self.top_k.filter(|&k| k < 0) {
            bail!("--top-k must be ≥ 0 (0 keeps every token), got {k}");
        }
        Ok(())
    }
}

impl ModelArgs {
    /// Refuses a generator without its tokenizer or the other way round.
    pub fn check_pair(&self) -> Result<()> {
        if self.gpt_ckpt.is_some() != self.vq_ckpt.is_some() {
            bail!(
                "pass both --gpt-ckpt and --vq-ckpt (official .pt files such as c2i_B_256.pt and vq_ds16_c2i.pt, or .safetensors), or neither for the bundled demo model"
            );
        }
        Ok(())
    }

    /// Loads the pair given (the bundled demo `demo` when none is) and says what was loaded.
    pub fn load<B: Backend>(
        &self,
        demo: Demo,
        kind: BackendKind,
        device: &B::Device,
    ) -> Result<ModelBundle<B>> {
        let opts = LoadOptions {
            gpt_model: self.gpt_model.clone(),
            image_size: self.image_size,
            n_head: self.n_head,
            ema: self.ema,
            precision: resolve_precision::<B>(self.precision.unwrap_or(PrecisionArg::F32), device)?,
            quantize: self.quantize.map(Into::into).unwrap_or_default(),
        };
        let t0 = Instant::now();
        let mut bundle = load_bundle_or_demo::<B>(
            self.gpt_ckpt.as_deref(),
            self.vq_ckpt.as_deref(),
            demo,
            &opts,
            device,
        )?;
        bundle.vq.set_decode_tile(self.vq_tile.map(|t| t as usize));
        if let Some(asked) = self.image_size
            && asked != bundle.image_size
        {
            bail!(
                "--image-size {asked} does not fit these models: the generator's {g}×{g} token grid decodes to {} px\nhint: leave --image-size out, or pass --image-size {}",
                bundle.image_size,
                bundle.image_size,
                g = bundle.gpt.config.grid_size()
            );
        }
        let cfg = &bundle.gpt.config;
        let held = match bundle.gpt.quantization() {
            Quantize::None => bundle.gpt.precision().to_string(),
            q => format!("{}, linear layers {q}", bundle.gpt.precision()),
        };
        eprintln!(
            "loaded {} ({:.1}M parameters, {held}, {:.0} MB) and a {}-level tokenizer on {} in {:.1}s; {}×{} tokens → {} px",
            bundle.description(),
            cfg.num_params() as f64 / 1e6,
            bundle.gpt.weight_bytes() as f64 / 1e6,
            bundle.vq.config.encoder_ch_mult.len(),
            kind.name(),
            t0.elapsed().as_secs_f64(),
            cfg.grid_size(),
            cfg.grid_size(),
            bundle.image_size
        );
        Ok(bundle)
    }

    /// The T5 features of every prompt of `plans` (none for a class model, or when no plan has a
    /// prompt): `--t5`, else the folder the model's card names.
    pub(crate) fn captions<B: Backend>(
        &self,
        bundle: &ModelBundle<B>,
        plans: &[Plan],
        batch_size: usize,
        device: &B::Device,
    ) -> Result<std::collections::HashMap<String, CaptionFeatures>> {
        let prompts: Vec<String> = plans
            .iter()
            .filter_map(|p| match &p.condition {
                PlanCondition::Prompt(s) => Some(s.clone()),
                PlanCondition::Class(_) => None,
            })
            .collect();
        if bundle.gpt.config.model_type != ModelType::T2i || prompts.is_empty() {
            return Ok(Default::default());
        }
        let t5 = self.t5.as_deref().or(bundle.t5_dir.as_deref());
        encode_prompts::<B>(
            t5,
            self.t5_precision.into(),
            batch_size,
            &prompts,
            &bundle.gpt.config,
            device,
        )
    }
}

pub fn resolve_backend(arg: BackendArg) -> Result<BackendKind> {
    match arg {
        BackendArg::Cpu => Ok(BackendKind::Cpu),
        BackendArg::Wgpu => {
            if !cfg!(feature = "wgpu") {
                bail!(
                    "this build has no wgpu backend; rebuild with the default features or use --backend cpu"
                );
            }
            match wgpu_adapter() {
                None => bail!(
                    "no GPU adapter found for wgpu (install a Vulkan driver, e.g. mesa-vulkan-drivers); use --backend cpu"
                ),
                Some(adapter) if adapter.software => eprintln!(
                    "note: wgpu runs on a software adapter ({}): --backend cpu is many times faster",
                    adapter.name
                ),
                Some(_) => {}
            }
            Ok(BackendKind::Wgpu)
        }
        BackendArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("this build has no CUDA backend; rebuild with `--features cuda`");
            }
            Ok(BackendKind::Cuda)
        }
        BackendArg::Auto => match wgpu_adapter() {
            Some(adapter) if !adapter.software => Ok(BackendKind::Wgpu),
            Some(adapter) => {
                eprintln!(
                    "only a software graphics adapter ({}) was found: running on the CPU \
                         (--backend wgpu would use it anyway)",
                    adapter.name
                );
                Ok(BackendKind::Cpu)
            }
            None => {
                eprintln!("no GPU adapter found: running on the CPU");
                Ok(BackendKind::Cpu)
            }
        },
    }
}

/// Runs `$body` with `B` bound to the chosen backend type and `device` to its device.
macro_rules! with_backend {
    ($kind:expr, |$device:ident: $b:ident| $body:expr) => {{
        match $kind {
            llamagen::backend::BackendKind::Cpu => {
                type $b = llamagen::backend::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            llamagen::backend::BackendKind::Wgpu => {
                type $b = llamagen::backend::Wgpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            llamagen::backend::BackendKind::Cuda => {
                type $b = llamagen::backend::Cuda;
                let $device = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!("backend {} is not in this build", other.name()),
        }
    }};
}

#[cfg_attr(not(feature = "train"), allow(unused_imports))]
pub(crate) use with_backend;

const INFER_HINT: &str = "--gpt-model, --n-head and --image-size override what cannot be inferred";

/// What a person can do about a checkpoint that did not open: a file that cannot be read at all
/// needs another file; one that reads but does not fit needs the options that override the
/// inferred configuration.
fn checkpoint_hint(e: &CheckpointError) -> &'static str {
    match e {
        CheckpointError::NotFound(_) => "check the path (--gpt-ckpt, --vq-ckpt)",
        CheckpointError::Io { .. }
        | CheckpointError::Unreadable { .. }
        | CheckpointError::NoWeights { .. }
        | CheckpointError::TensorData { .. }
        | CheckpointError::Dtype { .. } => {
            "the file is not a checkpoint this tool can read: check that it is a LlamaGen .pt or \
             .safetensors file and that its download finished"
        }
        _ => INFER_HINT,
    }
}

/// The bundled demo model `demo` when no checkpoints are given; a project model through its
/// card when one sits beside the generator file; otherwise an official pair, config inferred.
pub fn load_bundle_or_demo<B: Backend>(
    gpt: Option<&Path>,
    vq: Option<&Path>,
    demo: Demo,
    opts: &LoadOptions,
    device: &B::Device,
) -> Result<ModelBundle<B>> {
    ModelBundle::<B>::open_or_demo(gpt, vq, demo, opts, device).map_err(|e| match &e {
        BundleError::Gpt { source, .. } | BundleError::Vq { source, .. } => {
            anyhow!("{e}\nhint: {}", checkpoint_hint(source))
        }
        BundleError::Mismatch(_) => anyhow!("{e}\nhint: {INFER_HINT}"),
        BundleError::NoDemo | BundleError::NoTextDemo => {
            anyhow!("no checkpoints given and {e}\nhint: pass --gpt-ckpt and --vq-ckpt")
        }
        other => anyhow!("{other}"),
    })
}
