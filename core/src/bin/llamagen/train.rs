//! The training commands (feature `train`): train-vq, extract-codes, train-gpt,
//! train-classifier, eval-classes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::DeviceOps;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llamagen::backend::BackendKind;
use llamagen::config::{GptConfig, ModelType, VqConfig};
use llamagen::dataset::SHAPE_CLASSES;
use llamagen::generate::{Decoding, Generator, Request, RequestCondition, decode_tokens};
use llamagen::image_io::{make_grid, tensor_to_images};
use llamagen::sampling::SamplerParams;
use llamagen::train::Autodiff;
use llamagen::train::classifier::{self, ShapeClassifier};
use llamagen::train::data::{
    CAPTIONS_FILE, CodeSet, CodesMeta, ImageFolder, captions_in_folder_order, images_to_tensor,
    random_crop, ten_crop,
};
use llamagen::train::discriminator::{GanLoss, PatchGanConfig};
use llamagen::train::gpt::{CaptionTable, CodeBatcher, GptTrainOptions, GptTrainer, held_out_loss};
use llamagen::train::lpips::Lpips;
use llamagen::train::perceptual::PerceptualNet;
use llamagen::train::vq::{ReconstructionLoss, VqTrainOptions, VqTrainer};
use llamagen::vq::VqModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::commands::{BackendArg, resolve_backend, with_backend};

/// A progress bar with a message (losses) on a terminal; otherwise a log line on stderr each
/// time the count passes a multiple of `every` (and at the end), so that a run writing to a
/// file still says how far it is.
struct Progress {
    bar: ProgressBar,
    tty: bool,
    every: u64,
    start: Instant,
    total: u64,
    /// What is counted: "steps", "images".
    unit: &'static str,
    /// The count at the last log line.
    logged: std::cell::Cell<u64>,
}

impl Progress {
    fn new(first: u64, total: u64, every: u64) -> Self {
        Self::counting(first, total, every, "steps")
    }

