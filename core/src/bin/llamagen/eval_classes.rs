//! `llamagen eval-classes`: how often generations show the class asked for.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use indicatif::ProgressBar;
use llamagen::config::ModelType;
use llamagen::dataset::SHAPE_CLASSES;
use llamagen::eval::classes;
use llamagen::generate::{Decoding, Generator};
use llamagen::sampling::SamplerParams;
use llamagen::train::classifier::ShapeClassifier;
use llamagen::vq::VqModel;

use crate::training::{load_vq, resolve_weights};

#[derive(Args, Debug)]
pub struct EvalClassesArgs {
    /// Classifier from `llamagen train-classifier`. Repeatable: every classifier scores the
    /// same samples, one report each. Default: the bundled one (`assets/eval/classifier.mpk`,
    /// trained on drawn images only), so that the figures of docs/demo-model.md can be checked
    /// as they are.
    #[arg(long)]
    pub classifier: Vec<PathBuf>,
    /// Generator (default: the bundled demo model).
    #[arg(long, requires = "vq_ckpt")]
    pub gpt_ckpt: Option<PathBuf>,
    /// Tokenizer of --gpt-ckpt; with --reconstructions it may come alone (only the tokenizer is
    /// measured then).
    #[arg(long)]
    pub vq_ckpt: Option<PathBuf>,
    /// Samples per class.
    #[arg(long, default_value_t = 50)]
    pub num: usize,
    /// Guidance scales to measure (repeatable).
    #[arg(long = "cfg-scale", default_values_t = vec![1.0f32, 2.0, 4.0])]
    pub cfg_scales: Vec<f32>,
    /// Sample i of class c is drawn with seed SEED + c·100003 + i, so two seeds less than --num
    /// apart share most of their samples: for an independent second draw, move it by --num or
    /// more.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Print the figures as JSON: an array with a row per guidance scale and classifier (with
    /// --reconstructions, a row per classifier).
    #[arg(long)]
    pub json: bool,
    /// Measure the bundled text-conditional demo model (when no checkpoints are given). A
    /// text-conditional model is asked with captions "a <colour> <shape> on a <colour>
    /// background" (colours drawn from the seed) and scored on the shape.
    #[arg(long)]
    pub text: bool,
    /// T5 folder of a text-conditional model (default: the one its card names).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Sampling temperature (default: the model card's).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k (0 = all tokens; default: the model card's).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p (default: the model card's).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Score the tokenizer instead of the generator: fresh procedural images (not the training
    /// set), encoded and decoded by the model's tokenizer, then classified; the originals are
    /// classified too. What the tokenizer loses bounds what the generator can show.
    #[arg(long)]
    pub reconstructions: bool,
    /// Image size for a tokenizer given alone (a model's card says its own).
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Float type of the generator's weights (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = crate::args::PrecisionArg::F32)]
    pub precision: crate::args::PrecisionArg,
    /// Quantization of the generator's linear layers (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = crate::args::QuantizeArg::None)]
    pub quantize: crate::args::QuantizeArg,
    #[command(flatten)]
    pub decode: crate::decoding::DecodeArgs,
}

