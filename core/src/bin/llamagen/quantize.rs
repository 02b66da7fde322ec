//! `llamagen quantize`: a generator's linear layers quantized once and saved, so that the file
//! loads again (`generate --gpt-ckpt FILE`) without re-quantizing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use llamagen::backend::Cpu;
use llamagen::checkpoint::{GptHints, StateDict, WeightsChoice};
use llamagen::gpt::Transformer;
use llamagen::{Precision, Quantize};

use crate::args::QuantizeArg;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  llamagen quantize --gpt-ckpt c2i_XL_384.pt --image-size 384 --quantize q4 --out c2i_XL_384-q4.safetensors\n  llamagen generate --gpt-ckpt c2i_XL_384-q4.safetensors --vq-ckpt vq_ds16_c2i.pt --class 207\n\nThe values and their scales are stored as they are held (8-bit values, or two 4-bit values a byte, and one f32 scale per 32 weights); everything else is stored in f32. Without --gpt-ckpt, the bundled demo generator is quantized."
)]
pub struct QuantizeArgs {
    /// The generator: an official .pt file or a .safetensors file. Default: the bundled demo.
    #[arg(long)]
    pub gpt_ckpt: Option<PathBuf>,
    /// q8 or q4.
    #[arg(long, value_enum)]
    pub quantize: QuantizeArg,
    /// The quantized generator (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Named GPT size (GPT-B … GPT-3B), for widths that do not say it.
    #[arg(long)]
    pub gpt_model: Option<String>,
    /// Attention heads, for a GPT width that is not a named size.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Image side in pixels (default: from the file name, `…_384.pt`, else 256).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Take the `ema` weights of a training checkpoint when present.
    #[arg(long)]
    pub ema: bool,
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let q: Quantize = args.quantize.into();
    if q == Quantize::None {
        bail!("--quantize none leaves nothing to do: pass q8 or q4");
    }
    if !args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "{}: the quantized generator is written as a .safetensors file",
            args.out.display()
        );
    }
    let input = match &args.gpt_ckpt {
        Some(p) => p.clone(),
        None => demo_generator()?,
    };
    if same_file(&input, &args.out) {
        bail!("--out would replace the input {}", input.display());
    }
    let choice = if args.ema {
        WeightsChoice::PreferEma
    } else {
        WeightsChoice::Model
    };
    let sd = StateDict::open(&input, choice)
        .with_context(|| format!("cannot open {}", input.display()))?;
    let hints = GptHints {
        image_size: args.image_size,
        gpt_model: args.gpt_model.clone(),
        n_head: args.n_head,
        ..GptHints::default()
    };
    let cfg = sd.infer_gpt_config(&hints).map_err(|e| {
        anyhow!(
            "{e}\nhint: pass --gpt-model (or --n-head) and --image-size when the file does not say them"
        )
    })?;
    let device = Default::default();
    let model = Transformer::<Cpu>::load_with(&sd, &cfg, Precision::F32, q, &device)?;
    drop(sd);
    llamagen::checkpoint::write_gpt(&model, &args.out)?;
    let (before, after) = (
        std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0),
        std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0),
    );
    eprintln!(
        "wrote {} ({}, linear layers {q}): {:.1} MB, from {:.1} MB",
        args.out.display(),
        cfg.size_name().unwrap_or("GPT"),
        after as f64 / 1e6,
        before as f64 / 1e6
    );
    Ok(())
}

fn demo_generator() -> Result<PathBuf> {
    let card_path = llamagen::bundle::demo_card_path()
        .ok_or_else(|| anyhow!("no --gpt-ckpt given and the bundled demo model was not found"))?;
    let card = llamagen::bundle::ModelCard::read(&card_path)?;
    Ok(card_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(card.gpt_file))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
