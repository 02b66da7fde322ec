//! The studio's worker without a window, against the generator alone on the same batch: what the
//! live preview costs the generation.
//!
//! Random weights of a real-size generator and tokenizer (GPT-B and VQ-16 by default) are
//! written as safetensors (once, into --dir) and opened by the worker as a user would. Each run:
//! the worker generates the batch with the preview at its defaults for the CPU ("Decode every"
//! 16, the preview's time budget), then the generator alone generates the same batch and
//! decodes it (as `llamagen generate` does); the two alternate, so that a noisy machine weighs
//! on both alike.
//!
//! cargo run -p llamagen-studio --example worker_bench -- --num 4 --runs 2

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use llamagen::bundle::{LoadOptions, ModelBundle};
use llamagen::config::{GptConfig, VqConfig};
use llamagen::generate::{Generator, Request, decode_tokens};
use llamagen::gpt::Transformer;
use llamagen::sampling::SamplerParams;
use llamagen::vq::VqModel;
use llamagen_studio::decoder::PreviewPolicy;
use llamagen_studio::settings::Settings;
use llamagen_studio::worker::{Command, Compute, Event, Job, ModelSpec, WorkerHandle};
use serde_json::json;

type B = llamagen::backend::Cpu;

#[derive(Parser, Debug)]
struct Args {
    /// Named generator configuration (random weights).
    #[arg(long, default_value = "GPT-B")]
    config: String,
    /// Named tokenizer configuration (random weights).
    #[arg(long, default_value = "VQ-16")]
    vq: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    image_size: usize,
    /// Images of one class, generated together.
    #[arg(long, default_value_t = 4)]
    num: usize,
    /// The preview's share of the machine (default: the studio's on the CPU).
    #[arg(long)]
    budget: Option<f64>,
    /// "Decode every" (default: the studio's).
    #[arg(long)]
    decode_every: Option<usize>,
    /// Worker / generator-alone pairs.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Where the random checkpoints are written (kept for later runs).
    #[arg(long, default_value = "target/worker-bench")]
    dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Writes random weights as safetensors with their configuration, unless already there.
fn checkpoints(args: &Args) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&args.dir).with_context(|| args.dir.display().to_string())?;
    let grid = args.image_size / 16;
    let gpt_path = args.dir.join(format!(
        "c2i_{}_{}.safetensors",
        args.config.trim_start_matches("GPT-"),
        args.image_size
    ));
    let vq_path = args.dir.join(format!(
        "vq_ds{}_c2i.safetensors",
        args.vq.trim_start_matches("VQ-")
    ));
    let device = Default::default();
    if !gpt_path.exists() {
        let mut cfg = GptConfig::named(&args.config)?;
        cfg.block_size = grid * grid;
        let gpt = Transformer::<B>::init(&cfg, &device)?;
        let tensors = llamagen::checkpoint::state_dict(&gpt, &cfg.state_dict_specs())?;
        let meta =
            llamagen::checkpoint::config_metadata(llamagen::checkpoint::GPT_CONFIG_KEY, &cfg);
        llamagen::checkpoint::write_safetensors(&gpt_path, &tensors, meta)?;
    }
    if !vq_path.exists() {
        let cfg = VqConfig::named(&args.vq)?;
        let vq = VqModel::<B>::init(&cfg, &device)?;
        let tensors = llamagen::checkpoint::state_dict(&vq, &cfg.state_dict_specs())?;
        let meta = llamagen::checkpoint::config_metadata(llamagen::checkpoint::VQ_CONFIG_KEY, &cfg);
        llamagen::checkpoint::write_safetensors(&vq_path, &tensors, meta)?;
    }
    Ok((gpt_path, vq_path))
}

fn requests(num: usize, sampler: SamplerParams) -> Vec<Request> {
    (0..num)
        .map(|i| {
            Request::class(
                0,
                SamplerParams {
                    seed: 1 + i as u64,
                    ..sampler
                },
            )
        })
        .collect()
}

