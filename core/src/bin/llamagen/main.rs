//! `llamagen`: the headless command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod args;
mod bench;
mod card;
mod common;
mod convert;
mod dataset;
mod decoding;
#[cfg(feature = "train")]
mod eval_classes;
#[cfg(feature = "train")]
mod extract_codes;
mod generate;
mod hints;
mod info;
#[cfg(feature = "train")]
mod init_t5;
mod inspect;
#[cfg(feature = "train")]
mod interrupt;
mod quantize;
mod reconstruct;
mod sample;
#[cfg(feature = "train")]
mod train_classifier;
#[cfg(feature = "train")]
mod train_gpt;
#[cfg(feature = "train")]
mod train_perceptual;
#[cfg(feature = "train")]
mod train_vq;
#[cfg(feature = "train")]
mod training;
use args::StoredFloatArg;
use bench::BenchArgs;
use generate::GenerateArgs;

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
    Reconstruct(reconstruct::ReconstructArgs),
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
        /// How the float tensors are stored: f32, or f16 / bf16 at half the size (they load
        /// back into whatever precision is asked for).
        #[arg(long, value_enum, default_value_t = StoredFloatArg::F32)]
        dtype: StoredFloatArg,
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
    TrainVq(Box<train_vq::TrainVqArgs>),
    /// Turn an image folder into token grids with a trained tokenizer (ten crops + flips).
    #[cfg(feature = "train")]
    ExtractCodes(extract_codes::ExtractCodesArgs),
    /// Train the generator on extracted codes (AdamW, class dropout for guidance).
    #[cfg(feature = "train")]
    TrainGpt(Box<train_gpt::TrainGptArgs>),
    /// Make a small T5-style text encoder for a caption set (word vocabulary, weights from a
    /// seed), for text-conditional models trained with no download.
    #[cfg(feature = "train")]
    #[command(
        after_help = "Example (the bundled text demo's encoder):\n  llamagen init-t5 --captions data/shapes/captions.tsv --out runs/t5 --d-model 64 --layers 2 --heads 4"
    )]
    InitT5(init_t5::InitT5Args),
    /// Train the small classifier of the procedural shapes (for eval-classes).
    #[cfg(feature = "train")]
    TrainClassifier(train_classifier::TrainClassifierArgs),
    /// Train a small VGG-style network on the procedural shapes whose features stand in for
    /// LPIPS's ImageNet VGG16 in `train-vq --perceptual-net` (when those weights are not at hand).
    #[cfg(feature = "train")]
    #[command(
        after_help = "Example (the bundled demo tokenizer's perceptual network):\n  llamagen train-perceptual --out runs/perceptual.mpk --steps 1500 --lr 2e-3"
    )]
    TrainPerceptual(train_perceptual::TrainPerceptualArgs),
    /// Measure how often generations show the class asked for (procedural-shape models).
    #[cfg(feature = "train")]
    EvalClasses(eval_classes::EvalClassesArgs),
    /// Write a model card so a generator + tokenizer pair loads as one project model.
    Card(card::CardArgs),
    /// Describe a checkpoint (inferred configuration, parameters, dtype, problems) or a named
    /// configuration (exact parameter count, nothing allocated).
    #[command(
        after_help = "Examples:\n  llamagen inspect c2i_L_384.pt\n  llamagen inspect vq_ds16_c2i.pt --json\n  llamagen inspect --config GPT-XL --type t2i"
    )]
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread starts.
    unsafe {
        llamagen::backend::quiet_display_probe();
        llamagen::backend::reuse_freed_memory();
    }
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
        Command::Generate(args) => generate::generate(*args),
        Command::Sample(args) => sample::sample(*args),
        Command::Info { png, json } => info::info(&png, json),
        Command::Reconstruct(args) => reconstruct::reconstruct(args),
        Command::Convert {
            input,
            output,
            ema,
            force,
            dtype,
        } => convert::convert(&input, &output, ema, force, dtype.into()),
        Command::Bench(args) => bench::bench(args),
        Command::Quantize(args) => quantize::quantize(args),
        Command::Dataset(DatasetCommand::Shapes {
            out,
            per_class,
            seed,
            size,
        }) => dataset::dataset_shapes(&out, per_class, seed, size),
        #[cfg(feature = "train")]
        Command::TrainVq(args) => train_vq::train_vq(*args),
        #[cfg(feature = "train")]
        Command::ExtractCodes(args) => extract_codes::extract_codes(args),
        #[cfg(feature = "train")]
        Command::TrainGpt(args) => train_gpt::train_gpt(*args),
        #[cfg(feature = "train")]
        Command::TrainClassifier(args) => train_classifier::train_classifier(args),
        #[cfg(feature = "train")]
        Command::TrainPerceptual(args) => train_perceptual::train_perceptual(args),
        #[cfg(feature = "train")]
        Command::InitT5(args) => init_t5::init_t5(args),
        #[cfg(feature = "train")]
        Command::EvalClasses(args) => eval_classes::eval_classes(args),
        Command::Card(args) => card::write_card(args),
        Command::Inspect(args) => inspect::inspect(args),
    }
}
