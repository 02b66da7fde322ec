//! `llamagen inspect`: a checkpoint's inferred configuration, parameters and problems, or a named
//! configuration's exact parameter count.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use llamagen::checkpoint::{GptHints, StateDict, WeightsChoice};
use llamagen::config::{GptConfig, ModelType, VqConfig};
use llamagen::{Precision, Quantize};
use serde_json::json;

use crate::args::{PrecisionArg, QuantizeArg};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Kind {
    /// Decide from the tensor names.
    Auto,
    /// A generator (GPT) checkpoint.
    Gpt,
    /// An image tokenizer (VQ) checkpoint.
    Vq,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint file (.pt, .pth or .safetensors).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub checkpoint: Option<PathBuf>,
    /// A named configuration instead of a file: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL,
    /// GPT-1B, GPT-3B, GPT-7B, VQ-16 or VQ-8.
    #[arg(long)]
    pub config: Option<String>,
    /// Model type of a named GPT configuration: c2i (1000 classes) or t2i (FLAN-T5-XL
    /// captions, 2048-dim, 120 condition tokens).
    #[arg(long = "type", default_value = "c2i")]
    pub model_type: String,
    /// Number of classes of a named c2i configuration.
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// Codebook size (GPT vocabulary).
    #[arg(long, default_value_t = 16384)]
    pub vocab_size: usize,
    /// What the checkpoint holds.
    #[arg(long, value_enum, default_value_t = Kind::Auto)]
    pub kind: Kind,
    /// Image size in pixels (GPT checkpoints; default: from the file name, else 256).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Named GPT size, when the width alone does not say it.
    #[arg(long)]
    pub gpt_model: Option<String>,
    /// Number of attention heads, for a GPT width that is not a named size.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Tokenizer downsampling factor, for the token grid of a GPT checkpoint.
    #[arg(long, default_value_t = 16)]
    pub downsample: usize,
    /// Read the `ema` weights of a training checkpoint when present.
    #[arg(long)]
    pub ema: bool,
    /// Float type of a GPT's weights for `weights_bytes` (f32, f16 or bf16; computed from
    /// the configuration, nothing is allocated).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Quantization of a GPT's linear layers for `weights_bytes` (as a GPU holds them).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    pub quantize: QuantizeArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let quantize: Quantize = args.quantize.into();
    let precision = match args.precision {
        PrecisionArg::Auto => {
            bail!("inspect takes f32, f16 or bf16: auto depends on the device a model runs on")
        }
        p => PrecisionArg::exact(p).expect("not auto"),
    };
    if let Some(name) = args.config {
        let model_type: ModelType = args.model_type.parse()?;
        inspect_named(
            &name,
            model_type,
            args.num_classes,
            args.vocab_size,
            (precision, quantize),
            args.json,
        )
    } else {
        let path = args
            .checkpoint
            .expect("clap requires a checkpoint without --config");
        let hints = GptHints {
            image_size: args.image_size,
            downsample: Some(args.downsample),
            gpt_model: args.gpt_model,
            n_head: args.n_head,
            ..GptHints::default()
        };
        inspect_file(
            &path,
            args.kind,
            &hints,
            args.ema,
            (precision, quantize),
            args.json,
        )
    }
}

/// A GPT configuration's description; `weights_bytes` is what its weights take in `precision`
/// with the linear layers quantized by `quantize` (on a GPU; the CPU keeps the norms' few
/// weights in f32, and 4-bit values in a byte each).
fn gpt_json(cfg: &GptConfig, (precision, quantize): Held) -> serde_json::Value {
    json!({
        "precision": precision.name(),
        "quantize": quantize.name(),
        "weights_bytes": llamagen::quant::weights_bytes(cfg, precision, quantize),
        "kind": "gpt",
        "name": cfg.size_name(),
        "config": cfg,
        "head_dim": cfg.head_dim(),
        "ffn_hidden_dim": cfg.ffn_hidden_dim(),
        "grid_size": cfg.grid_size(),
        "parameters": cfg.num_params(),
    })
}

fn vq_json(cfg: &VqConfig) -> serde_json::Value {
    json!({
        "kind": "vq",
        "name": cfg.size_name(),
        "config": cfg,
        "downsample": cfg.downsample(),
        "parameters": cfg.num_params(),
    })
}

