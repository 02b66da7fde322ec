//! `llamagen generate`: images from classes or prompts, saved with their parameters.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::bundle::Demo;
use llamagen::config::ModelType;
use llamagen::generate::{Decoding, Generator};
use llamagen::image_io::{
    ModelFile, PngRecord, make_grid, next_file_number, read_png_record, sample_file_name, save_png,
};
use llamagen::sampling::{SamplerParams, TokenSampling};

use crate::args::{
    ModelArgs, PrecisionArg, QuantizeArg, SamplerArgs, resolve_backend, with_backend,
};
use crate::common::{
    BarObserver, Plan, PlanCondition, ensure_writable_folder, folder_of, make_batch, progress,
    read_prompt_file,
};
use crate::decoding::DecodeArgs;

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
    /// With --from: remake the images with the model loaded now even when the PNG's record
    /// names another generator or tokenizer (another size or fingerprint). The images will not
    /// be the recorded ones. Without it, such a PNG is refused.
    #[arg(long, requires = "from")]
    pub any_model: bool,
    /// The model files the --from PNG's record names (filled in from the PNG).
    #[arg(skip)]
    pub recorded_models: Option<(ModelFile, ModelFile)>,
    #[command(flatten)]
    pub decode: DecodeArgs,
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
        if args.model.vq_tile.is_none() {
            args.model.vq_tile = first.vq_tile.and_then(|t| u32::try_from(t).ok());
        }
        recorded = Some(first.decoding);
        args.recorded_models = Some((first.gpt.clone(), first.vq.clone()));
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
    if let (Some((gpt, vq)), Some(png), false) = (&args.recorded_models, &args.from, args.any_model)
    {
        for (what, now, then) in [
            ("generator", &bundle.gpt_file, gpt),
            ("tokenizer", &bundle.vq_file, vq),
        ] {
            if now.differs_from(then) {
                bail!(
                    "{} was made by another {what}: its record names {}, but the {what} \
                     loaded now is {}. Remade with this one, its images would not be the same\n\
                     hint: pass the recorded model files (--gpt-ckpt, --vq-ckpt) to remake them \
                     exactly, or --any-model to draw its settings with this model anyway",
                    png.display(),
                    then.label(),
                    now.label()
                );
            }
        }
    }
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
    // The images and records of the one grid PNG (none are kept with --out-dir).
    let mut images = Vec::new();
    let mut records = Vec::new();
    let mut made = 0;
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
        made += batch.images.len();
        if let (Some(dir), Some(n)) = (&args.out_dir, next_number.as_mut()) {
            // Written and let go: a run of many thousands holds one batch at a time.
            for (img, rec) in batch.images.iter().zip(batch.records) {
                let path = dir.join(sample_file_name(*n, &rec));
                save_png(&path, img, &PngRecord::new(vec![rec]))?;
                bar.suspend(|| println!("{}", path.display()));
                *n += 1;
            }
        } else {
            images.extend(batch.images);
            records.extend(batch.records);
        }
    }
    bar.finish_and_clear();
    let secs = t_gen.elapsed().as_secs_f64();
    let batches = plans.len().div_ceil(args.batch_size);
    eprintln!(
        "generated {made} image(s) in {secs:.1}s ({:.1} tokens/s; {:.1} forward passes per batch of {} tokens an image)",
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

/// `samples.png`, or the first of `samples-1.png`, `samples-2.png`, … not taken yet.
fn default_out() -> PathBuf {
    std::iter::once(PathBuf::from("samples.png"))
        .chain((1..).map(|i| PathBuf::from(format!("samples-{i}.png"))))
        .find(|p| !p.exists())
        .expect("an unbounded sequence of names")
}
