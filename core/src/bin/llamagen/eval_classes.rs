//! `llamagen eval-classes`: how often generations show the class asked for.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use indicatif::ProgressBar;
use llamagen::config::ModelType;
use llamagen::dataset::SHAPE_CLASSES;
use llamagen::generate::{Decoding, Generator, Request, RequestCondition, decode_tokens};
use llamagen::image_io::tensor_to_images;
use llamagen::sampling::SamplerParams;
use llamagen::train::classifier::ShapeClassifier;
use llamagen::train::data::images_to_tensor;
use llamagen::vq::VqModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    // Another seed than the data set's (0) and the classifier's held-out images.
    let seed = 5_000_003 + args.seed;
    let n = SHAPE_CLASSES.len();
    // Right answers per classifier and class, on the originals and on their reconstructions.
    let mut orig_ok = vec![vec![0usize; n]; clfs.len()];
    let mut rec_ok = orig_ok.clone();
    for c in 0..n {
        let items: Vec<u64> = (0..args.num as u64).collect();
        for chunk in items.chunks(args.batch_size.max(1)) {
            let images: Vec<image::RgbImage> = chunk
                .iter()
                .map(|&i| llamagen::dataset::render(seed, c, i, image_size as u32).to_image())
                .collect();
            let rec = tensor_to_images(vq.forward(images_to_tensor::<B>(&images, device)));
            for (k, clf) in clfs.iter().enumerate() {
                orig_ok[k][c] += clf.classify(&images).iter().filter(|&&p| p == c).count();
                rec_ok[k][c] += clf.classify(&rec).iter().filter(|&&p| p == c).count();
            }
        }
    }
    let pct = |k: usize| k as f64 * 100.0 / args.num as f64;
    let all = |v: &[usize]| v.iter().sum::<usize>() as f64 * 100.0 / (args.num * n) as f64;
    let mut report = Vec::new();
    for ((path, orig_ok), rec_ok) in args.classifier.iter().zip(&orig_ok).zip(&rec_ok) {
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
            "originals {:.1}%, tokenizer reconstructions {:.1}% ({} fresh images per class, seed {seed})",
            all(orig_ok),
            all(rec_ok),
            args.num
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

/// The prompt eval-classes asks a text-conditional model for sample `i` of `class`: the data
/// set's caption with two distinct colours drawn from `seed`.
fn eval_prompt(class: &str, seed: u64) -> String {
    use llamagen::dataset::{PALETTE, caption};
    let bg = eval_background(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fg = (bg + rng.random_range(1..PALETTE.len())) % PALETTE.len();
    caption(class, PALETTE[fg].0, PALETTE[bg].0)
}

/// The background colour (a `PALETTE` index) of [`eval_prompt`]'s prompt for `seed`.
fn eval_background(seed: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6267);
    rng.random_range(0..llamagen::dataset::PALETTE.len())
}

/// The palette colour nearest to the mean of an image's outer 4-pixel frame (where the shapes
/// classes show their background).
fn frame_colour(img: &image::RgbImage) -> usize {
    let (w, h) = img.dimensions();
    let mut sum = [0f64; 3];
    let mut n = 0.0;
    for (x, y, p) in img.enumerate_pixels() {
        if x < 4 || y < 4 || x + 4 >= w || y + 4 >= h {
            for k in 0..3 {
                sum[k] += p[k] as f64;
            }
            n += 1.0;
        }
    }
    let mean = sum.map(|v| v / n);
    let dist = |c: [u8; 3]| (0..3).map(|k| (c[k] as f64 - mean[k]).powi(2)).sum::<f64>();
    (0..llamagen::dataset::PALETTE.len())
        .min_by(|&a, &b| {
            dist(llamagen::dataset::PALETTE[a].1).total_cmp(&dist(llamagen::dataset::PALETTE[b].1))
        })
        .expect("a palette")
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
        let all: Vec<String> = (0..names.len())
            .flat_map(|c| (0..args.num as u64).map(move |i| (c, i)))
            .map(|(c, i)| eval_prompt(&names[c], args.seed + (c as u64) * 100_003 + i))
            .collect();
        for chunk in all.chunks(64) {
            for (p, f) in chunk.iter().zip(encoder.encode_batch(chunk)?) {
                prompts.insert(p.clone(), f.condition());
            }
        }
    }
    let model_to_clf: Vec<usize> = names
        .iter()
        .map(|n| {
            SHAPE_CLASSES
                .iter()
                .position(|s| s == n)
                .ok_or_else(|| anyhow!("the model's class `{n}` is not a procedural shape class"))
        })
        .collect::<Result<_>>()?;
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
        // Forward passes summed over the images, and the seconds of generation.
        let (mut passes, mut gen_seconds) = (0usize, 0f64);
        // What each classifier took each class's samples for: [classifier][class][shape].
        let mut taken_for = vec![vec![[0usize; SHAPE_CLASSES.len()]; names.len()]; clfs.len()];
        // Text models: how often the frame shows the prompt's background colour (shape
        // classes; stripes and checkerboards split the frame between both colours).
        let (mut bg_ok, mut bg_n) = (0usize, 0usize);
        let plans: Vec<(usize, u64)> = (0..names.len())
            .flat_map(|c| (0..args.num as u64).map(move |i| (c, i)))
            .collect();
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(plans.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        for chunk in plans.chunks(args.batch_size) {
            let requests: Vec<Request> = chunk
                .iter()
                .map(|&(c, i)| {
                    let seed = args.seed + (c as u64) * 100_003 + i;
                    let condition = if text {
                        prompts[&eval_prompt(&names[c], seed)].clone()
                    } else {
                        RequestCondition::Class(c)
                    };
                    Request {
                        condition,
                        params: SamplerParams {
                            cfg_scale,
                            seed,
                            ..defaults
                        },
                        prefix: Vec::new(),
                    }
                })
                .collect();
            let started = std::time::Instant::now();
            let g = generator.generate(&requests, &mut (), None)?;
            gen_seconds += started.elapsed().as_secs_f64();
            passes += g.forward_passes * chunk.len();
            let images = tensor_to_images(decode_tokens(&bundle.vq, &g.tokens, grid));
            for (clf, taken) in clfs.iter().zip(&mut taken_for) {
                for (&(c, _), p) in chunk.iter().zip(clf.classify(&images)) {
                    taken[c][p] += 1;
                }
            }
            for (&(c, i), img) in chunk.iter().zip(&images) {
                if text && !matches!(names[c].as_str(), "stripes" | "checkerboard") {
                    let seed = args.seed + (c as u64) * 100_003 + i;
                    bg_n += 1;
                    bg_ok += usize::from(frame_colour(img) == eval_background(seed));
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let background = (bg_n > 0).then(|| bg_ok as f64 / bg_n as f64);
        for (path, taken) in args.classifier.iter().zip(&taken_for) {
            // Right answers per class.
            let per_class: Vec<usize> = taken
                .iter()
                .enumerate()
                .map(|(c, counts)| counts[model_to_clf[c]])
                .collect();
            // Each class's most frequent wrong answer, with how many samples got it.
            let mistaken: Vec<Option<(&str, usize)>> = taken
                .iter()
                .enumerate()
                .map(|(c, counts)| {
                    (0..SHAPE_CLASSES.len())
                        .filter(|&p| p != model_to_clf[c] && counts[p] > 0)
                        .max_by_key(|&p| (counts[p], std::cmp::Reverse(p)))
                        .map(|p| (SHAPE_CLASSES[p], counts[p]))
                })
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
                "forward_passes_per_image": passes as f64 / plans.len() as f64,
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
                    passes as f64 / plans.len() as f64,
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
