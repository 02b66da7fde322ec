//! `llamagen train-gpt`: train the generator on extracted codes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::config::{GptConfig, ModelType};
use llamagen::generate::{Generator, Request, RequestCondition, decode_tokens};
use llamagen::image_io::{make_grid, tensor_to_images};
use llamagen::sampling::SamplerParams;
use llamagen::train::Autodiff;
use llamagen::train::data::{CAPTIONS_FILE, CodeSet, captions_in_folder_order};
use llamagen::train::gpt::{CaptionTable, CodeBatcher, GptTrainOptions, GptTrainer, held_out_loss};
use llamagen::vq::VqModel;

use crate::args::{BackendArg, resolve_backend, with_backend};
use crate::training::{
    Progress, check_output, check_resume, load_vq, parse_replicas, replica_plan, resolve_weights,
    stopped,
};

#[derive(Args, Debug)]
pub struct TrainGptArgs {
    /// Codes file from `llamagen extract-codes`.
    #[arg(long)]
    pub codes: PathBuf,
    /// Run folder: checkpoints and samples/.
    #[arg(long)]
    pub out: PathBuf,
    /// Named size (GPT-B, GPT-L, …); --dim/--n-layer/--n-head override it.
    #[arg(long, default_value = "GPT-B")]
    pub gpt_model: String,
    #[arg(long)]
    pub dim: Option<usize>,
    #[arg(long)]
    pub n_layer: Option<usize>,
    #[arg(long)]
    pub n_head: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long)]
    pub steps: u64,
    /// Learning rate (default: 1e-4 × batch_size / 256, the paper's rate per 256 images). With
    /// --resume it replaces the run's rate from the resumed step on (with --lr-decay-steps: a
    /// second, lower anneal after the first).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Let the learning rate fall linearly towards zero over the last N steps before --steps
    /// (0: constant, the official schedule). With --resume it starts that decay in a run
    /// trained at a constant rate so far (train long at a constant rate, then anneal).
    #[arg(long, default_value_t = 0)]
    pub lr_decay_steps: u64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Probability of replacing the class by the null class (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub class_dropout: f64,
    /// Token, residual and feed-forward dropout.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Data-parallel replicas: each step's batch is split across this many model replicas that
    /// run forward and backward in parallel, their gradients summed before one optimizer step
    /// (the same step as one replica's, up to rounding). With cuda, replica i runs on GPU i
    /// (cycling when there are more replicas than GPUs); otherwise all run as threads on the one
    /// device. Default: one per CPU core with --backend cpu, one per GPU with cuda, 1 on wgpu
    /// (at most the batch size).
    #[arg(long, value_parser = parse_replicas)]
    pub replicas: Option<usize>,
    /// Tokenizer for the sample images (a file or a train-vq run folder).
    #[arg(long)]
    pub vq_ckpt: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub save_every: u64,
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    #[arg(long, default_value_t = 100)]
    pub log_every: u64,
    #[arg(long)]
    pub resume: bool,
    /// Start from a trained generator instead of a fresh initialisation (a file, official or
    /// this project's, or a train-gpt run folder): to fine-tune it on these codes, or to grow
    /// it deeper (--n-layer above its own: its layers come first, each new one starts as the
    /// identity). Width, heads, codebook and classes must be its own.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train a text-conditional generator: the T5 model folder that encodes the captions (a
    /// download of google/flan-t5-xl, or a small one from `llamagen init-t5`). The captions come
    /// with the codes (extract-codes keeps the data set's captions.tsv) or from --captions.
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Captions file (`class/file<TAB>caption` a line, as `llamagen dataset shapes` writes),
    /// for codes extracted from a folder that had none.
    #[arg(long, requires = "t5")]
    pub captions: Option<PathBuf>,
    /// Caption tokens of a text-conditional generator (its cls_token_num; official 120).
    #[arg(long, default_value_t = llamagen::text::MAX_PROMPT_TOKENS)]
    pub caption_tokens: usize,
    /// Held-out codes (`extract-codes` of images the generator does not train on, with the same
    /// tokenizer): their mean next-token loss is reported every --val-every steps and at the end,
    /// beside the training loss, so that learning can be told from memorising.
    #[arg(long)]
    pub val_codes: Option<PathBuf>,
    #[arg(long, default_value_t = 500, requires = "val_codes")]
    pub val_every: u64,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// Encodes every distinct caption of the codes once with the T5 folder `dir`.
fn caption_table<B: Backend>(
    dir: &Path,
    captions: &[String],
    cfg: &GptConfig,
    device: &B::Device,
) -> Result<CaptionTable> {
    let folder = llamagen::text::T5Folder::open(dir)?;
    if folder.config.d_model != cfg.caption_dim {
        bail!(
            "the T5 folder {} has d_model {}, the generator takes captions of {}",
            dir.display(),
            folder.config.d_model,
            cfg.caption_dim
        );
    }
    // The precision `generate` uses by default, so that training sees the features sampling
    // will give.
    let mut encoder = llamagen::text::TextEncoder::<B>::from_folder_as(
        &folder,
        cfg.cls_token_num,
        llamagen::text::T5Precision::Auto,
        device,
    )?;
    let t0 = Instant::now();
    let table = CaptionTable::build(captions, cfg.cls_token_num, cfg.caption_dim, |chunk| {
        encoder
            .encode_batch(chunk)
            .map(|v| v.into_iter().map(|f| (f.features, f.mask)).collect())
    })?;
    eprintln!(
        "{} captions ({} distinct) encoded with {} in {:.1}s",
        captions.len(),
        table.distinct(),
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(table)
}

pub fn train_gpt(args: TrainGptArgs) -> Result<()> {
    check_output(&args.out, true)?;
    check_resume(&args.out, args.resume)?;
    let kind = resolve_backend(args.backend)?;
    with_backend!(kind, |device: B| run_train_gpt::<B>(&args, kind, &device))
}

fn run_train_gpt<B: Backend>(
    args: &TrainGptArgs,
    kind: BackendKind,
    device: &B::Device,
) -> Result<()> {
    type AB<B> = Autodiff<B>;
    let mut set = CodeSet::read(&args.codes)?;
    if let Some(path) = &args.captions {
        set.meta.captions = captions_in_folder_order(path, &set.meta.class_names, &set.labels)?;
    }
    let set = set;
    let meta = &set.meta;
    let grid = (meta.seq_len as f64).sqrt() as usize;
    let resumed = if args.resume {
        GptTrainer::<AB<B>>::resume(&args.out, device)?
    } else {
        None
    };
    let decay = (args.lr_decay_steps > 0)
        .then(|| (args.steps.saturating_sub(args.lr_decay_steps), args.steps));
    let mut trainer = match resumed {
        Some(mut t) => {
            eprintln!("resuming at step {}", t.step);
            if decay.is_some() {
                t.opts.lr_decay = decay;
            }
            if let Some(lr) = args.lr {
                eprintln!(
                    "learning rate {:.2e} from here (the run had {:.2e})",
                    lr, t.opts.lr
                );
                t.opts.lr = lr;
            }
            if let Some((_, end)) = t.opts.lr_decay
                && end < args.steps
            {
                eprintln!(
                    "note: this run's learning rate finished its decay at step {end}; the steps past it keep the last, small rate (pass --lr-decay-steps to decay anew)"
                );
            }
            t
        }
        None => {
            if llamagen::train::checkpoint::latest(&args.out)?.is_some() {
                bail!(
                    "{} already holds a run; pass --resume to continue it or choose another --out",
                    args.out.display()
                );
            }
            let mut cfg = GptConfig::named(&args.gpt_model)?;
            if let Some(d) = args.dim {
                cfg.dim = d;
            }
            if let Some(l) = args.n_layer {
                cfg.n_layer = l;
            }
            if let Some(h) = args.n_head {
                cfg.n_head = h;
            }
            cfg.vocab_size = meta.codebook_size;
            cfg.num_classes = meta.class_names.len();
            cfg.block_size = meta.seq_len;
            cfg.class_dropout_prob = args.class_dropout;
            cfg.token_dropout_p = args.dropout;
            cfg.resid_dropout_p = args.dropout;
            cfg.ffn_dropout_p = args.dropout;
            if let Some(dir) = &args.t5 {
                let t5 = llamagen::text::T5Folder::open(dir)?;
                cfg = cfg.into_t2i();
                cfg.num_classes = meta.class_names.len();
                cfg.caption_dim = t5.config.d_model;
                cfg.cls_token_num = args.caption_tokens.max(1);
                cfg.class_dropout_prob = args.class_dropout;
            }
            let opts = GptTrainOptions {
                lr: args.lr.unwrap_or(1e-4 * args.batch_size as f64 / 256.0),
                weight_decay: args.weight_decay,
                max_grad_norm: args.max_grad_norm,
                batch_size: args.batch_size,
                seed: args.seed,
                lr_decay: decay,
                ..GptTrainOptions::default()
            };
            B::seed(device, args.seed);
            let mut trainer = GptTrainer::new(&cfg, opts, device)?;
            if let Some(path) = &args.init_from {
                let source = load_generator::<AB<B>>(path, &cfg, device)?;
                let done = trainer
                    .start_from(source)
                    .with_context(|| format!("--init-from {}", path.display()))?;
                eprintln!(
                    "starting from {}: {} layer(s) taken{}",
                    path.display(),
                    done.copied_layers,
                    if done.new_layers > 0 {
                        format!(", {} new identity layer(s) after them", done.new_layers)
                    } else {
                        String::new()
                    }
                );
            }
            trainer
        }
    };
    // The generator the run started from: named by --init-from, or by the checkpoint being
    // resumed, so that every checkpoint of the run records it.
    let init_from = match (&args.init_from, args.resume) {
        (Some(path), _) => serde_json::json!(path),
        (None, true) => llamagen::train::checkpoint::latest(&args.out)?
            .and_then(|dir| crate::card::read_run_state(&dir).ok())
            .map_or(serde_json::Value::Null, |state| {
                state["extra"]["init_from"].clone()
            }),
        (None, false) => serde_json::Value::Null,
    };
    let cfg = trainer.model.config.clone();
    if cfg.vocab_size != meta.codebook_size || cfg.block_size != meta.seq_len {
        bail!("the codes file does not fit the run being resumed (vocabulary or grid size)");
    }
    let text = cfg.model_type == ModelType::T2i;
    let captions = match (&args.t5, text) {
        (Some(dir), true) => {
            if meta.captions.is_empty() {
                bail!(
                    "{} has no captions: extract the codes from a folder with {CAPTIONS_FILE}, or pass --captions FILE",
                    args.codes.display()
                );
            }
            Some(caption_table::<B>(dir, &meta.captions, &cfg, device)?)
        }
        (None, true) => bail!(
            "the run in {} is text-conditional: pass --t5 DIR (its text encoder) to continue it",
            args.out.display()
        ),
        (Some(_), false) => bail!(
            "the run in {} is class-conditional: --t5 does not apply to it",
            args.out.display()
        ),
        (None, false) => None,
    };
    let opts = trainer.opts.clone();
    let devices = replica_plan::<AB<B>>(args.replicas, kind, device, opts.batch_size);
    eprintln!(
        "generator: dim {}, {} layers, {} heads, {:.2}M parameters; {} {}, {}×{} tokens, vocab {}; batch {}, lr {:.2e}{}, {} replica(s)",
        cfg.dim,
        cfg.n_layer,
        cfg.n_head,
        cfg.num_params() as f64 / 1e6,
        if text {
            cfg.cls_token_num
        } else {
            cfg.num_classes
        },
        if text {
            format!("caption tokens of {}", cfg.caption_dim)
        } else {
            "classes".to_string()
        },
        grid,
        grid,
        cfg.vocab_size,
        opts.batch_size,
        opts.lr,
        opts.lr_decay
            .map(|(a, z)| format!(" (falling linearly over steps {a}–{z})"))
            .unwrap_or_default(),
        devices.len()
    );
    let vq = match &args.vq_ckpt {
        Some(p) => {
            let vq = load_vq::<B>(&resolve_weights(p)?, device)?;
            if vq.config.codebook_size != meta.codebook_size {
                bail!(
                    "--vq-ckpt {} has {} codes, but the codes file was made by a tokenizer of {} ({})\nhint: pass the tokenizer that `extract-codes` used for {}",
                    p.display(),
                    vq.config.codebook_size,
                    meta.codebook_size,
                    meta.tokenizer,
                    args.codes.display()
                );
            }
            Some(vq)
        }
        None => None,
    };
    let val = match &args.val_codes {
        None => None,
        Some(path) => {
            let v = CodeSet::read(path)?;
            let m = &v.meta;
            if (m.codebook_size, m.seq_len) != (meta.codebook_size, meta.seq_len)
                || m.class_names != meta.class_names
            {
                bail!(
                    "the held-out codes {} do not match the training codes (vocabulary {} / {}, {} / {} tokens, classes); extract both with the same tokenizer from the same kind of data set",
                    path.display(),
                    m.codebook_size,
                    meta.codebook_size,
                    m.seq_len,
                    meta.seq_len
                );
            }
            if m.tokenizer != meta.tokenizer {
                eprintln!(
                    "note: the held-out codes came from {}, the training codes from {}",
                    m.tokenizer, meta.tokenizer
                );
            }
            let table = match (&args.t5, text) {
                (Some(dir), true) => {
                    if m.captions.is_empty() {
                        bail!(
                            "the held-out codes {} have no captions, which a text-conditional generator needs",
                            path.display()
                        );
                    }
                    Some(caption_table::<B>(dir, &m.captions, &cfg, device)?)
                }
                _ => None,
            };
            Some((v, table))
        }
    };
    let batcher = CodeBatcher {
        set: &set,
        batch_size: opts.batch_size,
        seed: opts.seed,
        class_dropout: cfg.class_dropout_prob,
        num_classes: cfg.num_classes,
        captions: captions.as_ref(),
    };
    let first = trainer.step;
    let progress = Progress::new(first, args.steps, args.log_every);
    let mut smooth: Option<f32> = None;
    let report_held_out = |trainer: &GptTrainer<AB<B>>, train: Option<f32>| {
        let Some((v, table)) = &val else { return };
        let model = trainer.model.valid();
        let loss = held_out_loss(&model, v, table.as_ref(), opts.batch_size, device);
        let train = train
            .map(|t| format!(", training loss (avg) {t:.4}"))
            .unwrap_or_default();
        progress.println(format!(
            "step {}: held-out loss {loss:.4} ({} images){train}",
            trainer.step, v.meta.num_images
        ));
    };
    report_held_out(&trainer, None);
    crate::interrupt::install();
    while trainer.step < args.steps {
        let batch = batcher.batch(trainer.step);
        let s = trainer.train_step(&batch, &devices)?;
        let sm = smooth.map_or(s.loss, |m| 0.98 * m + 0.02 * s.loss);
        smooth = Some(sm);
        progress.step(
            trainer.step,
            first,
            format!(
                "loss {:.4} (avg {:.4}) |g| {:.3} lr {:.2e}",
                s.loss,
                sm,
                s.grad_norm,
                opts.lr_at(trainer.step - 1)
            ),
        );
        let done = trainer.step == args.steps;
        if let Some(vq) = &vq
            && args.sample_every > 0
            && (trainer.step % args.sample_every == 0 || done)
        {
            let model = trainer.model.valid();
            let path = args
                .out
                .join("samples")
                .join(format!("step-{:07}.png", trainer.step));
            let conditions = sample_conditions(&set, captions.as_ref(), model.config.num_classes);
            sample_grid(&model, vq, &conditions, grid, &path)?;
        }
        if done || (args.val_every > 0 && trainer.step % args.val_every == 0) {
            report_held_out(&trainer, Some(sm));
        }
        let stop = !done && crate::interrupt::requested();
        if trainer.step % args.save_every == 0 || done || stop {
            let dir = trainer.save(
                &args.out,
                serde_json::json!({
                    "codes": args.codes,
                    "class_names": meta.class_names,
                    "image_size": meta.image_size,
                    "tokenizer": meta.tokenizer,
                    "t5": args.t5,
                    "init_from": init_from,
                }),
            )?;
            progress.println(format!("saved {}", dir.display()));
            if stop {
                progress.finish();
                return Err(stopped(trainer.step, args.steps, dir));
            }
        }
    }
    progress.bar.finish_and_clear();
    eprintln!("done: {}", args.out.display());
    Ok(())
}

/// The generator of `--init-from`, read with the configuration stored in it (or inferred from
/// its shapes, with the run's head count for official files).
fn load_generator<B: Backend>(
    path: &Path,
    run: &GptConfig,
    device: &B::Device,
) -> Result<llamagen::gpt::Transformer<B>> {
    let file = resolve_weights(path)?;
    let sd = llamagen::checkpoint::StateDict::open(
        &file,
        llamagen::checkpoint::WeightsChoice::PreferEma,
    )
    .with_context(|| format!("--init-from {}", path.display()))?;
    // The file's own configuration first; the run's head count only where the shapes alone
    // cannot tell it (an official file of a width that is no named size).
    let cfg = sd
        .infer_gpt_config(&Default::default())
        .or_else(|_| {
            sd.infer_gpt_config(&llamagen::checkpoint::GptHints {
                n_head: Some(run.n_head),
                ..Default::default()
            })
        })
        .with_context(|| format!("--init-from {}", path.display()))?;
    llamagen::gpt::Transformer::load(&sd, &cfg, device)
        .with_context(|| format!("--init-from {}", path.display()))
}

/// The conditions of the training sample sheets: one per class (up to 16), or with captions
/// the caption of each class's first image.
fn sample_conditions(
    set: &CodeSet,
    captions: Option<&CaptionTable>,
    num_classes: usize,
) -> Vec<RequestCondition> {
    let n = num_classes.min(16);
    match captions {
        None => (0..n).map(RequestCondition::Class).collect(),
        Some(t) => (0..n)
            .filter_map(|c| set.labels.iter().position(|&l| l as usize == c))
            .map(|image| {
                let row = t.gather(&[image], vec![false]);
                RequestCondition::Caption {
                    features: row.features,
                    mask: row.masks,
                }
            })
            .collect(),
    }
}

/// One image per condition, CFG 4, fixed seeds.
fn sample_grid<B: Backend>(
    model: &llamagen::gpt::Transformer<B>,
    vq: &VqModel<B>,
    conditions: &[RequestCondition],
    grid: usize,
    path: &Path,
) -> Result<()> {
    let n = conditions.len();
    let requests: Vec<Request> = conditions
        .iter()
        .enumerate()
        .map(|(c, condition)| Request {
            condition: condition.clone(),
            params: SamplerParams {
                seed: c as u64,
                top_k: 0,
                ..SamplerParams::default()
            },
            prefix: Vec::new(),
        })
        .collect();
    let g = Generator::new(model).generate(&requests, &mut (), None)?;
    let images = tensor_to_images(decode_tokens(vq, &g.tokens, grid));
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    make_grid(&images, n.min(8)).save(path)?;
    Ok(())
}
