//! `llamagen sample`: many images for FID, as one `.npz` the official evaluator reads; resumable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::bundle::Demo;
use llamagen::config::ModelType;
use llamagen::eval::samples::{SampleFolder, SampleManifest};
use llamagen::generate::Generator;
use llamagen::image_io::{PngRecord, save_png};
use llamagen::sampling::SamplerParams;
use serde_json::json;

use crate::args::{ModelArgs, SamplerArgs, resolve_backend, with_backend};
use crate::common::{
    BarObserver, Plan, PlanCondition, ensure_writable_folder, folder_of, make_batch, progress,
    read_prompt_file,
};
use crate::decoding::{DecodeArgs, announce};

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per class (class-conditional models): image i is of class i / N (of the classes
    /// chosen, in order) with seed + i. 50 for the paper's 50,000 ImageNet samples.
    #[arg(long, value_name = "N")]
    pub num_per_class: Option<usize>,
    /// Only these classes (ids or names; repeat). Default: every class of the model.
    #[arg(long = "class", short = 'c')]
    pub classes: Vec<String>,
    /// Text-conditional models: a file of prompts, one a line (blank lines and lines starting
    /// with '#' skipped).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Images per prompt of --prompt-file.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub num_per_prompt: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of image 0; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images generated together in one batch (a resumed run must keep it: it changes the
    /// images' random numbers on some backends).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// The .npz to write: `arr_0`, uint8, [N, H, W, 3] (never replaced: a name that exists is
    /// refused).
    #[arg(long)]
    pub out: PathBuf,
    /// The run's folder of PNGs (000000.png …, each with its parameters), kept so that a
    /// stopped run goes on where it was. Default: --out without .npz.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Delete the folder of PNGs once the .npz is written.
    #[arg(long)]
    pub remove_images: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

pub fn sample(args: SampleArgs) -> Result<()> {
    if !args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        bail!(
            "--out {}: sample writes a NumPy .npz (what the official evaluator reads)\nhint: give a \
             name ending in .npz",
            args.out.display()
        );
    }
    if args.out.exists() {
        bail!(
            "--out {} exists and is not replaced\nhint: choose another name, or move it away",
            args.out.display()
        );
    }
    match (args.num_per_class, &args.prompt_file) {
        (None, None) => bail!(
            "say how many images: --num-per-class N (class-conditional models) or --prompt-file \
             FILE (text-conditional models)"
        ),
        (Some(_), Some(_)) => {
            bail!("--num-per-class is for class models, --prompt-file for text models: give one")
        }
        (Some(0), _) => bail!("--num-per-class must be at least 1"),
        _ => {}
    }
    if args.num_per_prompt == 0 || args.batch_size == 0 {
        bail!("--num-per-prompt and --batch-size must be at least 1");
    }
    if args.prompt_file.is_none() && args.num_per_prompt != 1 {
        bail!("--num-per-prompt goes with --prompt-file");
    }
    if args.prompt_file.is_some() && !args.classes.is_empty() {
        bail!("--class is for class models; a text model takes --prompt-file");
    }
    args.sampler.check()?;
    args.model.check_pair()?;
    let kind = resolve_backend(args.model.backend)?;
    with_backend!(kind, |device: B| run_sample::<B>(&args, kind, &device))
}

