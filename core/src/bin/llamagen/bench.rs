//! `llamagen bench`: generation speed with random weights of a named configuration, and the
//! GPU work of each decode step.

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::Args;
use llamagen::backend::BackendKind;
use llamagen::config::{GptConfig, VqConfig};
use llamagen::generate::{Generator, Request};
use llamagen::gpt::Transformer;
use llamagen::sampling::SamplerParams;
use llamagen::vq::VqModel;
use serde_json::json;

use crate::commands::{
    BackendArg, PrecisionArg, QuantizeArg, resolve_backend, resolve_precision, with_backend,
};

#[derive(Args, Debug)]
#[command(
    after_help = "JSON fields (--json): seconds and tokens_per_s of a whole generation \
(median of --runs); decode_steps_per_s (tokens per image / seconds); host_syncs_per_step \
(device-to-host reads); precision and weights_bytes (the generator's weights as held); on GPU \
backends kernel_launches_per_step, compilations_after_warmup and autotunes_after_warmup, read \
from CubeCL's own loggers (null on the CPU, with --no-counts, or when a cubecl.toml already sets \
CubeCL's configuration). Per-step counts are the difference of two generations stopped at 1/4 \
and 3/4 of the tokens, so the prefill cancels out. The launch logger costs host time on every \
launch: quote steps/s from a run with --no-counts.\n\nExample:\n  llamagen bench \
--config GPT-B --grid 4 --batch 1 --backend wgpu --warmup 1 --json"
)]
pub struct BenchArgs {
    /// Named generator configuration.
    #[arg(long, default_value = "GPT-B")]
    pub config: String,
    /// Token grid side (16 → 256 tokens per image).
    #[arg(long, default_value_t = 16)]
    pub grid: usize,
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
    /// Float type of the generator's weights (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Quantization of the generator's linear layers (see `llamagen generate --help`).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    pub quantize: QuantizeArg,
    /// Leave CubeCL's loggers off: no per-step counts, and no logging cost in the timings.
    #[arg(long)]
    pub no_counts: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.grid < 2 {
        bail!("--grid must be at least 2 (4 tokens per image)");
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
    let generator = Generator::new(&gpt);
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
    });
    if args.json {
        println!("{value}");
    } else {
        println!(
            "{} ({}, linear layers {}, {:.0} MB of weights) {}×{} batch {} cfg {} on {}: {:.2}s, {:.1} tokens/s per image, {:.1} tokens/s in all; {} decode {:.2}s",
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
            report.vq_decode_seconds
        );
        let syncs = report.host_syncs_per_step;
        match k {
            Some(k) => println!(
                "per decode step: {:.1} kernel launches, {syncs:.2} host syncs; after warm-up: {} compilations, {} autotune runs",
                k.launches_per_step, k.compilations_after_warmup, k.autotunes_after_warmup
            ),
            None => println!("per decode step: {syncs:.2} host syncs"),
        }
    }
    Ok(())
}