    fn counting(first: u64, total: u64, every: u64, unit: &'static str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "[{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
                ))
                .expect("valid template"),
            );
            b.set_position(first);
            b
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            tty,
            every: every.max(1),
            start: Instant::now(),
            total,
            unit,
            logged: std::cell::Cell::new(first),
        }
    }

    fn step(&self, step: u64, first: u64, msg: String) {
        if self.tty {
            self.bar.set_position(step);
            self.bar.set_message(msg);
        } else if step / self.every > self.logged.get() / self.every || step == self.total {
            self.logged.set(step);
            let done = (step - first) as f64;
            let secs = self.start.elapsed().as_secs_f64();
            let rate = done / secs.max(1e-9);
            let eta = (self.total - step) as f64 / rate.max(1e-9);
            let unit = self.unit;
            let label = unit.strip_suffix('s').unwrap_or(unit);
            let msg = if msg.is_empty() {
                msg
            } else {
                format!(" {msg}")
            };
            eprintln!(
                "{label} {step}/{}{msg} ({rate:.2} {unit}/s, ETA {:.0}s)",
                self.total, eta
            );
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn println(&self, line: String) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

/// The error of a run stopped by Ctrl-C after saving `dir`, with the way on.
fn stopped(step: u64, total: u64, saved: PathBuf) -> anyhow::Error {
    anyhow::Error::new(crate::interrupt::Stopped { step, total, saved })
}

fn parse_mult(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| anyhow!("--ch-mult takes numbers separated by commas, e.g. 1,2,2,4"))
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct TrainVqArgs {
    /// Image folder: DIR/<class>/<image>.png|jpg (`llamagen dataset shapes` makes one).
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder: checkpoints (step-N/, latest) and samples/.
    #[arg(long)]
    pub out: PathBuf,
    /// Starting configuration: VQ-16 (16× downsampling) or VQ-8 (8×); the options below
    /// override parts of it.
    #[arg(long, default_value = "VQ-16")]
    pub config: String,
    /// Base channel width (official 128).
    #[arg(long)]
    pub ch: Option<usize>,
    /// Channel multipliers per level, e.g. 1,2,2,4 (levels − 1 = log2 of the downsampling).
    #[arg(long)]
    pub ch_mult: Option<String>,
    /// Latent channels (official 256).
    #[arg(long)]
    pub z_channels: Option<usize>,
    /// Residual blocks per level (official 2).
    #[arg(long)]
    pub num_res_blocks: Option<usize>,
    /// GroupNorm groups (official 32). Keep about four channels per group: at --ch 32,
    /// 32 groups are one channel each (an instance norm that loses the image's colours).
    #[arg(long)]
    pub norm_groups: Option<usize>,
    #[arg(long, default_value_t = 16384)]
    pub codebook_size: usize,
    #[arg(long, default_value_t = 8)]
    pub codebook_dim: usize,
    /// Weight of the codebook entropy loss (official default 0; with --init-from, the
    /// tokenizer's own unless given).
    #[arg(long)]
    pub entropy_loss_ratio: Option<f64>,
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer steps in all (a resumed run continues up to this number).
    #[arg(long)]
    pub steps: u64,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Global gradient-norm clipping (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Step at which the PatchGAN adversarial terms switch on (paper: 20000).
    #[arg(long, default_value_t = 20_000)]
    pub disc_start: u64,
    /// Weight of the generator's adversarial loss.
    #[arg(long, default_value_t = 0.5)]
    pub disc_weight: f64,
    #[arg(long, value_enum, default_value_t = GanLoss::Hinge)]
    pub disc_loss: GanLoss,
    #[arg(long, value_enum, default_value_t = GanLoss::Hinge)]
    pub gen_loss: GanLoss,
    /// Discriminator base width and depth (official 64, 3).
    #[arg(long, default_value_t = 64)]
    pub disc_ndf: usize,
    #[arg(long, default_value_t = 3)]
    pub disc_layers: usize,
    /// torchvision VGG16 weights (vgg16-397923af.pth) for the perceptual (LPIPS) loss.
    #[arg(long, requires = "lpips_lin", conflicts_with = "perceptual_net")]
    pub lpips_vgg: Option<PathBuf>,
    /// LPIPS linear heads (vgg.pth of the lpips package).
    #[arg(long, requires = "lpips_vgg")]
    pub lpips_lin: Option<PathBuf>,
    /// A perceptual network from `llamagen train-perceptual`, used instead of LPIPS's VGG16 (its
    /// four stage ends, every channel weighted one).
    #[arg(long)]
    pub perceptual_net: Option<PathBuf>,
    /// Weight of the perceptual term (official 1.0, for LPIPS's calibrated heads). A
    /// --perceptual-net weighs every channel one, so its distance runs about ten times larger:
    /// 0.1 keeps the colours that 1.0 lets drift.
    #[arg(long, default_value_t = 1.0)]
    pub perceptual_weight: f64,
    /// Pixel loss of the reconstruction: l2 (mean squared error, the official default) or l1
    /// (mean absolute error, the official alternative).
    #[arg(long, value_enum, default_value_t = ReconstructionLoss::L2)]
    pub reconstruction_loss: ReconstructionLoss,
    /// Keep an exponential moving average of the tokenizer (exported instead of the live weights).
    #[arg(long)]
    pub ema: bool,
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    #[arg(long, default_value_t = 500)]
    pub save_every: u64,
    /// Write reconstructions of a fixed batch to OUT/samples every N steps (0 = never).
    #[arg(long, default_value_t = 250)]
    pub sample_every: u64,
    /// Log line interval when stderr is not a terminal.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Continue from OUT's latest checkpoint (its configuration and options win).
    #[arg(long)]
    pub resume: bool,
    /// Start from a trained tokenizer (a .safetensors / .pt file, or a train-vq run folder)
    /// instead of fresh weights; its configuration replaces --config and the width options. The
    /// discriminator and the optimizers start fresh.
    #[arg(long, conflicts_with_all = ["ch", "ch_mult", "z_channels", "num_res_blocks", "norm_groups", "codebook_size", "codebook_dim"])]
    pub init_from: Option<PathBuf>,
    /// Train only the decoder (and post_quant_conv) of the --init-from tokenizer: the encoder
    /// and codebook stay fixed, so every image keeps its codes and the codes already extracted
    /// with that tokenizer, and the generators trained on them, stay valid with the new decoder.
    #[arg(long, requires = "init_from")]
    pub decoder_only: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-parallel replicas: each step's batch is split across this many tokenizer replicas
    /// that run forward and backward in parallel, their gradients summed before one optimizer
    /// step. With cuda, replica i runs on GPU i (cycling when there are more replicas than
    /// GPUs); otherwise all run as threads on the one device. The entropy term is then each
    /// shard's own. Default: one per CPU core with --backend cpu, one per GPU with cuda, 1 on
    /// wgpu (at most the batch size).
    #[arg(long, value_parser = parse_replicas)]
    pub replicas: Option<usize>,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// Checked before any training or encoding starts, so that no finished work is lost to an
/// output that cannot be written: the folder (`folder`) or the file's folder exists or can be
/// made, and takes a file.
fn check_output(path: &Path, folder: bool) -> Result<()> {
    let dir = if folder {
        path.to_path_buf()
    } else {
        crate::commands::folder_of(path)
    };
    crate::commands::ensure_writable_folder(&dir)
}

pub fn train_vq(args: TrainVqArgs) -> Result<()> {
    check_output(&args.out, true)?;
    check_resume(&args.out, args.resume)?;
    if !args.resume && args.init_from.is_none() {
        let ds = vq_config(&args)?.downsample();
        if ds == 0 || args.image_size as usize % ds != 0 {
            let near = (args.image_size as usize / ds.max(1)).max(1) * ds.max(1);
            bail!(
                "--image-size {} does not divide into the tokenizer's {ds}-pixel patches\nhint: pass a multiple of {ds}, such as {near}",
                args.image_size
            );
        }
    }
    let kind = resolve_backend(args.backend)?;
    with_backend!(kind, |device: B| run_train_vq::<B>(&args, kind, &device))
}

/// `--resume` needs a run to go on from: a folder without a checkpoint is refused rather than
/// quietly started afresh.
fn check_resume(out: &Path, resume: bool) -> Result<()> {
    if resume && llamagen::train::checkpoint::latest(out)?.is_none() {
        bail!(
            "--resume: {} holds no checkpoint to go on from\nhint: leave --resume out to start a new run there (a run saves its first checkpoint after --save-every steps)",
            out.display()
        );
    }
    Ok(())
}

fn vq_config(args: &TrainVqArgs) -> Result<VqConfig> {
    let mut cfg = VqConfig::named(&args.config)?;
    if let Some(ch) = args.ch {
        cfg.ch = ch;
    }
    if let Some(m) = &args.ch_mult {
        let m = parse_mult(m)?;
        cfg.encoder_ch_mult = m.clone();
        cfg.decoder_ch_mult = m;
    }
    if let Some(z) = args.z_channels {
        cfg.z_channels = z;
    }
    if let Some(n) = args.num_res_blocks {
        cfg.num_res_blocks = n;
    }
    if let Some(g) = args.norm_groups {
        cfg.norm_groups = g;
    }
    cfg.codebook_size = args.codebook_size;
    cfg.codebook_embed_dim = args.codebook_dim;
    cfg.entropy_loss_ratio = args.entropy_loss_ratio.unwrap_or(0.0);
    cfg.validate()?;
    Ok(cfg)
}

fn run_train_vq<B: Backend>(
    args: &TrainVqArgs,
    kind: BackendKind,
    device: &B::Device,
) -> Result<()> {
    type AB<B> = Autodiff<B>;
    let mut data = ImageFolder::open(&args.data)?;
    eprintln!(
        "{} images in {} classes under {}",
        data.len(),
        data.classes.len(),
        args.data.display()
    );
    if data.len() <= 50_000 {
        data.preload()?;
    }
    let lpips = match (&args.lpips_vgg, &args.lpips_lin, &args.perceptual_net) {
        (Some(vgg), Some(lin), _) => Some(
            Lpips::<AB<B>>::load(vgg, lin, device)
                .with_context(|| "loading the LPIPS weights".to_string())?,
        ),
        (_, _, Some(net)) => {
            let net = PerceptualNet::<AB<B>>::load(net, device).with_context(|| {
                format!(
                    "loading the perceptual network {} (written by `llamagen train-perceptual`)",
                    net.display()
                )
            })?;
            eprintln!(
                "perceptual loss: the network from --perceptual-net in place of LPIPS's VGG16"
            );
            Some(net.into_lpips())
        }
        _ => {
            eprintln!(
                "WARNING: no LPIPS weights (--lpips-vgg, --lpips-lin): training WITHOUT the perceptual loss.\n\
                 The paper's tokenizer uses it; pass torchvision's vgg16-397923af.pth and LPIPS's vgg.pth to enable it,\n\
                 or a network from `llamagen train-perceptual` with --perceptual-net."
            );
            None
        }
    };
    let resumed = if args.resume {
        VqTrainer::<AB<B>>::resume(&args.out, lpips.clone(), device)?
    } else {
        None
    };
    let mut trainer = match resumed {
        Some(t) => {
            eprintln!("resuming at step {}", t.step);
            t
        }
        None => {
            if !args.resume && llamagen::train::checkpoint::latest(&args.out)?.is_some() {
                bail!(
                    "{} already holds a run; pass --resume to continue it or choose another --out",
                    args.out.display()
                );
            }
            let init = match &args.init_from {
                Some(path) => {
                    let file = resolve_weights(path)?;
                    let mut vq = load_vq::<AB<B>>(&file, device).with_context(|| {
                        format!("loading the tokenizer to start from ({})", file.display())
                    })?;
                    if let Some(ratio) = args.entropy_loss_ratio {
                        vq.config.entropy_loss_ratio = ratio;
                    }
                    eprintln!("starting from the tokenizer {}", file.display());
                    Some(vq)
                }
                None => None,
            };
            let opts = VqTrainOptions {
                lr: args.lr,
                max_grad_norm: args.max_grad_norm,
                batch_size: args.batch_size,
                image_size: args.image_size as usize,
                perceptual_weight: args.perceptual_weight,
                reconstruction_loss: args.reconstruction_loss,
                disc_weight: args.disc_weight,
                disc_start: args.disc_start,
                disc_loss: args.disc_loss,
                gen_loss: args.gen_loss,
                disc: PatchGanConfig {
                    input_nc: 3,
                    ndf: args.disc_ndf,
                    n_layers: args.disc_layers,
                },
                ema_decay: args.ema.then_some(args.ema_decay),
                seed: args.seed,
                decoder_only: args.decoder_only,
                ..VqTrainOptions::default()
            };
            B::seed(device, args.seed);
            match init {
                Some(vq) => VqTrainer::from_model(vq, opts, lpips, device)?,
                None => VqTrainer::new(&vq_config(args)?, opts, lpips, device)?,
            }
        }
    };
    let cfg = trainer.vq.config.clone();
    let opts = trainer.opts.clone();
    eprintln!(
        "tokenizer: {}× downsampling, ch {} × {:?}, z {}, codebook {}×{}, {:.2}M parameters; batch {}, {}px, {:?} reconstruction loss{}",
        cfg.downsample(),
        cfg.ch,
        cfg.encoder_ch_mult,
        cfg.z_channels,
        cfg.codebook_size,
        cfg.codebook_embed_dim,
        cfg.num_params() as f64 / 1e6,
        opts.batch_size,
        opts.image_size,
        opts.reconstruction_loss,
        if opts.decoder_only {
            "; training the decoder only (encoder and codebook fixed)"
        } else {
            ""
        }
    );
    // One entry per replica; a single replica runs on the trainer's own device.
    let devices = replica_plan::<AB<B>>(args.replicas, kind, device, opts.batch_size);
    let size = opts.image_size as u32;
    // A fixed batch for the sample grids.
    let probe: Vec<_> = (0..8.min(data.len()))
        .map(|i| data.image(i * data.len() / 8.min(data.len())))
        .collect::<Result<_, _>>()?;
    let probe: Vec<_> = probe
        .iter()
        .map(|im| llamagen::train::data::center_crop(im, size))
        .collect();
    let first = trainer.step;
    let progress = Progress::new(first, args.steps, args.log_every);
    crate::interrupt::install();
    while trainer.step < args.steps {
        let step = trainer.step;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(step);
        let images: Vec<_> = (0..opts.batch_size)
            .map(|_| {
                let i = rng.random_range(0..data.len());
                let im = data.image(i)?;
                let mut crop = random_crop(&im, size, &mut rng);
                if rng.random::<bool>() {
                    crop = image::imageops::flip_horizontal(&crop);
                }
                Ok(crop)
            })
            .collect::<Result<_, llamagen::train::TrainError>>()?;
        let x = images_to_tensor::<AB<B>>(&images, device);
        let s = trainer.train_step_on(x, &devices)?;
        let msg = format!(
            "rec {:.4} vq {:.4} commit {:.4}{}{} usage {:.0}%",
            s.reconstruction,
            s.vq,
            s.commit,
            if s.perceptual > 0.0 {
                format!(" lpips {:.4}", s.perceptual)
            } else {
                String::new()
            },
            if s.disc != 0.0 || s.gen_adv != 0.0 {
                format!(" g_adv {:.4} d {:.4}", s.gen_adv, s.disc)
            } else {
                String::new()
            },
            s.codebook_usage * 100.0
        );
        progress.step(trainer.step, first, msg);
        let done = trainer.step == args.steps;
        if args.sample_every > 0 && (trainer.step % args.sample_every == 0 || done) {
            let model = trainer.export_model();
            let x = images_to_tensor::<B>(&probe, device);
            let recon = tensor_to_images(model.forward(x));
            let mut all = probe.clone();
            all.extend(recon);
            let path = args
                .out
                .join("samples")
                .join(format!("step-{:07}.png", trainer.step));
            std::fs::create_dir_all(path.parent().expect("has parent"))?;
            make_grid(&all, probe.len()).save(&path)?;
        }
        let stop = !done && crate::interrupt::requested();
        if trainer.step % args.save_every == 0 || done || stop {
            let dir = trainer.save(&args.out, serde_json::json!({"data": args.data}))?;
            progress.println(format!("saved {}", dir.display()));
            if stop {
                progress.finish();
                return Err(stopped(trainer.step, args.steps, dir));
            }
        }
    }
    progress.bar.finish_and_clear();
    eprintln!(
        "done: {} (tokenizer weights: {}/latest → model.safetensors)",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExtractCodesArgs {
    /// Image folder: DIR/<class>/<image>.
    #[arg(long)]
    pub data: PathBuf,
    /// Tokenizer: a .safetensors / .pt file, or a train-vq run folder (its latest checkpoint).
    #[arg(long)]
    pub vq_ckpt: PathBuf,
    /// Output codes file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    /// Ten crops (four corners and centre, and their mirrors) of the image resized to
    /// image_size × crop_range, as the paper; otherwise the centre crop and its mirror.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ten_crop: bool,
    /// With --ten-crop false: keep the centre crop's mirror as a second grid (false: the centre
    /// crop alone, half the encoding time — with a procedural data set, drawing twice the images
    /// gives more variety than mirroring them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub mirror: bool,
    #[arg(long, default_value_t = 1.1)]
    pub crop_range: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// A file, or a run folder's latest `model.safetensors`.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    match llamagen::bundle::run_folder_checkpoint(path) {
        Ok(Some(dir)) => Ok(dir.join("model.safetensors")),
        Ok(None) => Ok(path.to_path_buf()),
        Err(e) => bail!("{} holds no checkpoint (`latest`: {e})", path.display()),
    }
}

pub fn extract_codes(args: ExtractCodesArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let kind = resolve_backend(args.backend)?;
    with_backend!(kind, |device: B| run_extract::<B>(&args, &device))
}

fn load_vq<B: Backend>(path: &Path, device: &B::Device) -> Result<VqModel<B>> {
    let sd = llamagen::checkpoint::StateDict::open(
        path,
        llamagen::checkpoint::WeightsChoice::PreferEma,
    )?;
    let cfg = sd
        .infer_vq_config()
        .with_context(|| format!("tokenizer {}", path.display()))?;
    VqModel::load(&sd, &cfg, device).with_context(|| format!("tokenizer {}", path.display()))
}

fn run_extract<B: Backend>(args: &ExtractCodesArgs, device: &B::Device) -> Result<()> {
    let data = ImageFolder::open(&args.data)?;
    let vq_path = resolve_weights(&args.vq_ckpt)?;
    let vq = load_vq::<B>(&vq_path, device)?;
    let cfg = &vq.config;
    if cfg.codebook_size > u16::MAX as usize + 1 {
        bail!("codebooks over 65536 entries are not supported by the codes file");
    }
    let size = args.image_size;
    if size as usize % cfg.downsample() != 0 {
        bail!(
            "--image-size {size} does not divide by the tokenizer's downsampling ({})",
            cfg.downsample()
        );
    }
    let grid = size as usize / cfg.downsample();
    if args.ten_crop && !args.mirror {
        bail!("--mirror false applies to the centre crop: pass it with --ten-crop false");
    }
    let num_aug = match (args.ten_crop, args.mirror) {
        (true, _) => 10,
        (false, true) => 2,
        (false, false) => 1,
    };
    // On a terminal a bar; in a log, a line every 5000 images with the rate and ETA.
    let progress = Progress::counting(0, data.len() as u64, 5000, "images");
    let mut labels = Vec::with_capacity(data.len());
    let mut codes = Vec::with_capacity(data.len() * num_aug * grid * grid);
    let per_batch = (args.batch_size / num_aug).max(1);
    let items: Vec<usize> = (0..data.len()).collect();
    for chunk in items.chunks(per_batch) {
        let mut crops = Vec::with_capacity(chunk.len() * num_aug);
        for &i in chunk {
            let im = data.image(i)?;
            if args.ten_crop {
                crops.extend(ten_crop(&im, size, args.crop_range));
            } else {
                let c = llamagen::train::data::center_crop(&im, size);
                let mirrored = args.mirror.then(|| image::imageops::flip_horizontal(&c));
                crops.push(c);
                crops.extend(mirrored);
            }
            labels.push(data.label(i) as u32);
        }
        let (_, idx) = vq.encode(images_to_tensor::<B>(&crops, device));
        let v = idx
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("ints");
        codes.extend(v.into_iter().map(|c| c as u16));
        progress.step(labels.len() as u64, 0, String::new());
    }
    progress.finish();
    let captions_path = args.data.join(CAPTIONS_FILE);
    let captions = if captions_path.is_file() {
        let c = captions_in_folder_order(&captions_path, &data.classes, &labels)?;
        eprintln!(
            "captions from {} kept with the codes",
            captions_path.display()
        );
        c
    } else {
        Vec::new()
    };
    let set = CodeSet {
        meta: CodesMeta {
            num_images: data.len(),
            num_aug,
            seq_len: grid * grid,
            codebook_size: cfg.codebook_size,
            image_size: size as usize,
            class_names: data.classes.clone(),
            tokenizer: vq_path.display().to_string(),
            captions,
        },
        labels,
        codes,
    };
    set.write(&args.out)?;
    let used = {
        let mut seen = vec![false; cfg.codebook_size];
        for &c in &set.codes {
            seen[c as usize] = true;
        }
        seen.iter().filter(|&&s| s).count()
    };
    eprintln!(
        "{} images × {num_aug} crops → {}×{} codes each; {used} of {} codebook entries used; wrote {}",
        data.len(),
        grid,
        grid,
        cfg.codebook_size,
        args.out.display()
    );
    Ok(())
}

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

/// `--replicas`: a whole number of at least 1.
fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("at least one replica is needed".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// The devices of the data-parallel replicas: `--replicas N`, or by default one per CPU core
/// on the CPU backend and one per GPU with cuda (1 on wgpu), never more than the batch size.
/// With cuda, replica i runs on GPU i (cycling); otherwise all run on `device`.
fn replica_plan<B: Backend>(
    asked: Option<usize>,
    kind: BackendKind,
    device: &B::Device,
    batch_size: usize,
) -> Vec<B::Device> {
    let gpus = match kind {
        BackendKind::Cuda => B::device_count(device.id().type_id),
        _ => 1,
    };
    let n = match asked {
        Some(n) => n,
        None if kind == BackendKind::Cpu => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        None => gpus,
    };
    let devices = llamagen::train::replica_devices(device, n.clamp(1, batch_size.max(1)), gpus);
    if devices.len() > 1 {
        let mut names: Vec<String> = Vec::new();
        for name in devices.iter().map(|d| format!("{d:?}")) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        eprintln!(
            "{} data-parallel replicas on {}",
            devices.len(),
            names.join(", ")
        );
    }
    devices
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
            GptTrainer::new(&cfg, opts, device)?
        }
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

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Output file (burn record, .mpk).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the training images (held-out images use another).
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
    /// Train on degraded copies (blur, coarser resampling, contrast and colour shifts, noise),
    /// so that the classifier judges the shape and looks past a tokenizer's softer edges.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,
}

/// Seeds the CPU backend with `seed`, then makes the network with `init` and trains it with a
/// progress bar; returns it for inference.
fn fit_shape_net<M>(
    init: impl FnOnce(&burn::tensor::Device<llamagen::backend::Cpu>) -> M,
    steps: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    augment: bool,
) -> M::InnerModule
where
    M: classifier::ShapeNet<Autodiff<llamagen::backend::Cpu>>
        + AutodiffModule<Autodiff<llamagen::backend::Cpu>>,
{
    type B = llamagen::backend::Cpu;
    let device = Default::default();
    B::seed(&device, seed);
    let model = init(&device);
    let progress = Progress::new(0, steps as u64, 100);
    let model = classifier::train_net(
        model,
        steps,
        batch,
        lr,
        seed,
        augment,
        &device,
        |step, loss| progress.step(step as u64 + 1, 0, format!("loss {loss:.4}")),
    );
    progress.bar.finish_and_clear();
    model.valid()
}

pub fn train_classifier(args: TrainClassifierArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let device = Default::default();
    let model = fit_shape_net(
        ShapeClassifier::init,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.augment,
    );
    let clean = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, false);
    let degraded = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, true);
    model.save(&args.out)?;
    println!(
        "held-out accuracy {:.2}% as drawn, {:.2}% degraded (100 images per class, seed {}); wrote {}",
        clean * 100.0,
        degraded * 100.0,
        args.seed + 7919,
        args.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct TrainPerceptualArgs {
    /// Output file (burn record, .mpk).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the training images (held-out images use another). The default differs from
    /// train-classifier's, so the network that shapes a tokenizer and the classifiers that
    /// score it learn from different drawings.
    #[arg(long, default_value_t = 2000)]
    pub seed: u64,
}

/// Trains on images as drawn (no degradations: the features must notice blur, which is what
/// the perceptual loss is for).
pub fn train_perceptual(args: TrainPerceptualArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let device = Default::default();
    let model = fit_shape_net(
        PerceptualNet::init,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        false,
    );
    let clean = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, false);
    model.save(&args.out)?;
    println!(
        "held-out accuracy {:.2}% (100 images per class, seed {}); wrote {}",
        clean * 100.0,
        args.seed + 7919,
        args.out.display()
    );
    Ok(())
}

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
    #[arg(long, value_enum, default_value_t = crate::commands::PrecisionArg::F32)]
    pub precision: crate::commands::PrecisionArg,
    /// Quantization of the generator's linear layers (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = crate::commands::QuantizeArg::None)]
    pub quantize: crate::commands::QuantizeArg,
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
        precision: crate::commands::resolve_precision::<B>(args.precision, &device)?,
        quantize: args.quantize.into(),
        ..Default::default()
    };
    let bundle = crate::commands::load_bundle_or_demo::<B>(
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

#[derive(Args, Debug)]
pub struct InitT5Args {
    /// Captions file (`class/file<TAB>caption` a line, as `llamagen dataset shapes` writes):
    /// its words make the vocabulary.
    #[arg(long)]
    pub captions: PathBuf,
    /// Output model folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Width of the features (the generator's caption dimension).
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn init_t5(args: InitT5Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.captions)
        .with_context(|| format!("cannot read {}", args.captions.display()))?;
    let captions: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, c)| c))
        .collect();
    if captions.is_empty() {
        bail!(
            "{} holds no `file<TAB>caption` lines",
            args.captions.display()
        );
    }
    let words = llamagen::text::init::caption_words(captions.iter().copied());
    let cfg = llamagen::text::init::write_t5_folder(
        &args.out,
        &words,
        args.d_model,
        args.layers,
        args.heads,
        args.seed,
    )?;
    eprintln!(
        "{} words from {} captions; T5 encoder d_model {}, {} layers, {} heads, {} parameters (seed {}); wrote {}",
        words.len(),
        captions.len(),
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_params(),
        args.seed,
        args.out.display()
    );
    Ok(())
}
