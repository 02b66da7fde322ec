//! What generate and sample share: progress, the plan of images, batches, prompts and output
//! folders.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use llamagen::bundle::ModelBundle;
use llamagen::config::GptConfig;
use llamagen::generate::{Generator, Observer, Request, TokenEvent, decode_tokens};
use llamagen::image_io::{SampleRecord, tensor_to_images};
use llamagen::sampling::{SamplerParams, TokenSampling};
use llamagen::text::{CaptionFeatures, T5Folder, T5Precision, TextEncoder, TextError};

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
            // Grids no larger than a tile decode whole.
            vq_tile: bundle.vq.decode_tile.filter(|&t| t < cfg.grid_size()),
        });
    }
    Ok(Batch {
        images,
        records,
        forward_passes: out.forward_passes,
        sampling: out.sampling,
    })
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