fn print_summary(v: &serde_json::Value) {
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["name"].as_str().unwrap_or("custom");
    let params = v["parameters"].as_u64().unwrap_or(0);
    println!(
        "{} {name}: {} parameters ({:.1}M)",
        kind.to_uppercase(),
        group(params),
        params as f64 / 1e6
    );
    if let Some(cfg) = v["config"].as_object() {
        for (k, val) in cfg {
            println!("  {k:<20} {val}");
        }
    }
    if let (Some(bytes), Some(p)) = (v["weights_bytes"].as_u64(), v["precision"].as_str()) {
        let held = match v["quantize"].as_str() {
            Some(q) if q != "none" => format!("{p}+{q}"),
            _ => p.to_string(),
        };
        println!("  weights in {held:<11} {:.2} GB", bytes as f64 / 1e9);
    }
    for extra in ["head_dim", "ffn_hidden_dim", "grid_size", "downsample"] {
        if let Some(val) = v.get(extra) {
            println!("  {extra:<20} {val}");
        }
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The precision and quantization `weights_bytes` is computed for.
type Held = (Precision, Quantize);

fn inspect_named(
    name: &str,
    model_type: ModelType,
    num_classes: usize,
    vocab_size: usize,
    held: Held,
    as_json: bool,
) -> Result<()> {
    let value = if name.to_ascii_uppercase().starts_with("VQ") {
        vq_json(&VqConfig::named(name)?)
    } else {
        let mut cfg = GptConfig::named(name)?;
        cfg.num_classes = num_classes;
        cfg.vocab_size = vocab_size;
        if model_type == ModelType::T2i {
            cfg = cfg.into_t2i();
        }
        gpt_json(&cfg, held)
    };
    if as_json {
        println!("{value}");
    } else {
        print_summary(&value);
    }
    Ok(())
}

fn inspect_file(
    path: &PathBuf,
    kind: Kind,
    hints: &GptHints,
    ema: bool,
    held: Held,
    as_json: bool,
) -> Result<()> {
    let choice = if ema {
        WeightsChoice::PreferEma
    } else {
        WeightsChoice::Model
    };
    let sd =
        StateDict::open(path, choice).with_context(|| format!("cannot open {}", path.display()))?;
    let kind = match kind {
        Kind::Auto if sd.contains("tok_embeddings.weight") => Kind::Gpt,
        Kind::Auto if sd.contains("encoder.conv_in.weight") => Kind::Vq,
        Kind::Auto => bail!(
            "{} holds neither a LlamaGen GPT (tok_embeddings.weight) nor a VQ tokenizer \
             (encoder.conv_in.weight); pass --kind gpt or --kind vq to see what is missing",
            path.display()
        ),
        k => k,
    };
    let (mut value, specs) = match kind {
        Kind::Gpt => {
            let cfg = sd.infer_gpt_config(hints).map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nhint: pass --gpt-model (or --n-head) and --image-size when the file does not say them"
                )
            })?;
            (gpt_json(&cfg, held), cfg.state_dict_specs())
        }
        _ => {
            let cfg = sd.infer_vq_config()?;
            (vq_json(&cfg), cfg.state_dict_specs())
        }
    };
    let report = sd.check(&specs);
    let mut dtypes: Vec<String> = sd
        .keys()
        .filter_map(|k| sd.dtype(k))
        .map(|d| format!("{d:?}"))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    let problems: Vec<String> = report
        .missing
        .iter()
        .map(|k| format!("missing: {k}"))
        .chain(report.unexpected.iter().map(|k| format!("unexpected: {k}")))
        .chain(report.mismatched.iter().map(|m| format!("shape: {m}")))
        .collect();
    value["file"] = json!(path.display().to_string());
    value["weights"] = json!(sd.wrapper);
    value["tensors"] = json!(sd.len());
    value["dtypes"] = json!(dtypes);
    value["problems"] = json!(problems);
    if as_json {
        println!("{value}");
    } else {
        println!(
            "{} ({} tensors under '{}', dtype {})",
            path.display(),
            sd.len(),
            sd.wrapper,
            dtypes.join(", ")
        );
        print_summary(&value);
        if problems.is_empty() {
            println!("no problems found");
        } else {
            println!("{} problem(s):", problems.len());
            for p in &problems {
                println!("  {p}");
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} does not match the inferred configuration ({} problem(s))",
            path.display(),
            problems.len()
        );
    }
    Ok(())
}
