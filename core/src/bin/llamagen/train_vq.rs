//! `llamagen train-vq`: train the image tokenizer on an image folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::config::VqConfig;
use llamagen::image_io::{make_grid, tensor_to_images};
use llamagen::train::Autodiff;
use llamagen::train::data::{ImageFolder, images_to_tensor, random_crop};
use llamagen::train::discriminator::{GanLoss, PatchGanConfig};
use llamagen::train::lpips::Lpips;
use llamagen::train::perceptual::PerceptualNet;
use llamagen::train::vq::{ReconstructionLoss, VqTrainOptions, VqTrainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::args::{BackendArg, resolve_backend, with_backend};
use crate::training::{
    Progress, check_output, check_resume, load_vq, parse_mult, parse_replicas, replica_plan,
    resolve_weights, stopped,
};

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
