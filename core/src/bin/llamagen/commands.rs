//! The generate / info / convert / bench commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::decoding::DecodeArgs;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use llamagen::backend::{BackendKind, wgpu_adapter};
use llamagen::bundle::{BundleError, Demo, LoadOptions, ModelBundle, ModelCard};
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::config::{GptConfig, ModelType};
use llamagen::generate::{Decoding, Generator, Observer, Request, TokenEvent, decode_tokens};
use llamagen::image_io::{
    PngRecord, SampleRecord, image_to_tensor, make_grid, next_file_number, read_png_record,
    sample_file_name, save_png, tensor_to_images,
};
use llamagen::precision::Precision;
use llamagen::quant::Quantize;
use llamagen::sampling::{SamplerParams, TokenSampling};
use llamagen::text::{CaptionFeatures, T5Folder, T5Precision, TextEncoder, TextError};
use llamagen::vq::VqModel;
use serde_json::json;

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
    /// Float type of the generator's weights. On GPUs the arithmetic follows (norms, RoPE,
    /// attention scores and logits stay f32); on the CPU the weights alone are held in half and
    /// widened in the products. Default: f32, or the precision recorded in the --from PNG.
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

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Class to generate: an id or a name (ImageNet names for the official models, case-insensitive);
    /// repeat for several classes.
    #[arg(long = "class", short = 'c')]
    pub classes: Vec<String>,
    /// Text prompt for a text-conditional (t2i) model; repeat for several prompts. With no
    /// checkpoints, the bundled text demo model ("a red star on a blue background"); official
    /// t2i models need --t5.
    #[arg(long = "prompt", short = 'p')]
    pub prompts: Vec<String>,
    /// A file of prompts, one a line (blank lines and lines starting with '#' are skipped).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the first image; image i uses seed + i. Random when not given (and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images per class.
    #[arg(long, default_value_t = 1)]
    pub num: usize,
    /// Images generated together in one batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output PNG: all images in one grid (replaced if it exists). Default: samples.png, or
    /// samples-1.png, samples-2.png, … when that is taken: a run without --out never replaces
    /// an earlier one's.
    #[arg(long, conflicts_with = "out_dir")]
    pub out: Option<PathBuf>,
    /// Output folder: one PNG per image, named NUMBER-CLASS-seedSEED.png; the numbers go on
    /// from the highest already in the folder, so no earlier image is replaced. Each batch is
    /// written as soon as it is done: a run stopped half-way keeps what it finished.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Images per row of the grid (default: about square).
    #[arg(long)]
    pub per_row: Option<usize>,
    /// Reproduce the image(s) of a PNG written by llamagen (its parameters, models and seeds).
    /// Sampler options given beside it replace the PNG's: the same seed at another guidance
    /// scale, say.
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
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
        let bundle = load_bundle_or_demo::<B>(
            self.gpt_ckpt.as_deref(),
            self.vq_ckpt.as_deref(),
            demo,
            &opts,
            device,
        )?;
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
            BackendKind::Cpu => {
                type $b = llamagen::backend::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                type $b = llamagen::backend::Wgpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                type $b = llamagen::backend::Cuda;
                let $device = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => bail!("backend {} is not in this build", other.name()),
        }
    }};
}
#[cfg_attr(not(feature = "train"), allow(unused_imports))]
pub(crate) use with_backend;

/// The progress bar: tokens/s and ETA on a terminal, nothing otherwise.
pub(crate) fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, ETA {{eta}})"
        ))
        .expect("valid template"),
    );
    bar
}

pub(crate) struct BarObserver<'a> {
    pub bar: &'a ProgressBar,
}

impl Observer for BarObserver<'_> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self.bar.inc(event.tokens.len() as u64);
    }
}

/// What one planned image is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PlanCondition {
    Class(usize),
    Prompt(String),
}

