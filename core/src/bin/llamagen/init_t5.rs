//! `llamagen init-t5`: a small T5-style text encoder for a caption set.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

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
