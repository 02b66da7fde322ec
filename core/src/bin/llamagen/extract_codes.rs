//! `llamagen extract-codes`: an image folder to token grids (ten crops and flips).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::train::data::{
    CAPTIONS_FILE, CodeSet, CodesMeta, ImageFolder, captions_in_folder_order, images_to_tensor,
    ten_crop,
};

use crate::args::{BackendArg, resolve_backend, with_backend};
use crate::training::{Progress, check_output, load_vq, resolve_weights};

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

pub fn extract_codes(args: ExtractCodesArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let kind = resolve_backend(args.backend)?;
    with_backend!(kind, |device: B| run_extract::<B>(&args, &device))
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