/// One image to make: its condition and settings, and where it lands in the output.
#[derive(Clone)]
pub(crate) struct Plan {
    pub condition: PlanCondition,
    pub params: SamplerParams,
    pub index: usize,
    /// Where a --from record's tokens were drawn.
    pub recorded: Option<TokenSampling>,
}

/// The prompts of a --prompt-file: one a line, blank lines and `#` comments skipped.
pub(crate) fn read_prompt_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompt file {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        bail!("the prompt file {} holds no prompts", path.display());
    }
    Ok(prompts)
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let mut args = args;
    let mut plans = Vec::new();
    let mut recorded = None;
    if let Some(png) = args.from.clone() {
        let record = read_png_record(&png)?;
        let first = record
            .samples
            .first()
            .ok_or_else(|| anyhow!("{} holds no samples", png.display()))?;
        // A bundled demo model is found in this machine's assets (the record names it by its
        // place there); any other model by its recorded path.
        let bundled = llamagen::bundle::is_bundled(&first.gpt);
        if args.model.gpt_ckpt.is_none() && !bundled {
            args.model.gpt_ckpt = Some(PathBuf::from(&first.gpt.path));
        }
        if args.model.vq_ckpt.is_none() && !bundled {
            args.model.vq_ckpt = Some(PathBuf::from(&first.vq.path));
        }
        args.model.image_size.get_or_insert(first.image_size);
        if args.model.n_head.is_none() {
            args.model.n_head = first.n_head;
        }
        args.model
            .precision
            .get_or_insert(PrecisionArg::of(first.precision));
        args.model
            .quantize
            .get_or_insert(QuantizeArg::of(first.quantize));
        recorded = Some(first.decoding);
        for s in &record.samples {
            let condition = match (&s.prompt, s.class) {
                (Some(p), _) => PlanCondition::Prompt(p.clone()),
                (None, Some(c)) => PlanCondition::Class(c),
                (None, None) => bail!(
                    "{}: sample {} has neither a class nor a prompt",
                    png.display(),
                    s.index
                ),
            };
            let mut params = s.params;
            args.sampler.apply(&mut params);
            plans.push(Plan {
                condition,
                params,
                index: s.index,
                recorded: Some(s.sampling),
            });
        }
        eprintln!(
            "reproducing {} image(s) from {}",
            plans.len(),
            png.display()
        );
    }
    if let Some(file) = &args.prompt_file {
        let more = read_prompt_file(file)?;
        args.prompts.extend(more);
    }
    args.sampler.check()?;
    if args.batch_size == 0 || args.num == 0 {
        bail!("--num and --batch-size must be at least 1");
    }
    args.model.check_pair()?;
    let kind = resolve_backend(args.model.backend)?;
    with_backend!(kind, |device: B| run_generate::<B>(
        &args, plans, recorded, kind, &device
    ))
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
    ModelBundle::<B>::open_or_demo(gpt, vq, demo, opts, device).map_err(|e| match e {
        BundleError::Gpt { .. } | BundleError::Vq { .. } | BundleError::Mismatch(_) => anyhow!(
            "{e}\nhint: --gpt-model, --n-head and --image-size override what cannot be inferred"
        ),
        BundleError::NoDemo | BundleError::NoTextDemo => {
            anyhow!("no checkpoints given and {e}\nhint: pass --gpt-ckpt and --vq-ckpt")
        }
        other => anyhow!("{other}"),
    })
}