/// What one worker run showed.
struct WorkerRun {
    tokens_s: f64,
    total_s: f64,
    load_s: f64,
    first_token_s: f64,
    first_drawable_s: Option<f64>,
    first_patch_s: Option<f64>,
    refreshes: Vec<f64>,
    decode_cost_s: f64,
    decodes: usize,
    waited_steps: usize,
}

fn worker_run(
    spec: &ModelSpec,
    policy: PreviewPolicy,
    decode_every: usize,
    num: usize,
) -> Result<WorkerRun> {
    let worker = WorkerHandle::spawn_with(Compute::Cpu, policy, || {});
    worker.send(Command::Load(spec.clone(), llamagen::Precision::F32));
    let wait = Duration::from_secs(3600);
    let load_start = Instant::now();
    let mut info = None;
    let mut colours = None;
    // The model (its mean colours are computed before it is reported loaded, and follow it).
    while info.is_none() || colours.is_none() {
        match worker.events.recv_timeout(wait)? {
            Event::Loaded(i) => info = Some(i),
            Event::Colours(_) => colours = Some(Instant::now()),
            Event::LoadFailed(e) => bail!("the worker could not load the model: {e}"),
            _ => {}
        }
    }
    let info = info.context("loaded")?;
    let load_s = load_start.elapsed().as_secs_f64();
    // Generate at once, as an impatient user would.
    let sent = Instant::now();
    worker.send(Command::Generate(Job {
        id: 1,
        requests: requests(num, info.sampler),
        batch_size: Settings::default().batch_size,
        decode_every,
        cancel: Arc::new(AtomicBool::new(false)),
        prompts: vec![None; num],
        decoding: Settings::default().decoding,
    }));
    let since = |t: Instant| t.duration_since(sent).as_secs_f64();
    let mut first_token = None;
    let mut first_patch = None;
    let mut refreshes = Vec::new();
    let total = loop {
        let event = worker.events.recv_timeout(wait)?;
        let now = Instant::now();
        match event {
            Event::Token { .. } if first_token.is_none() => first_token = Some(now),
            Event::Patches(p)
                if first_patch.is_none() && !p.codes.is_empty() && first_token.is_some() =>
            {
                first_patch = Some(now)
            }
            Event::Partial { .. } => refreshes.push(since(now)),
            Event::Finished { seconds, .. } => break seconds,
            Event::Failed { error, .. } => bail!("the run failed: {error}"),
            _ => {}
        }
    };
    let timeline = worker.timeline();
    let tokens_s = match (timeline.started, timeline.generated) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => bail!("the worker recorded no run"),
    };
    let first_token = first_token.context("no token event")?;
    let run: Vec<_> = timeline.run_decodes().collect();
    Ok(WorkerRun {
        tokens_s,
        total_s: total,
        load_s,
        first_token_s: since(first_token),
        // A token can be drawn once it and the colours are there.
        first_drawable_s: colours.map(|c| since(first_token.max(c))),
        first_patch_s: first_patch.map(since),
        refreshes,
        decode_cost_s: run.iter().map(|d| d.cost).sum(),
        decodes: run.len(),
        waited_steps: timeline.steps_that_waited().len(),
    })
}