fn run_sample<B: Backend>(args: &SampleArgs, kind: BackendKind, device: &B::Device) -> Result<()> {
    let prompts = match &args.prompt_file {
        Some(file) => read_prompt_file(file)?,
        None => Vec::new(),
    };
    let demo = if prompts.is_empty() {
        Demo::Classes
    } else {
        Demo::Text
    };
    let bundle = args.model.load::<B>(demo, kind, device)?;
    args.sampler.check_vocab(bundle.gpt.config.vocab_size)?;
    let cfg = &bundle.gpt.config;
    let text_model = cfg.model_type == ModelType::T2i;
    match (text_model, prompts.is_empty()) {
        (true, true) => bail!(
            "{} is a text-conditional (t2i) model: give it --prompt-file (with --t5 DIR)",
            bundle.gpt_file.path
        ),
        (false, false) => bail!(
            "{} is a class-conditional (c2i) model: give it --num-per-class, not --prompt-file",
            bundle.gpt_file.path
        ),
        _ => {}
    }

    let mut base = SamplerParams {
        seed: args.seed,
        ..bundle.sampler
    };
    args.sampler.apply(&mut base);
    base.validate()?;
    let decoding = args.decode.resolve(cfg.grid_size(), None)?;
    announce(decoding);

    let (conditions, per_condition) = if text_model {
        let c: Vec<PlanCondition> = prompts.iter().cloned().map(PlanCondition::Prompt).collect();
        (c, args.num_per_prompt)
    } else {
        let classes = if args.classes.is_empty() {
            (0..cfg.num_classes).collect()
        } else {
            args.classes
                .iter()
                .map(|q| bundle.class_names.resolve(q))
                .collect::<Result<Vec<_>, _>>()?
        };
        let c: Vec<PlanCondition> = classes.into_iter().map(PlanCondition::Class).collect();
        (c, args.num_per_class.unwrap_or(1))
    };
    let plans: Vec<Plan> = conditions
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, per_condition))
        .enumerate()
        .map(|(index, condition)| Plan {
            condition: condition.clone(),
            params: SamplerParams {
                seed: base.seed.wrapping_add(index as u64),
                ..base
            },
            index,
            recorded: None,
        })
        .collect();

    // Everything that changes the images; a resumed run must match it.
    let conditions_json: Vec<serde_json::Value> = conditions
        .iter()
        .map(|c| match c {
            PlanCondition::Class(c) => json!(c),
            PlanCondition::Prompt(p) => json!(p),
        })
        .collect();
    let settings = json!({
        "gpt": bundle.gpt_file,
        "vq": bundle.vq_file,
        "model": bundle.description(),
        "n_head": cfg.n_head,
        "precision": bundle.gpt.precision(),
        "quantize": bundle.gpt.quantization(),
        "backend": kind.name(),
        "conditions": conditions_json,
        "per_condition": per_condition,
        "sampler": base,
        "decoding": decoding,
        "batch_size": args.batch_size,
    });
    let manifest = SampleManifest {
        total: plans.len(),
        image_size: bundle.image_size,
        settings: settings
            .as_object()
            .cloned()
            .expect("the settings are an object"),
    };
    ensure_writable_folder(&folder_of(&args.out))?;
    let dir = args
        .images
        .clone()
        .unwrap_or_else(|| args.out.with_extension(""));
    let folder = SampleFolder::open(&dir, manifest).map_err(|e| {
        anyhow!(
            "{e}\nhint: give another --images folder (or --out), or remove {} to start over",
            dir.display()
        )
    })?;
    let missing = folder.missing();
    let made = plans.len() - missing.len();
    if made > 0 {
        eprintln!(
            "{}: {made} of {} images made by an earlier run are kept; making the other {}",
            dir.display(),
            plans.len(),
            missing.len()
        );
    } else {
        eprintln!(
            "{} images into {} (a stopped run goes on from there when the same command is run \
             again), then {}",
            plans.len(),
            dir.display(),
            args.out.display()
        );
    }

    // Every prompt of a batch with an image to make: a batch is made whole.
    let todo: Vec<Plan> = plans
        .chunks(args.batch_size)
        .filter(|chunk| {
            chunk
                .iter()
                .any(|p| missing.binary_search(&p.index).is_ok())
        })
        .flatten()
        .cloned()
        .collect();
    let captions = args
        .model
        .captions(&bundle, &todo, args.batch_size, device)?;

    let generator = Generator::new(&bundle.gpt).with_decoding(decoding);
    let bar = progress((missing.len() * cfg.block_size) as u64, "tokens");
    let t0 = Instant::now();
    let mut passes = 0;
    let mut batches = 0;
    // A batch keeps its images whatever was made before, so that a resumed run's images are
    // those of a run never stopped.
    for (b, chunk) in plans.chunks(args.batch_size).enumerate() {
        let todo: Vec<usize> = chunk
            .iter()
            .map(|p| p.index)
            .filter(|i| missing.binary_search(i).is_ok())
            .collect();
        if todo.is_empty() {
            continue;
        }
        let batch = make_batch(
            &bundle,
            &generator,
            chunk,
            &captions,
            &mut BarObserver { bar: &bar },
        )
        .with_context(|| format!("batch {b}"))?;
        passes += batch.forward_passes;
        batches += 1;
        for (image, record) in batch.images.iter().zip(batch.records) {
            if todo.contains(&record.index) {
                save_png(
                    &folder.image_path(record.index),
                    image,
                    &PngRecord::new(vec![record]),
                )?;
            }
        }
    }
    bar.finish_and_clear();
    if batches > 0 {
        eprintln!(
            "made {} images in {:.1}s ({:.1} forward passes per batch of {} tokens an image)",
            missing.len(),
            t0.elapsed().as_secs_f64(),
            passes as f64 / batches as f64,
            cfg.block_size
        );
    }

    let packing = progress(plans.len() as u64, "images packed");
    let out = folder
        .pack(&args.out, |_| packing.inc(1))
        .context("cannot write the .npz")?;
    packing.finish_and_clear();
    let side = bundle.image_size;
    println!("{}", out.display());
    eprintln!(
        "wrote {}: arr_0, uint8, [{}, {side}, {side}, 3]",
        out.display(),
        plans.len()
    );
    if args.remove_images {
        remove_folder(folder.dir())?;
    }
    Ok(())
}

fn remove_folder(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| {
        format!(
            "the .npz is written, but {} could not be removed",
            dir.display()
        )
    })
}
