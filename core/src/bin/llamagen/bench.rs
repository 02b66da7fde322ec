//! `llamagen bench`: generation speed with random weights of a named configuration, and the
//! GPU work of each decode step.

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::config::{GptConfig, VqConfig};
use llamagen::generate::{Decoding, Generator, Request};
use llamagen::gpt::Transformer;
use llamagen::sampling::SamplerParams;
use llamagen::vq::VqModel;
use serde_json::json;

use crate::args::{
    BackendArg, PrecisionArg, QuantizeArg, resolve_backend, resolve_precision, with_backend,
};
use crate::decoding::DecodeArgs;

#[derive(Args, Debug)]
#[command(
    after_help = "JSON fields (--json): seconds and tokens_per_s of a whole generation \
(median of --runs); decode_steps_per_s (tokens per image / seconds); host_syncs_per_step \
(device-to-host reads); precision and weights_bytes (the generator's weights as held); on GPU \
backends kernel_launches_per_step, compilations_after_warmup and autotunes_after_warmup, read \
from CubeCL's own loggers (null on the CPU, with --no-counts, or when a cubecl.toml already sets \
CubeCL's configuration). Per-step counts are the difference of two generations stopped at 1/4 \
and 3/4 of the tokens, so the prefill cancels out. The launch logger costs host time on every \
launch: quote steps/s from a run with --no-counts. vq_decode_seconds and vq_encode_seconds: \
the tokenizer's decode of the generated grids and its encode of those images (medians).\n\n\
--vq-only times the tokenizer alone (random codes, random weights; no generator): \
vq_decode_seconds, vq_encode_seconds, images_per_s for each, decode_peak_rss_bytes (after one \
decode, before any encode) and peak_rss_bytes (the process's \
peak resident memory, Linux).\n\nExamples:\n  llamagen bench \
--config GPT-B --grid 4 --batch 1 --backend wgpu --warmup 1 --json\n  llamagen bench --vq-only \
--vq VQ-16 --image-size 256 --batch 8 --runs 3 --json"
)]
pub struct BenchArgs {
    /// Named generator configuration.
    #[arg(long, default_value = "GPT-B")]
    pub config: String,
    /// Token grid side (16 → 256 tokens per image).
    #[arg(long, default_value_t = 16, conflicts_with = "image_size")]
    pub grid: usize,
    /// Image side in pixels, instead of --grid (a multiple of the tokenizer's downsampling).
    #[arg(long, value_name = "PIXELS")]
    pub image_size: Option<usize>,
    /// Time the tokenizer alone: decode of random codes and encode of the images, at --batch
    /// and --image-size (or --grid).
    #[arg(long)]
    pub vq_only: bool,
    /// With --vq-only: decode in tiles of N×N codes (see `llamagen generate --help`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub vq_tile: Option<u32>,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// CFG scale (> 1 doubles the batch, as in real use).
    #[arg(long, default_value_t = 4.0)]
    pub cfg_scale: f32,
    /// Tokenizer configuration for the decode timing (VQ-16 or VQ-8).
    #[arg(long, default_value = "VQ-16")]
    pub vq: String,
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Whole generations run before anything is timed or counted (kernels compiled, autotuned).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Float type of the generator's weights, and on GPUs the tokenizer's (see `llamagen
    /// generate --help`).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Quantization of the generator's linear layers (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    pub quantize: QuantizeArg,
    /// Leave CubeCL's loggers off: no per-step counts, and no logging cost in the timings.
    #[arg(long)]
    pub no_counts: bool,
    /// Also time one forward pass over each of these numbers of tokens (comma-separated, e.g.
    /// 1,2,4,8,17), with the logits read back: what a pass of speculative decoding costs.
    #[arg(long, value_delimiter = ',', value_name = "N,N,…")]
    pub pass_lengths: Vec<usize>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(mut args: BenchArgs) -> Result<()> {
    if let Some(size) = args.image_size {
        let ds = VqConfig::named(&args.vq)?.downsample();
        if size == 0 || size % ds != 0 {
            bail!(
                "--image-size {size} is not a multiple of {}'s downsampling ({ds} pixels a token)",
                args.vq
            );
        }
        args.grid = size / ds;
    }
    if args.grid < 2 {
        bail!("--grid must be at least 2 (4 tokens per image)");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.vq_only {
        let kind = resolve_backend(args.backend)?;
        return with_backend!(kind, |device: B| run_vq_bench::<B>(&args, kind, &device));
    }
    // CubeCL's loggers must be on before the first GPU use.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let log = match args.backend {
        _ if args.no_counts => None,
        BackendArg::Cpu => None,
        _ => llamagen::kernels::counters::KernelLog::install(),
    };
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let log: Option<()> = None;
    let kind = resolve_backend(args.backend)?;
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let counter = log
        .as_ref()
        .filter(|_| kind != BackendKind::Cpu)
        .map(|l| l as &dyn llamagen::bench::LaunchCounter);
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let counter: Option<&dyn llamagen::bench::LaunchCounter> = log.and(None);
    with_backend!(kind, |device: B| run_bench::<B>(
        &args, kind, &device, counter
    ))
}

fn run_bench<B: Backend>(
    args: &BenchArgs,
    kind: BackendKind,
    device: &B::Device,
    counter: Option<&dyn llamagen::bench::LaunchCounter>,
) -> Result<()> {
    let mut cfg = GptConfig::named(&args.config)?;
    cfg.block_size = args.grid * args.grid;
    let precision = resolve_precision::<B>(args.precision, device)?;
    let gpt = Transformer::<B>::init(&cfg, device)?
        .into_precision(precision)
        .quantized(args.quantize.into());
    let vq_cfg = VqConfig::named(&args.vq)?;
    let vq = VqModel::<B>::init(&vq_cfg, device)?;
    let decoding = args.decode.resolve(args.grid, None)?;
    let generator = Generator::new(&gpt).with_decoding(decoding);
    let requests: Vec<Request> = (0..args.batch)
        .map(|i| {
            Request::class(
                i % cfg.num_classes,
                SamplerParams {
                    cfg_scale: args.cfg_scale,
                    seed: i as u64,
                    ..SamplerParams::default()
                },
            )
        })
        .collect();
    let report = llamagen::bench::run(
        &generator,
        &vq,
        &requests,
        args.warmup,
        args.runs,
        counter,
        |s| {
            if !args.json {
                eprintln!("generation: {s:.2}s");
            }
        },
    )?;
    let seconds = report.seconds;
    let tokens = (args.batch * cfg.block_size) as f64;
    let rows = if args.cfg_scale > 1.0 {
        2 * args.batch
    } else {
        args.batch
    };
    let passes = llamagen::bench::pass_seconds(&gpt, rows, &args.pass_lengths, args.runs);
    let pass_json: serde_json::Map<String, serde_json::Value> = passes
        .iter()
        .map(|(n, s)| (n.to_string(), json!(s)))
        .collect();
    let k = report.kernels;
    let value = json!({
        "config": args.config,
        "grid": args.grid,
        "batch": args.batch,
        "cfg_scale": args.cfg_scale,
        "backend": kind.name(),
        "warmup": args.warmup,
        "runs": args.runs.max(1),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_image": cfg.block_size as f64 / seconds,
        "decode_steps_per_s": cfg.block_size as f64 / seconds,
        "host_syncs_per_step": report.host_syncs_per_step,
        "kernel_launches_per_step": k.map(|k| k.launches_per_step),
        "compilations_after_warmup": k.map(|k| k.compilations_after_warmup),
        "autotunes_after_warmup": k.map(|k| k.autotunes_after_warmup),
        "precision": precision.name(),
        "quantize": gpt.quantization().name(),
        "weights_bytes": gpt.weight_bytes(),
        "vq": args.vq,
        "vq_decode_seconds": report.vq_decode_seconds,
        "vq_encode_seconds": report.vq_encode_seconds,
        "decode": decoding.name(),
        "sjd_window": match decoding { Decoding::Sjd { window } => Some(window), _ => None },
        "zipar_window": match decoding { Decoding::Zipar { window } => Some(window), _ => None },
        "forward_passes_per_image": report.forward_passes,
        "accepted_tokens_per_pass": cfg.block_size as f64 / report.forward_passes.max(1) as f64,
        "pass_seconds_by_tokens": pass_json,
    });
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{} ({}, linear layers {}, {:.0} MB of weights) {}×{} batch {} cfg {} on {}: {:.2}s, {:.1} tokens/s per image, {:.1} tokens/s in all; {} decode {:.2}s, encode {:.2}s",
            args.config,
            precision,
            gpt.quantization(),
            gpt.weight_bytes() as f64 / 1e6,
            args.grid,
            args.grid,
            args.batch,
            args.cfg_scale,
            kind.name(),
            seconds,
            cfg.block_size as f64 / seconds,
            tokens / seconds,
            args.vq,
            report.vq_decode_seconds,
            report.vq_encode_seconds
        );
        let syncs = report.host_syncs_per_step;
        match k {
            Some(k) => println!(
                "per decode step: {:.1} kernel launches, {syncs:.2} host syncs; after warm-up: {} compilations, {} autotune runs",
                k.launches_per_step, k.compilations_after_warmup, k.autotunes_after_warmup
            ),
            None => println!("per decode step: {syncs:.2} host syncs"),
        }
        println!(
            "decoding {}: {} forward passes per image, {:.2} tokens a pass",
            decoding.describe(),
            report.forward_passes,
            cfg.block_size as f64 / report.forward_passes.max(1) as f64
        );
        if !passes.is_empty() {
            let one = passes[0].1;
            let list: Vec<String> = passes
                .iter()
                .map(|(n, s)| format!("{n}: {:.1} ms ({:.2}×)", s * 1e3, s / one))
                .collect();
            println!(
                "one pass over N tokens (batch rows {rows}): {}",
                list.join(", ")
            );
        }
    }
    Ok(())
}