fn run_generate<B: Backend>(
    args: &GenerateArgs,
    mut plans: Vec<Plan>,
    recorded: Option<Decoding>,
    kind: BackendKind,
    device: &B::Device,
) -> Result<()> {
    let wants_text = !args.prompts.is_empty()
        || plans
            .iter()
            .any(|p| matches!(p.condition, PlanCondition::Prompt(_)));
    let demo = if wants_text {
        Demo::Text
    } else {
        Demo::Classes
    };
    let bundle = args.model.load::<B>(demo, kind, device)?;
    args.sampler.check_vocab(bundle.gpt.config.vocab_size)?;
    let cfg = &bundle.gpt.config;
    let text_model = cfg.model_type == ModelType::T2i;
    if text_model && !args.classes.is_empty() {
        bail!(
            "{} is a text-conditional (t2i) model: give it --prompt (with --t5 DIR), not --class",
            bundle.gpt_file.path
        );
    }
    let has_prompts = !args.prompts.is_empty()
        || plans
            .iter()
            .any(|p| matches!(p.condition, PlanCondition::Prompt(_)));
    if !text_model && has_prompts {
        bail!(
            "{} is a class-conditional (c2i) model: give it --class, not --prompt",
            bundle.gpt_file.path
        );
    }
    if text_model && !plans.is_empty() && !has_prompts {
        bail!(
            "{} is a text-conditional (t2i) model, but the PNG's samples have classes, not prompts",
            bundle.gpt_file.path
        );
    }

    if plans.is_empty() {
        if text_model && args.prompts.is_empty() {
            bail!("pass at least one --prompt (or --prompt-file) for this text-conditional model");
        }
        if !text_model && args.classes.is_empty() {
            bail!("pass at least one --class (an id, or a name such as 'golden retriever')");
        }
        let seed = args.seed.unwrap_or_else(|| {
            let s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(0);
            eprintln!("seed: {s}");
            s
        });
        // The model's own defaults (its card's), then what the command line overrides.
        let mut base = SamplerParams {
            seed,
            ..bundle.sampler
        };
        args.sampler.apply(&mut base);
        base.validate()?;
        let mut conditions = Vec::new();
        for query in &args.classes {
            let class = bundle.class_names.resolve(query)?;
            if query.trim().parse::<usize>().is_err() {
                eprintln!(
                    "class '{query}' → {class} ({})",
                    bundle.class_names.name(class).unwrap_or("?")
                );
            }
            conditions.push(PlanCondition::Class(class));
        }
        conditions.extend(args.prompts.iter().cloned().map(PlanCondition::Prompt));
        let mut index = 0;
        for condition in conditions {
            for _ in 0..args.num {
                plans.push(Plan {
                    condition: condition.clone(),
                    params: SamplerParams {
                        seed: seed.wrapping_add(index as u64),
                        ..base
                    },
                    index,
                    recorded: None,
                });
                index += 1;
            }
        }
    }

    let decoding = args.decode.resolve(cfg.grid_size(), recorded)?;
    crate::decoding::announce(decoding);

    // Every input is checked now; the output is, before any time goes into encoding prompts
    // or sampling.
    check_output(args)?;

    // Text-conditional: every prompt encoded once with T5, which is then freed.
    let captions = args
        .model
        .captions(&bundle, &plans, args.batch_size, device)?;

    let generator = Generator::new(&bundle.gpt).with_decoding(decoding);
    let mut passes = 0;
    let total_tokens = (plans.len() * cfg.block_size) as u64;
    let bar = progress(total_tokens, "tokens");
    let mut images = Vec::with_capacity(plans.len());
    let mut records = Vec::with_capacity(plans.len());
    let t_gen = Instant::now();
    // With --out-dir every batch is written as soon as it is decoded: stopping a long run
    // (Ctrl+C) keeps what it finished.
    let mut next_number = args.out_dir.as_deref().map(next_file_number);
    for chunk in plans.chunks(args.batch_size) {
        let batch = make_batch(
            &bundle,
            &generator,
            chunk,
            &captions,
            &mut BarObserver { bar: &bar },
        )?;
        passes += batch.forward_passes;
        if let Some(r) = chunk
            .iter()
            .filter_map(|p| p.recorded)
            .find(|&r| r != batch.sampling)
        {
            bar.suspend(|| {
                eprintln!(
                    "note: the recorded image was drawn by {}, this run by {}: the same seed gives \
                     other tokens (remake it with --backend {})",
                    r.describe(),
                    batch.sampling.describe(),
                    match r {
                        TokenSampling::Host => "cpu",
                        TokenSampling::Device => "wgpu or --backend cuda",
                    }
                )
            });
        }
        images.extend(batch.images);
        records.extend(batch.records);
        if let (Some(dir), Some(n)) = (&args.out_dir, next_number.as_mut()) {
            let done = images.len() - chunk.len();
            for (img, rec) in images[done..].iter().zip(&records[done..]) {
                let path = dir.join(sample_file_name(*n, rec));
                save_png(&path, img, &PngRecord::new(vec![rec.clone()]))?;
                bar.suspend(|| println!("{}", path.display()));
                *n += 1;
            }
        }
    }
    bar.finish_and_clear();
    let secs = t_gen.elapsed().as_secs_f64();
    let batches = plans.len().div_ceil(args.batch_size);
    eprintln!(
        "generated {} image(s) in {secs:.1}s ({:.1} tokens/s; {:.1} forward passes per batch of {} tokens an image)",
        images.len(),
        total_tokens as f64 / secs,
        passes as f64 / batches as f64,
        cfg.block_size
    );

    if args.out_dir.is_none() {
        let path = args.out.clone().unwrap_or_else(default_out);
        let per_row = args
            .per_row
            .unwrap_or_else(|| (images.len() as f64).sqrt().ceil() as usize);
        let grid = if images.len() == 1 {
            images[0].clone()
        } else {
            make_grid(&images, per_row)
        };
        save_png(&path, &grid, &PngRecord::new(records))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// One batch made: its images and each one's record.
pub(crate) struct Batch {
    pub images: Vec<image::RgbImage>,
    pub records: Vec<SampleRecord>,
    pub forward_passes: usize,
    pub sampling: TokenSampling,
}

/// Generates the images of `chunk` in one batch with `generator` (its decoding) and decodes them
/// with the bundle's tokenizer; `captions` holds every prompt's T5 features.
pub(crate) fn make_batch<B: Backend>(
    bundle: &ModelBundle<B>,
    generator: &Generator<'_, B>,
    chunk: &[Plan],
    captions: &std::collections::HashMap<String, CaptionFeatures>,
    observer: &mut impl Observer,
) -> Result<Batch> {
    let cfg = &bundle.gpt.config;
    let requests: Vec<Request> = chunk
        .iter()
        .map(|p| match &p.condition {
            PlanCondition::Class(c) => Request::class(*c, p.params),
            PlanCondition::Prompt(s) => Request {
                condition: captions[s].condition(),
                params: p.params,
                prefix: Vec::new(),
            },
        })
        .collect();
    let out = generator.generate(&requests, observer, None)?;
    let pixels = decode_tokens(&bundle.vq, &out.tokens, cfg.grid_size());
    let images = tensor_to_images(pixels);
    let mut records = Vec::with_capacity(chunk.len());
    for (p, tokens) in chunk.iter().zip(out.tokens) {
        let (class, prompt) = match &p.condition {
            PlanCondition::Class(c) => (Some(*c), None),
            PlanCondition::Prompt(s) => (None, Some(s.clone())),
        };
        records.push(SampleRecord {
            gpt: bundle.gpt_file.clone(),
            vq: bundle.vq_file.clone(),
            model: bundle.description(),
            n_head: Some(cfg.n_head),
            image_size: bundle.image_size,
            class,
            class_name: class.and_then(|c| bundle.class_names.name(c).map(str::to_string)),
            prompt,
            params: p.params,
            index: p.index,
            tokens,
            sampling: out.sampling,
            precision: bundle.gpt.precision(),
            quantize: bundle.gpt.quantization(),
            decoding: generator.decoding,
        });
    }
    Ok(Batch {
        images,
        records,
        forward_passes: out.forward_passes,
        sampling: out.sampling,
    })
}

/// Checked before any image is generated, so that no generated image is lost to an output that
/// cannot be written: `--out` names a PNG, and the folder it goes to exists (or is made) and
/// takes a file.
fn check_output(args: &GenerateArgs) -> Result<()> {
    if let Some(out) = args
        .out
        .as_ref()
        .filter(|o| !o.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
    {
        bail!(
            "--out {}: llamagen writes PNG files (the parameters of every image travel in \
             their text chunks)\nhint: give a name ending in .png",
            out.display()
        );
    }
    let dir = match (&args.out_dir, &args.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(out)) => folder_of(out),
        (None, None) => PathBuf::from("."),
    };
    ensure_writable_folder(&dir)
}

/// The folder a file goes to (`.` for a bare name).
pub fn folder_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Makes `dir` when it is missing and checks that it takes a file (one written and removed).
pub fn ensure_writable_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the output folder {}", dir.display()))?;
    let probe = dir.join(format!(".llamagen-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write into the output folder {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `samples.png`, or the first of `samples-1.png`, `samples-2.png`, … not taken yet.
fn default_out() -> PathBuf {
    std::iter::once(PathBuf::from("samples.png"))
        .chain((1..).map(|i| PathBuf::from(format!("samples-{i}.png"))))
        .find(|p| !p.exists())
        .expect("an unbounded sequence of names")
}

/// Loads the T5 folder of `--t5` (its width checked against the generator's captions before
/// the weights are read), encodes every distinct prompt once, and frees the encoder.
pub(crate) fn encode_prompts<B: Backend>(
    t5: Option<&Path>,
    t5_precision: T5Precision,
    batch_size: usize,
    prompts: &[String],
    cfg: &GptConfig,
    device: &B::Device,
) -> Result<std::collections::HashMap<String, CaptionFeatures>> {
    let dir = t5.ok_or_else(|| {
        anyhow!(
            "this text-conditional model needs the FLAN-T5 text encoder: pass --t5 DIR, a Hugging Face \
             model folder (config.json, model.safetensors or shards, tokenizer.json) such as google/flan-t5-xl"
        )
    })?;
    let folder = T5Folder::open(dir)?;
    if folder.config.d_model != cfg.caption_dim {
        return Err(TextError::CaptionDim {
            t5_dim: folder.config.d_model,
            caption_dim: cfg.caption_dim,
        })
        .with_context(|| format!("T5 folder {}", dir.display()));
    }
    let t0 = Instant::now();
    let mut encoder =
        TextEncoder::<B>::from_folder_as(&folder, cfg.cls_token_num, t5_precision, device)?;
    if let Some((dtype, bytes)) = encoder.weights() {
        eprintln!(
            "text encoder {}: {:?} weights, {:.1} MB",
            dir.display(),
            dtype,
            bytes as f64 / 1e6
        );
    }
    let mut distinct: Vec<String> = Vec::new();
    for p in prompts {
        if !distinct.contains(p) {
            distinct.push(p.clone());
        }
    }
    let mut out = std::collections::HashMap::new();
    for chunk in distinct.chunks(batch_size.max(1)) {
        for (prompt, f) in chunk.iter().zip(encoder.encode_batch(chunk)?) {
            let full = encoder.tokenizer.token_ids(&f.cleaned).map(|t| t.len() + 1);
            let note = match full {
                Ok(n) if n > f.tokens => format!(" (truncated from {n})"),
                _ => String::new(),
            };
            eprintln!(
                "prompt {prompt:?} → {:?}: {} tokens{note}",
                f.cleaned, f.tokens
            );
            out.insert(prompt.clone(), f);
        }
    }
    encoder.release_model();
    eprintln!(
        "encoded {} prompt(s) with T5 ({}, {} layers, d_model {}) in {:.1}s",
        distinct.len(),
        dir.display(),
        folder.config.num_layers,
        folder.config.d_model,
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

pub fn info(png: &Path, as_json: bool) -> Result<()> {
    let record = read_png_record(png)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!("{} ({})", png.display(), record.generator);
        println!("{}", record.summary());
    }
    Ok(())
}

pub fn convert(input: &Path, output: &Path, ema: bool, force: bool) -> Result<()> {
    if output.exists() {
        if !force || output.canonicalize().ok() == input.canonicalize().ok() {
            bail!(
                "{} exists{}\nhint: {}",
                output.display(),
                if force { " and is the input" } else { "" },
                if force {
                    "write the converted file under another name"
                } else {
                    "choose another output name, or pass --force to replace it"
                }
            );
        }
    }
    let choice = if ema {
        WeightsChoice::PreferEma
    } else {
        WeightsChoice::Model
    };
    let sd = StateDict::open(input, choice)?;
    let device = Default::default();
    let w = llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(&sd, &device);
    let tensors = sd
        .keys()
        .filter(|k| !llamagen::checkpoint::is_ignored_key(k))
        .map(|k| Ok((k.to_string(), w.data(k)?)))
        .collect::<Result<Vec<_>, llamagen::error::CheckpointError>>()?;
    // A stored configuration (this project's own files) travels with the weights.
    let metadata = (!sd.metadata.is_empty()).then(|| sd.metadata.clone().into_iter().collect());
    llamagen::checkpoint::write_safetensors(output, &tensors, metadata)?;
    eprintln!(
        "wrote {} tensors ({} weights) to {}",
        tensors.len(),
        sd.wrapper,
        output.display()
    );
    Ok(())
}

pub fn dataset_shapes(out: &Path, per_class: u64, seed: u64, size: u32) -> Result<()> {
    if size < 16 {
        bail!("--size must be at least 16 pixels");
    }
    let n = per_class * llamagen::dataset::SHAPE_CLASSES.len() as u64;
    let bar = progress(n, "images");
    llamagen::dataset::write_image_folder(out, per_class, seed, size, || bar.inc(1))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {n} images ({} classes × {per_class}, {size}×{size}, seed {seed}) to {}",
        llamagen::dataset::SHAPE_CLASSES.len(),
        out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct CardArgs {
    /// Generator: a train-gpt run folder (its latest checkpoint) or a .safetensors file.
    #[arg(long)]
    pub gpt: PathBuf,
    /// Tokenizer: a train-vq run folder or a .safetensors file.
    #[arg(long)]
    pub vq: PathBuf,
    /// Output folder: gpt.safetensors, vq.safetensors, model.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "llamagen-model")]
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Attention heads (only when --gpt is a file, not a run folder).
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Default guidance scale stored in the card.
    #[arg(long, default_value_t = 4.0)]
    pub cfg_scale: f32,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// A command that made the weights (repeatable), recorded for reproduction.
    #[arg(long = "trained-with")]
    pub trained_with: Vec<String>,
    /// Text encoder of a text-conditional generator: its T5 folder is copied to OUT/t5 and
    /// named in the card, so prompts work without --t5.
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Name a tokenizer file already in place, relative to OUT (e.g. ../demo/vq.safetensors),
    /// instead of copying --vq; it must hold the same weights.
    #[arg(long)]
    pub share_vq: Option<String>,
}

/// A run folder's latest checkpoint directory, or `None` for a plain file.
fn run_checkpoint(path: &Path) -> Result<Option<PathBuf>> {
    llamagen::bundle::run_folder_checkpoint(path)
        .map_err(|e| anyhow!("{}: not a training run folder ({e})", path.display()))
}

/// The `state.json` of a training checkpoint directory (step, configuration, options).
fn read_run_state(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn write_card(args: CardArgs) -> Result<()> {
    let (gpt_file, gpt_state) = match run_checkpoint(&args.gpt)? {
        Some(dir) => (dir.join("model.safetensors"), Some(read_run_state(&dir)?)),
        None => (args.gpt.clone(), None),
    };
    let vq_file = match run_checkpoint(&args.vq)? {
        Some(dir) => dir.join("model.safetensors"),
        None => args.vq.clone(),
    };
    let vq_sd = StateDict::open(&vq_file, WeightsChoice::Model)?;
    let vq_config = vq_sd.infer_vq_config()?;
    let (gpt_config, class_names, image_size) = match &gpt_state {
        Some(state) => {
            let cfg: GptConfig = serde_json::from_value(state["config"].clone())?;
            let names: Vec<String> = serde_json::from_value(state["extra"]["class_names"].clone())
                .unwrap_or_else(|_| (0..cfg.num_classes).map(|i| format!("class {i}")).collect());
            let size = cfg.grid_size() * vq_config.downsample();
            (cfg, names, size)
        }
        None => {
            let sd = StateDict::open(&gpt_file, WeightsChoice::Model)?;
            let hints = llamagen::checkpoint::GptHints {
                downsample: Some(vq_config.downsample()),
                n_head: args.n_head,
                ..Default::default()
            };
            let cfg = sd.infer_gpt_config(&hints)?;
            let names = (0..cfg.num_classes).map(|i| format!("class {i}")).collect();
            let size = cfg.grid_size() * vq_config.downsample();
            (cfg, names, size)
        }
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::copy(&gpt_file, args.out.join("gpt.safetensors"))
        .with_context(|| format!("copying {}", gpt_file.display()))?;
    let vq_name = match &args.share_vq {
        Some(rel) => {
            let shared = args.out.join(rel);
            let same = std::fs::read(&shared)
                .with_context(|| format!("--share-vq: cannot read {}", shared.display()))?
                == std::fs::read(&vq_file)
                    .with_context(|| format!("cannot read {}", vq_file.display()))?;
            if !same {
                bail!(
                    "--share-vq {rel}: {} does not hold the weights of {}",
                    shared.display(),
                    vq_file.display()
                );
            }
            rel.clone()
        }
        None => {
            std::fs::copy(&vq_file, args.out.join("vq.safetensors"))
                .with_context(|| format!("copying {}", vq_file.display()))?;
            "vq.safetensors".to_string()
        }
    };
    let t5_dir = match &args.t5 {
        Some(dir) => {
            let folder = T5Folder::open(dir)?;
            if folder.config.d_model != gpt_config.caption_dim
                || gpt_config.model_type != ModelType::T2i
            {
                bail!(
                    "--t5 {}: the generator is not a text-conditional model with {}-dimensional captions",
                    dir.display(),
                    folder.config.d_model
                );
            }
            let target = args.out.join("t5");
            std::fs::create_dir_all(&target)?;
            for file in ["config.json", "tokenizer.json", "model.safetensors"] {
                std::fs::copy(dir.join(file), target.join(file)).with_context(|| {
                    format!(
                        "copying {} (the card takes single-file T5 folders)",
                        dir.join(file).display()
                    )
                })?;
            }
            Some("t5".to_string())
        }
        None => None,
    };
    let card = ModelCard {
        name: args.name.clone(),
        description: args.description.clone(),
        gpt_file: "gpt.safetensors".into(),
        gpt_config,
        vq_file: vq_name,
        vq_config,
        image_size,
        class_names,
        sampler: SamplerParams {
            cfg_scale: args.cfg_scale,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            ..SamplerParams::default()
        },
        trained_with: args.trained_with.clone(),
        t5_dir,
    };
    let path = args.out.join("model.json");
    card.write(&path)?;
    // Check that it loads as a whole before saying so.
    ModelBundle::<llamagen::backend::Cpu>::from_card(&path, &Default::default())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReconstructArgs {
    /// Images (PNG or JPEG); each is resized (short side) and centre-cropped to --image-size.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Tokenizer checkpoint: official .pt (vq_ds16_c2i.pt …) or .safetensors. Default: the
    /// bundled demo model's tokenizer.
    #[arg(long)]
    pub vq_ckpt: Option<PathBuf>,
    /// Image side in pixels (a multiple of the tokenizer's downsampling). Default: the demo
    /// model's image size, the size a training run folder trained at, or 256 for another
    /// checkpoint.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Write `<name>-reconstruction.png` here: the input and its reconstruction side by side.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Print one JSON object per image instead of a line.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

pub fn reconstruct(args: ReconstructArgs) -> Result<()> {
    let kind = resolve_backend(args.backend)?;
    with_backend!(kind, |device: B| run_reconstruct::<B>(&args, &device))
}

/// Resize so the short side is `size` (Catmull-Rom), then take the centre square.
fn centre_square(img: &image::RgbImage, size: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let resized = image::imageops::resize(img, nw, nh, image::imageops::FilterType::CatmullRom);
    image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
}

/// Peak signal-to-noise ratio of two 8-bit images, in dB (infinite when identical).
fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let n = a.as_raw().len() as f64;
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / n;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

fn run_reconstruct<B: Backend>(args: &ReconstructArgs, device: &B::Device) -> Result<()> {
    let (vq_path, cfg, default_size) = match &args.vq_ckpt {
        Some(p) => {
            // A training run folder (or one of its step-N checkpoints) stands for its weights,
            // and its saved options give the size it trained at.
            let trained_size = llamagen::bundle::run_folder_checkpoint(p)
                .ok()
                .flatten()
                .and_then(|dir| read_run_state(&dir).ok())
                .and_then(|state| state["options"]["image_size"].as_u64());
            let p = llamagen::bundle::run_folder_weights(p);
            let sd = StateDict::open(&p, WeightsChoice::Model)
                .with_context(|| format!("tokenizer {}", p.display()))?;
            let cfg = sd
                .infer_vq_config()
                .with_context(|| format!("tokenizer {}", p.display()))?;
            (p, cfg, trained_size.map_or(256, |s| s as usize))
        }
        None => {
            let card_path = llamagen::bundle::demo_card_path()
                .ok_or_else(|| anyhow!("no --vq-ckpt given and {}", BundleError::NoDemo))?;
            let card = ModelCard::read(&card_path)?;
            let dir = card_path.parent().unwrap_or(Path::new("."));
            (dir.join(&card.vq_file), card.vq_config, card.image_size)
        }
    };
    let size = args.image_size.unwrap_or(default_size);
    let down = cfg.downsample();
    if size == 0 || size % down != 0 {
        bail!(
            "image size {size} is not a positive multiple of the tokenizer's downsampling {down}"
        );
    }
    let sd = StateDict::open(&vq_path, WeightsChoice::Model)
        .with_context(|| format!("tokenizer {}", vq_path.display()))?;
    let vq = VqModel::<B>::load(&sd, &cfg, device)
        .with_context(|| format!("tokenizer {}", vq_path.display()))?;
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let grid = size / down;
    let several = args.images.len() > 1;
    for (i, path) in args.images.iter().enumerate() {
        let img = image::open(path)
            .with_context(|| format!("cannot read the image {}", path.display()))?
            .to_rgb8();
        let input = centre_square(&img, size as u32);
        let (_, indices) = vq.encode(image_to_tensor::<B>(&input, device));
        let codes: Vec<i64> = indices
            .clone()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .map_err(|e| anyhow!("{e:?}"))?;
        let mut distinct = codes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let output = tensor_to_images(vq.decode_code(indices, grid, grid))
            .pop()
            .expect("one image");
        let db = psnr(&input, &output);
        if args.json {
            println!(
                "{}",
                json!({
                    "image": path.display().to_string(),
                    "image_size": size,
                    "grid": grid,
                    "psnr_db": db,
                    "distinct_codes": distinct.len(),
                    "codes": codes,
                })
            );
        } else {
            println!(
                "{}: {size} px, {grid}×{grid} tokens, {} distinct codes, PSNR {db:.2} dB",
                path.display(),
                distinct.len()
            );
        }
        if let Some(dir) = &args.out_dir {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "image".into());
            let pair = make_grid(&[input, output], 2);
            // Inputs from different folders may share a name: number them when there are several.
            let name = if several {
                format!("{i:04}-{stem}-reconstruction.png")
            } else {
                format!("{stem}-reconstruction.png")
            };
            let out = dir.join(name);
            pair.save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    Ok(())
}
