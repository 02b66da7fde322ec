//! `llamagen`: the headless command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use llamagen::checkpoint::{GptHints, StateDict, WeightsChoice};
use llamagen::config::{GptConfig, ModelType, VqConfig};
use llamagen::{Precision, Quantize};
use serde_json::json;

mod bench;
mod commands;
mod decoding;
mod hints;
#[cfg(feature = "train")]
mod interrupt;
mod quantize;
mod sample;
#[cfg(feature = "train")]
mod train;
use bench::BenchArgs;
use commands::GenerateArgs;

#[derive(Parser)]
#[command(
    name = "llamagen",
    version,
    about = "LlamaGen: autoregressive image generation with a VQ tokenizer and a Llama-style transformer",
    long_about = "LlamaGen: autoregressive image generation with a VQ tokenizer and a Llama-style \
transformer.\n\nOfficial LlamaGen checkpoints (.pt) and safetensors files load by path, unchanged. \
With no checkpoint options, `generate` uses the bundled demo model (procedural shapes).",
    after_help = "The training commands (train-vq, extract-codes, train-gpt, train-classifier, eval-classes) \
exist only in builds with `--features train`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Kind {
    /// Decide from the tensor names.
    Auto,
    /// A generator (GPT) checkpoint.
    Gpt,
    /// An image tokenizer (VQ) checkpoint.
    Vq,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// The procedural shapes (circle, square, triangle, star, ring, cross, heart, stripes,
    /// checkerboard, crescent) as an image folder OUT/<class>/<index>.png, plus captions.tsv.
    Shapes {
        #[arg(long)]
        out: PathBuf,
        /// Images per class.
        #[arg(long, default_value_t = 1000)]
        per_class: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a class or a text prompt: sample tokens with the generator, decode
    /// them with the tokenizer, save PNGs that carry their parameters.
    #[command(
        after_help = "Examples:\n  llamagen generate --gpt-ckpt c2i_L_384.pt --vq-ckpt vq_ds16_c2i.pt --class 'golden retriever' --num 4\n  llamagen generate --gpt-ckpt c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt --class 207 --class 360 --seed 1 --out-dir samples/\n  llamagen generate --gpt-ckpt t2i_XL_stage1_256.pt --vq-ckpt vq_ds16_t2i.pt --t5 flan-t5-xl/ --prompt 'a corgi on the beach' --cfg-scale 7.5 --top-k 1000\n  llamagen generate --from samples/0000-207-seed1.png\n  llamagen generate --from samples/0000-a_corgi_on_the_beach-seed1.png --t5 flan-t5-xl/"
    )]
    Generate(Box<GenerateArgs>),
    /// Many images for FID: every class (or prompt) N times, written as the .npz the official
    /// evaluator reads (arr_0, uint8, [N, H, W, 3]). Resumable: the PNGs land in a folder as
    /// they are made, and the same command run again goes on from there.
    #[command(
        after_help = "Examples:\n  llamagen sample --gpt-ckpt c2i_L_384.pt --vq-ckpt vq_ds16_c2i.pt --num-per-class 50 --cfg-scale 1.65 --out c2i_L_384.npz\n  llamagen sample --gpt-ckpt c2i_B_256.pt --vq-ckpt vq_ds16_c2i.pt --num-per-class 50 --cfg-scale 2 --decode sjd --out sjd.npz\n  llamagen sample --num-per-class 20 --out demo.npz   (the bundled demo)\n\nThen, with the official evaluator: python evaluations/c2i/evaluator.py VIRTUAL_imagenet256_labeled.npz c2i_L_384.npz"
    )]
    Sample(Box<sample::SampleArgs>),
    /// Print the generation parameters embedded in a PNG written by `llamagen generate`.
    Info {
        /// PNG file.
        png: PathBuf,
        /// Print the full JSON record.
        #[arg(long)]
        json: bool,
    },
    /// Encode images to token grids with a tokenizer and decode them back: prints PSNR and the
    /// codes used, writes input | reconstruction side by side. Default: the demo tokenizer.
    #[command(
        after_help = "Examples:\n  llamagen reconstruct photo.jpg --vq-ckpt vq_ds16_c2i.pt --image-size 256 --out-dir recon/\n  llamagen reconstruct data/shapes/star/0.png --json"
    )]
    Reconstruct(commands::ReconstructArgs),
    /// Convert a checkpoint (.pt or .safetensors) to a safetensors file with the official names.
    Convert {
        /// Input checkpoint.
        input: PathBuf,
        /// Output .safetensors file.
        output: PathBuf,
        /// Take the `ema` weights of a training checkpoint when present.
        #[arg(long)]
        ema: bool,
        /// Replace the output file when it exists (without it, an existing file is refused).
        #[arg(long)]
        force: bool,
    },
    /// Measure generation speed with randomly initialised weights of a named configuration
    /// (no download): tokens/s per image and per batch, and the VQ decode time.
    Bench(BenchArgs),
    /// Quantize a generator's linear layers (q8, q4) once and save it; the file loads again
    /// without re-quantizing.
    Quantize(quantize::QuantizeArgs),
    /// Procedural data sets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Train the image tokenizer (VQ) on an image folder: reconstruction + perceptual (LPIPS) +
    /// VQ + commitment + PatchGAN adversarial losses.
    #[cfg(feature = "train")]
    #[command(
        after_help = "Example (the bundled demo tokenizer):\n  llamagen train-vq --data data/shapes --out runs/vq --config VQ-8 --ch 32 --ch-mult 1,2,2,4 --z-channels 64 --num-res-blocks 1 --norm-groups 8 --codebook-size 1024 --image-size 64 --batch-size 8 --steps 1100 --lr 2e-4 --entropy-loss-ratio 0.1 --replicas 2 --backend cpu --perceptual-net runs/perceptual.mpk --perceptual-weight 0.1"
    )]
    TrainVq(Box<train::TrainVqArgs>),
    /// Turn an image folder into token grids with a trained tokenizer (ten crops + flips).
    #[cfg(feature = "train")]
    ExtractCodes(train::ExtractCodesArgs),
    /// Train the generator on extracted codes (AdamW, class dropout for guidance).
    #[cfg(feature = "train")]
    TrainGpt(Box<train::TrainGptArgs>),
    /// Make a small T5-style text encoder for a caption set (word vocabulary, weights from a
    /// seed), for text-conditional models trained with no download.
    #[cfg(feature = "train")]
    #[command(
        after_help = "Example (the bundled text demo's encoder):\n  llamagen init-t5 --captions data/shapes/captions.tsv --out runs/t5 --d-model 64 --layers 2 --heads 4"
    )]
    InitT5(train::InitT5Args),
    /// Train the small classifier of the procedural shapes (for eval-classes).
    #[cfg(feature = "train")]
    TrainClassifier(train::TrainClassifierArgs),
    /// Train a small VGG-style network on the procedural shapes whose features stand in for
    /// LPIPS's ImageNet VGG16 in `train-vq --perceptual-net` (when those weights are not at hand).
    #[cfg(feature = "train")]
    #[command(
        after_help = "Example (the bundled demo tokenizer's perceptual network):\n  llamagen train-perceptual --out runs/perceptual.mpk --steps 1500 --lr 2e-3"
    )]
    TrainPerceptual(train::TrainPerceptualArgs),
    /// Measure how often generations show the class asked for (procedural-shape models).
    #[cfg(feature = "train")]
    EvalClasses(train::EvalClassesArgs),
    /// Write a model card so a generator + tokenizer pair loads as one project model.
    Card(commands::CardArgs),
    /// Describe a checkpoint (inferred configuration, parameters, dtype, problems) or a named
    /// configuration (exact parameter count, nothing allocated).
    #[command(
        after_help = "Examples:\n  llamagen inspect c2i_L_384.pt\n  llamagen inspect vq_ds16_c2i.pt --json\n  llamagen inspect --config GPT-XL --type t2i"
    )]
    Inspect {
        /// Checkpoint file (.pt, .pth or .safetensors).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        checkpoint: Option<PathBuf>,
        /// A named configuration instead of a file: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL,
        /// GPT-1B, GPT-3B, GPT-7B, VQ-16 or VQ-8.
        #[arg(long)]
        config: Option<String>,
        /// Model type of a named GPT configuration: c2i (1000 classes) or t2i (FLAN-T5-XL
        /// captions, 2048-dim, 120 condition tokens).
        #[arg(long = "type", default_value = "c2i")]
        model_type: String,
        /// Number of classes of a named c2i configuration.
        #[arg(long, default_value_t = 1000)]
        num_classes: usize,
        /// Codebook size (GPT vocabulary).
        #[arg(long, default_value_t = 16384)]
        vocab_size: usize,
        /// What the checkpoint holds.
        #[arg(long, value_enum, default_value_t = Kind::Auto)]
        kind: Kind,
        /// Image size in pixels (GPT checkpoints; default: from the file name, else 256).
        #[arg(long)]
        image_size: Option<usize>,
        /// Named GPT size, when the width alone does not say it.
        #[arg(long)]
        gpt_model: Option<String>,
        /// Number of attention heads, for a GPT width that is not a named size.
        #[arg(long)]
        n_head: Option<usize>,
        /// Tokenizer downsampling factor, for the token grid of a GPT checkpoint.
        #[arg(long, default_value_t = 16)]
        downsample: usize,
        /// Read the `ema` weights of a training checkpoint when present.
        #[arg(long)]
        ema: bool,
        /// Float type of a GPT's weights for `weights_bytes` (f32, f16 or bf16; computed from
        /// the configuration, nothing is allocated).
        #[arg(long, value_enum, default_value_t = commands::PrecisionArg::F32)]
        precision: commands::PrecisionArg,
        /// Quantization of a GPT's linear layers for `weights_bytes` (as a GPU holds them).
        #[arg(long, value_enum, default_value_t = commands::QuantizeArg::None)]
        quantize: commands::QuantizeArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread starts.
    unsafe { llamagen::backend::quiet_display_probe() };
    // A panic (a backend out of memory, say) is said as an error with a hint, not as a crash
    // report; RUST_BACKTRACE keeps Rust's own report for debugging.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            if llamagen::error::panic_is_contained() {
                return;
            }
            let what = llamagen::error::panic_message(info.payload());
            eprintln!(
                "error: llamagen stopped unexpectedly: {what}\nhint: if the device ran out of \
                 memory, try a smaller --batch-size; otherwise please report it with the \
                 command line (RUST_BACKTRACE=1 shows where it happened)"
            );
        }));
    }
    let matches = Cli::command().get_matches();
    let command = matches.subcommand_name().unwrap_or("").to_string();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[cfg(feature = "train")]
            if let Some(stop) = e.downcast_ref::<interrupt::Stopped>() {
                eprintln!(
                    "{stop}\nto go on from there: the same command with --resume (nothing is lost)"
                );
                return ExitCode::from(interrupt::EXIT_CODE);
            }
            let message = report(&e);
            eprintln!("error: {message}");
            if let Some(hint) = hints::hint(&e, &message, &command) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-joined, each cause left out when the message before already