/// The process's peak resident memory in bytes (`VmHWM`), where the system reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn run_vq_bench<B: Backend>(args: &BenchArgs, kind: BackendKind, device: &B::Device) -> Result<()> {
    let vq_cfg = VqConfig::named(&args.vq)?;
    let precision = resolve_precision::<B>(args.precision, device)?;
    let mut vq = VqModel::<B>::init(&vq_cfg, device)?.into_precision(precision);
    vq.set_decode_tile(args.vq_tile.map(|t| t as usize));
    let size = args.grid * vq_cfg.downsample();
    // One decode before anything else: the process's peak then is the decode's own (weights
    // included), before the encoder's larger working set raises it.
    let codes = vec![vec![0u32; args.grid * args.grid]; args.batch];
    let _ = llamagen::generate::decode_tokens(&vq, &codes, args.grid).into_data();
    let decode_peak = peak_rss_bytes();
    let report = llamagen::bench::run_vq(&vq, args.batch, args.grid, args.warmup, args.runs);
    let peak = peak_rss_bytes();
    let per_s = |s: f64| args.batch as f64 / s;
    if args.json {
        let value = json!({
            "vq": args.vq,
            "image_size": size,
            "grid": args.grid,
            "batch": args.batch,
            "backend": kind.name(),
            "warmup": args.warmup,
            "runs": args.runs.max(1),
            "threads": rayon::current_num_threads(),
            "precision": vq.precision().name(),
            "vq_tile": args.vq_tile,
            "vq_decode_seconds": report.decode_seconds,
            "vq_encode_seconds": report.encode_seconds,
            "decode_images_per_s": per_s(report.decode_seconds),
            "encode_images_per_s": per_s(report.encode_seconds),
            "decode_peak_rss_bytes": decode_peak,
            "peak_rss_bytes": peak,
        });
        println!("{value}");
    } else {
        println!(
            "{} {size}×{size} batch {} on {}: decode {:.3}s ({:.2} images/s), encode {:.3}s ({:.2} images/s){}",
            args.vq,
            args.batch,
            kind.name(),
            report.decode_seconds,
            per_s(report.decode_seconds),
            report.encode_seconds,
            per_s(report.encode_seconds),
            match (decode_peak, peak) {
                (Some(d), Some(p)) => format!(
                    ", peak memory {:.0} MB after the first decode, {:.0} MB in all",
                    d as f64 / 1e6,
                    p as f64 / 1e6
                ),
                _ => String::new(),
            }
        );
    }
    Ok(())
}
