//! `llamagen reconstruct`: images through the tokenizer and back, with PSNR.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::bundle::{BundleError, ModelCard};
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::image_io::{image_to_tensor, make_grid, tensor_to_images};
use llamagen::vq::VqModel;
use serde_json::json;

use crate::args::{BackendArg, resolve_backend, with_backend};
use crate::card::read_run_state;

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