/// The generator alone, then the final decode, as `llamagen generate` does: (tokens s, total s).
fn alone_run(bundle: &ModelBundle<B>, num: usize) -> Result<(f64, f64)> {
    let generator = Generator::new(&bundle.gpt);
    let reqs = requests(num, bundle.sampler);
    let t = Instant::now();
    let out = generator.generate(&reqs, &mut (), None)?;
    let tokens = t.elapsed().as_secs_f64();
    let _ = decode_tokens(&bundle.vq, &out.tokens, bundle.grid_size()).into_data();
    Ok((tokens, t.elapsed().as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (gpt, vq) = checkpoints(&args)?;
    let spec = ModelSpec::Files {
        gpt: gpt.clone(),
        vq: vq.clone(),
        image_size: Some(args.image_size),
    };
    let mut policy = Compute::Cpu.preview_policy();
    if let Some(b) = args.budget {
        policy.budget = b;
    }
    let decode_every = args
        .decode_every
        .unwrap_or(Settings::default().decode_every);
    let bundle = ModelBundle::<B>::open(
        Some(Path::new(&gpt)),
        Some(Path::new(&vq)),
        &LoadOptions {
            image_size: Some(args.image_size),
            ..Default::default()
        },
        &Default::default(),
    )?;
    let grid = bundle.grid_size();
    let tokens = (args.num * grid * grid) as f64;
    // Warm-up of the generator alone (weights touched, allocator grown).
    let mut warm = requests(args.num, bundle.sampler);
    for r in &mut warm {
        r.prefix = vec![0; grid * grid - 4];
    }
    Generator::new(&bundle.gpt).generate(&warm, &mut (), None)?;

    let mut workers = Vec::new();
    let mut alone = Vec::new();
    for run in 0..args.runs.max(1) {
        let w = worker_run(&spec, policy, decode_every, args.num)?;
        let a = alone_run(&bundle, args.num)?;
        if !args.json {
            eprintln!(
                "run {run}: worker {:.1} s of tokens ({:.1} s with the final decode), {} refreshes at {:?} s, first drawable {:?} s; alone {:.1} s ({:.1} s)",
                w.tokens_s,
                w.total_s,
                w.refreshes.len(),
                w.refreshes
                    .iter()
                    .map(|r| (r * 10.0).round() / 10.0)
                    .collect::<Vec<_>>(),
                w.first_drawable_s,
                a.0,
                a.1
            );
        }
        workers.push(w);
        alone.push(a);
    }
    let w_tokens = median(workers.iter().map(|w| w.tokens_s).collect());
    let w_total = median(workers.iter().map(|w| w.total_s).collect());
    let a_tokens = median(alone.iter().map(|a| a.0).collect());
    let a_total = median(alone.iter().map(|a| a.1).collect());
    let gaps: Vec<f64> = workers
        .iter()
        .flat_map(|w| {
            std::iter::once(0.0)
                .chain(w.refreshes.iter().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .map(|p| p[1] - p[0])
                .collect::<Vec<_>>()
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let value = json!({
        "config": args.config,
        "vq": args.vq,
        "image_size": args.image_size,
        "images": args.num,
        "runs": args.runs.max(1),
        "cores": cores,
        "decode_every": decode_every,
        "preview_budget": policy.budget,
        "worker_tokens_per_s": tokens / w_tokens,
        "alone_tokens_per_s": tokens / a_tokens,
        "worker_over_alone_tokens": w_tokens / a_tokens,
        "worker_seconds_with_decode": w_total,
        "alone_seconds_with_decode": a_total,
        "worker_over_alone_total": w_total / a_total,
        "first_token_s": median(workers.iter().map(|w| w.first_token_s).collect()),
        "first_drawable_mosaic_s": median(workers.iter().filter_map(|w| w.first_drawable_s).collect()),
        "first_patch_s": median(workers.iter().filter_map(|w| w.first_patch_s).collect()),
        "load_with_colour_pass_s": median(workers.iter().map(|w| w.load_s).collect()),
        "refreshes_per_run": workers.iter().map(|w| w.refreshes.len()).collect::<Vec<_>>(),
        "refresh_gap_max_s": gaps.iter().copied().fold(0.0, f64::max),
        "refresh_gap_median_s": median(gaps.clone()),
        "preview_decodes_per_run": workers.iter().map(|w| w.decodes).collect::<Vec<_>>(),
        "preview_cost_share": median(workers.iter().map(|w| w.decode_cost_s / (cores as f64 * w.tokens_s)).collect()),
        "token_steps_that_waited": workers.iter().map(|w| w.waited_steps).sum::<usize>(),
    });
    if args.json {
        println!("{value}");
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}