/// The tokenizer's part of eval-classes: how often the classifier still recognises fresh
/// procedural images after a round trip through the tokenizer.
fn eval_reconstructions<B: Backend>(
    clfs: &[ShapeClassifier<B>],
    vq: &VqModel<B>,
    image_size: usize,
    args: &EvalClassesArgs,
    device: &B::Device,
) -> Result<()> {
    let counts = classes::reconstruction_accuracy(
        clfs,
        vq,
        image_size,
        args.num,
        args.batch_size,
        args.seed,
        device,
    );
    let n = SHAPE_CLASSES.len();
    let pct = |k: usize| k as f64 * 100.0 / args.num as f64;
    let all = |v: &[usize]| v.iter().sum::<usize>() as f64 * 100.0 / (args.num * n) as f64;
    let mut report = Vec::new();
    for (path, c) in args.classifier.iter().zip(&counts) {
        let (orig_ok, rec_ok) = (&c.original, &c.reconstruction);
        if args.json {
            let per: serde_json::Map<_, _> = SHAPE_CLASSES
                .iter()
                .enumerate()
                .map(|(c, name)| {
                    (
                        name.to_string(),
                        serde_json::json!({"original": pct(orig_ok[c]) / 100.0, "reconstruction": pct(rec_ok[c]) / 100.0}),
                    )
                })
                .collect();
            report.push(serde_json::json!({
                "classifier": path,
                "original": all(orig_ok) / 100.0,
                "reconstruction": all(rec_ok) / 100.0,
                "per_class": per,
            }));
            continue;
        }
        if clfs.len() > 1 {
            println!("classifier {}:", path.display());
        }
        println!(
            "originals {:.1}%, tokenizer reconstructions {:.1}% ({} fresh images per class, seed {})",
            all(orig_ok),
            all(rec_ok),
            args.num,
            classes::round_trip_seed(args.seed)
        );
        for (c, name) in SHAPE_CLASSES.iter().enumerate() {
            println!(
                "  {name:<14} {:5.1}% → {:5.1}%",
                pct(orig_ok[c]),
                pct(rec_ok[c])
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

pub fn eval_classes(mut args: EvalClassesArgs) -> Result<()> {
    if args.num == 0 || args.batch_size == 0 {
        bail!("--num and --batch-size must be at least 1");
    }
    type B = llamagen::backend::Cpu;
    let device = Default::default();
    if args.classifier.is_empty() {
        let bundled = llamagen::bundle::eval_classifier_path().ok_or_else(|| {
            anyhow!(
                "no --classifier given and the bundled one (assets/eval/classifier.mpk) is not \
                 here\nhint: train one with `llamagen train-classifier --out classifier.mpk`, \
                 or set LLAMAGEN_ASSETS to the assets folder"
            )
        })?;
        args.classifier.push(bundled);
    }
    let clfs = args
        .classifier
        .iter()
        .map(|p| ShapeClassifier::<B>::load(p, &device))
        .collect::<Result<Vec<_>, _>>()?;
    if let (None, Some(vq)) = (&args.gpt_ckpt, &args.vq_ckpt) {
        if !args.reconstructions {
            bail!(
                "--vq-ckpt without --gpt-ckpt measures only the tokenizer\n\
                 hint: add --reconstructions, or pass the generator with --gpt-ckpt"
            );
        }
        let vq = load_vq::<B>(&resolve_weights(vq)?, &device)?;
        return eval_reconstructions(&clfs, &vq, args.image_size, &args, &device);
    }
    let demo = if args.text {
        llamagen::bundle::Demo::Text
    } else {
        llamagen::bundle::Demo::Classes
    };
    let opts = llamagen::bundle::LoadOptions {
        precision: crate::args::resolve_precision::<B>(args.precision, &device)?,
        quantize: args.quantize.into(),
        ..Default::default()
    };
    let bundle = crate::args::load_bundle_or_demo::<B>(
        args.gpt_ckpt.as_deref(),
        args.vq_ckpt.as_deref(),
        demo,
        &opts,
        &device,
    )?;
    if args.reconstructions {
        return eval_reconstructions(&clfs, &bundle.vq, bundle.image_size, &args, &device);
    }
    let text = bundle.gpt.config.model_type == ModelType::T2i;
    let names = if text {
        SHAPE_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        bundle.class_names.names.clone()
    };
    // Text-conditional: every prompt encoded up front, then the encoder is freed.
    let mut prompts = std::collections::HashMap::new();
    if text {
        let dir = args
            .t5
            .clone()
            .or(bundle.t5_dir.clone())
            .ok_or_else(|| anyhow!("a text-conditional model needs --t5 DIR"))?;
        let mut encoder = llamagen::text::TextEncoder::<B>::from_folder_as(
            &llamagen::text::T5Folder::open(&dir)?,
            bundle.gpt.config.cls_token_num,
            llamagen::text::T5Precision::Auto,
            &device,
        )?;
        encoder.check_caption_dim(bundle.gpt.config.caption_dim)?;
        let all = classes::ClassEvalPlan::prompt_texts(&names, args.num, args.seed);
        for chunk in all.chunks(64) {
            for (p, f) in chunk.iter().zip(encoder.encode_batch(chunk)?) {
                prompts.insert(p.clone(), f.condition());
            }
        }
    }
    let model_to_clf = classes::shapes_of(&names)
        .map_err(|n| anyhow!("the model's class `{n}` is not a procedural shape class"))?;
    let grid = bundle.gpt.config.grid_size();
    let mut defaults = bundle.sampler;
    if let Some(t) = args.temperature {
        defaults.temperature = t;
    }
    if let Some(k) = args.top_k {
        defaults.top_k = k;
    }
    if let Some(p) = args.top_p {
        defaults.top_p = p;
    }
    defaults.validate()?;
    let decoding = args.decode.resolve(grid, None)?;
    let generator = Generator::new(&bundle.gpt).with_decoding(decoding);
    let mut report = Vec::new();
    for &cfg_scale in &args.cfg_scales {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new((names.len() * args.num) as u64)
        } else {
            ProgressBar::hidden()
        };
        let plan = classes::ClassEvalPlan {
            names: &names,
            num: args.num,
            batch_size: args.batch_size,
            sampler: SamplerParams {
                cfg_scale,
                seed: args.seed,
                ..defaults
            },
            prompts: text.then_some(&prompts),
        };
        let acc = classes::class_accuracy(&generator, &bundle.vq, &clfs, &plan, &mut |n| {
            bar.inc(n as u64)
        })?;
        bar.finish_and_clear();
        let images = acc.samples();
        let (passes, gen_seconds) = (acc.forward_passes, acc.generation_seconds);
        let background = acc.background.map(|(ok, n)| ok as f64 / n as f64);
        for (k, path) in args.classifier.iter().enumerate() {
            let verdict = acc.verdict(k, &model_to_clf);
            let per_class = verdict.right;
            // Each class's most frequent wrong answer, with how many samples got it.
            let mistaken: Vec<Option<(&str, usize)>> = verdict
                .mistaken_for
                .iter()
                .map(|m| m.map(|(shape, n)| (SHAPE_CLASSES[shape], n)))
                .collect();
            let total: usize = per_class.iter().sum();
            let samples = args.num * names.len();
            let overall = total as f64 / samples as f64;
            let (low, high) = llamagen::train::classifier::accuracy_interval(total, samples);
            report.push(serde_json::json!({
                "cfg_scale": cfg_scale,
                "precision": bundle.gpt.precision().name(),
                "quantize": bundle.gpt.quantization().name(),
                "decode": decoding.name(),
                "decode_window": match decoding {
                    Decoding::Sjd { window } | Decoding::Zipar { window } => Some(window),
                    Decoding::Sequential => None,
                },
                "forward_passes_per_image": passes as f64 / images as f64,
                "generation_seconds": gen_seconds,
                "batch_size": args.batch_size,
                "classifier": path,
                "overall": overall,
                "interval_95": [low, high],
                "background_colour": background,
                "per_class": names.iter().zip(&per_class).map(|(n, k)| (n.clone(), serde_json::json!(*k as f64 / args.num as f64))).collect::<serde_json::Map<_, _>>(),
                "mostly_mistaken_for": names.iter().zip(&mistaken).map(|(n, m)| (n.clone(), serde_json::json!(m.map(|(shape, k)| serde_json::json!({"shape": shape, "fraction": k as f64 / args.num as f64}))))).collect::<serde_json::Map<_, _>>(),
            }));
            if !args.json {
                let by = if clfs.len() > 1 {
                    format!(" by {}", path.display())
                } else {
                    String::new()
                };
                println!(
                    "cfg {cfg_scale}: {:.1}% overall{by} (95% interval {:.1}–{:.1}%; {} samples per class; temperature {}, top-k {}, top-p {}; {}, {:.1} forward passes per image, {:.1}s of generation)",
                    overall * 100.0,
                    low * 100.0,
                    high * 100.0,
                    args.num,
                    defaults.temperature,
                    defaults.top_k,
                    defaults.top_p,
                    decoding.describe(),
                    passes as f64 / images as f64,
                    gen_seconds
                );
                for ((n, k), m) in names.iter().zip(&per_class).zip(&mistaken) {
                    let pct = |k: usize| k as f64 * 100.0 / args.num as f64;
                    match m {
                        Some((shape, wrong)) => println!(
                            "  {n:<14} {:5.1}%   mostly mistaken for {shape} ({:.0}%)",
                            pct(*k),
                            pct(*wrong)
                        ),
                        None => println!("  {n:<14} {:5.1}%", pct(*k)),
                    }
                }
            }
        }
        if let (Some(b), false) = (background, args.json) {
            println!(
                "  background colour as asked: {:.1}% (shape classes; chance {:.1}%)",
                b * 100.0,
                100.0 / llamagen::dataset::PALETTE.len() as f64
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
