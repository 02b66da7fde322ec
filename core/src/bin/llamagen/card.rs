//! `llamagen card`: a model card for a generator + tokenizer pair.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use llamagen::bundle::{ModelBundle, ModelCard};
use llamagen::checkpoint::{StateDict, StoredFloat, WeightsChoice};
use llamagen::config::{GptConfig, ModelType};
use llamagen::sampling::SamplerParams;
use llamagen::text::T5Folder;

use crate::args::StoredFloatArg;

#[derive(Args, Debug)]
pub struct CardArgs {
    /// Generator: a train-gpt run folder (its latest checkpoint) or a .safetensors file.
    #[arg(long)]
    pub gpt: PathBuf,
    /// Tokenizer: a train-vq run folder or a .safetensors file.
    #[arg(long)]
    pub vq: PathBuf,
    /// Output folder: gpt.safetensors, vq.safetensors, model.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "llamagen-model")]
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Attention heads (only when --gpt is a file, not a run folder).
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Default guidance scale stored in the card.
    #[arg(long, default_value_t = 4.0)]
    pub cfg_scale: f32,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// A command that made the weights (repeatable), recorded for reproduction.
    #[arg(long = "trained-with")]
    pub trained_with: Vec<String>,
    /// Text encoder of a text-conditional generator: its T5 folder is copied to OUT/t5 and
    /// named in the card, so prompts work without --t5.
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// Name a tokenizer file already in place, relative to OUT (e.g. ../demo/vq.safetensors),
    /// instead of copying --vq; it must hold the same weights.
    #[arg(long)]
    pub share_vq: Option<String>,
    /// How the generator's float weights are stored in OUT/gpt.safetensors: f32 (copied as
    /// trained), or f16 / bf16 at half the size; they load back into the precision asked for.
    #[arg(long, value_enum, default_value_t = StoredFloatArg::F32)]
    pub gpt_dtype: StoredFloatArg,
}

/// A run folder's latest checkpoint directory, or `None` for a plain file.
fn run_checkpoint(path: &Path) -> Result<Option<PathBuf>> {
    llamagen::bundle::run_folder_checkpoint(path)
        .map_err(|e| anyhow!("{}: not a training run folder ({e})", path.display()))
}

/// The `state.json` of a training checkpoint directory (step, configuration, options).
pub(crate) fn read_run_state(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn write_card(args: CardArgs) -> Result<()> {
    let (gpt_file, gpt_state) = match run_checkpoint(&args.gpt)? {
        Some(dir) => (dir.join("model.safetensors"), Some(read_run_state(&dir)?)),
        None => (args.gpt.clone(), None),
    };
    let vq_file = match run_checkpoint(&args.vq)? {
        Some(dir) => dir.join("model.safetensors"),
        None => args.vq.clone(),
    };
    let vq_sd = StateDict::open(&vq_file, WeightsChoice::Model)?;
    let vq_config = vq_sd.infer_vq_config()?;
    let (gpt_config, class_names, image_size) = match &gpt_state {
        Some(state) => {
            let cfg: GptConfig = serde_json::from_value(state["config"].clone())?;
            let names: Vec<String> = serde_json::from_value(state["extra"]["class_names"].clone())
                .unwrap_or_else(|_| (0..cfg.num_classes).map(|i| format!("class {i}")).collect());
            let size = cfg.grid_size() * vq_config.downsample();
            (cfg, names, size)
        }
        None => {
            let sd = StateDict::open(&gpt_file, WeightsChoice::Model)?;
            let hints = llamagen::checkpoint::GptHints {
                downsample: Some(vq_config.downsample()),
                n_head: args.n_head,
                ..Default::default()
            };
            let cfg = sd.infer_gpt_config(&hints)?;
            let names = (0..cfg.num_classes).map(|i| format!("class {i}")).collect();
            let size = cfg.grid_size() * vq_config.downsample();
            (cfg, names, size)
        }
    };
    std::fs::create_dir_all(&args.out)?;
    match args.gpt_dtype.into() {
        StoredFloat::F32 => {
            std::fs::copy(&gpt_file, args.out.join("gpt.safetensors"))
                .with_context(|| format!("copying {}", gpt_file.display()))?;
        }
        stored => {
            crate::convert::rewrite(
                &gpt_file,
                &args.out.join("gpt.safetensors"),
                WeightsChoice::Model,
                stored,
            )
            .with_context(|| format!("storing {} as {stored}", gpt_file.display()))?;
        }
    }
    let vq_name = match &args.share_vq {
        Some(rel) => {
            let shared = args.out.join(rel);
            let same = std::fs::read(&shared)
                .with_context(|| format!("--share-vq: cannot read {}", shared.display()))?
                == std::fs::read(&vq_file)
                    .with_context(|| format!("cannot read {}", vq_file.display()))?;
            if !same {
                bail!(
                    "--share-vq {rel}: {} does not hold the weights of {}",
                    shared.display(),
                    vq_file.display()
                );
            }
            rel.clone()
        }
        None => {
            std::fs::copy(&vq_file, args.out.join("vq.safetensors"))
                .with_context(|| format!("copying {}", vq_file.display()))?;
            "vq.safetensors".to_string()
        }
    };
    let t5_dir = match &args.t5 {
        Some(dir) => {
            let folder = T5Folder::open(dir)?;
            if folder.config.d_model != gpt_config.caption_dim
                || gpt_config.model_type != ModelType::T2i
            {
                bail!(
                    "--t5 {}: the generator is not a text-conditional model with {}-dimensional captions",
                    dir.display(),
                    folder.config.d_model
                );
            }
            let target = args.out.join("t5");
            std::fs::create_dir_all(&target)?;
            for file in ["config.json", "tokenizer.json", "model.safetensors"] {
                std::fs::copy(dir.join(file), target.join(file)).with_context(|| {
                    format!(
                        "copying {} (the card takes single-file T5 folders)",
                        dir.join(file).display()
                    )
                })?;
            }
            Some("t5".to_string())
        }
        None => None,
    };
    let card = ModelCard {
        name: args.name.clone(),
        description: args.description.clone(),
        gpt_file: "gpt.safetensors".into(),
        gpt_config,
        vq_file: vq_name,
        vq_config,
        image_size,
        class_names,
        sampler: SamplerParams {
            cfg_scale: args.cfg_scale,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            ..SamplerParams::default()
        },
        trained_with: args.trained_with.clone(),
        t5_dir,
    };
    let path = args.out.join("model.json");
    card.write(&path)?;
    // Check that it loads as a whole before saying so.
    ModelBundle::<llamagen::backend::Cpu>::from_card(&path, &Default::default())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