/// says it (library errors often put their source's words in their own).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let words = cause.to_string();
        if out.contains(&words) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&words);
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => commands::generate(*args),
        Command::Sample(args) => sample::sample(*args),
        Command::Info { png, json } => commands::info(&png, json),
        Command::Reconstruct(args) => commands::reconstruct(args),
        Command::Convert {
            input,
            output,
            ema,
            force,
        } => commands::convert(&input, &output, ema, force),
        Command::Bench(args) => bench::bench(args),
        Command::Quantize(args) => quantize::quantize(args),
        Command::Dataset(DatasetCommand::Shapes {
            out,
            per_class,
            seed,
            size,
        }) => commands::dataset_shapes(&out, per_class, seed, size),
        #[cfg(feature = "train")]
        Command::TrainVq(args) => train::train_vq(*args),
        #[cfg(feature = "train")]
        Command::ExtractCodes(args) => train::extract_codes(args),
        #[cfg(feature = "train")]
        Command::TrainGpt(args) => train::train_gpt(*args),
        #[cfg(feature = "train")]
        Command::TrainClassifier(args) => train::train_classifier(args),
        #[cfg(feature = "train")]
        Command::TrainPerceptual(args) => train::train_perceptual(args),
        #[cfg(feature = "train")]
        Command::InitT5(args) => train::init_t5(args),
        #[cfg(feature = "train")]
        Command::EvalClasses(args) => train::eval_classes(args),
        Command::Card(args) => commands::write_card(args),
        Command::Inspect {
            checkpoint,
            config,
            model_type,
            num_classes,
            vocab_size,
            kind,
            image_size,
            gpt_model,
            n_head,
            downsample,
            ema,
            precision,
            quantize,
            json,
        } => {
            let quantize: Quantize = quantize.into();
            let precision = match precision {
                commands::PrecisionArg::Auto => bail!(
                    "inspect takes f32, f16 or bf16: auto depends on the device a model runs on"
                ),
                p => commands::PrecisionArg::exact(p).expect("not auto"),
            };
            if let Some(name) = config {
                let model_type: ModelType = model_type.parse()?;
                inspect_named(
                    &name,
                    model_type,
                    num_classes,
                    vocab_size,
                    (precision, quantize),
                    json,
                )
            } else {
                let path = checkpoint.expect("clap requires a checkpoint without --config");
                let hints = GptHints {
                    image_size,
                    downsample: Some(downsample),
                    gpt_model,
                    n_head,
                    ..GptHints::default()
                };
                inspect_file(&path, kind, &hints, ema, (precision, quantize), json)
            }
        }
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
