//! Generation benchmark: warm-up runs, timed runs, and per-step counts of GPU work from
//! CubeCL's own loggers (kernel launches, compilations, autotune runs) and of device-to-host
//! reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::generate::{GenerateError, Generator, HOST_READS, Request, TokenEvent, decode_tokens};
use crate::vq::VqModel;

/// What a benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Median seconds of a whole generation (prefill + every token) over the timed runs.
    pub seconds: f64,
    /// Median seconds of the tokenizer's decode of the generated grids.
    pub vq_decode_seconds: f64,
    /// Median seconds of the tokenizer's encode of the decoded images back to codes.
    pub vq_encode_seconds: f64,
    /// Tokens per image.
    pub tokens_per_image: usize,
    /// Forward passes of the generator per batch (= per image: the batch shares them) in the
    /// last timed run; `tokens_per_image` when decoding one token a pass.
    pub forward_passes: usize,
    /// Device-to-host reads per decode step.
    pub host_syncs_per_step: f64,
    /// GPU work per decode step and after warm-up (`None` without CubeCL's loggers: the CPU
    /// backend, or a configuration already fixed by a `cubecl.toml`).
    pub kernels: Option<KernelCounts>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelCounts {
    /// Kernel launches per decode step (the difference of two runs stopped at different
    /// tokens, so the prefill cancels out).
    pub launches_per_step: f64,
    /// Kernels compiled after the warm-up runs, in the timed and counting runs.
    pub compilations_after_warmup: u64,
    /// Autotune runs after the warm-up runs.
    pub autotunes_after_warmup: u64,
}

/// Reads the totals of CubeCL's loggers, when they are installed.
pub trait LaunchCounter {
    /// `(launches, compilations, autotunes)` so far.
    fn totals(&self) -> (u64, u64, u64);
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl LaunchCounter for crate::kernels::counters::KernelLog {
    fn totals(&self) -> (u64, u64, u64) {
        let c = self.counts();
        (c.launches, c.compilations, c.autotunes)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What a benchmark of the tokenizer alone measured.
#[derive(Debug, Clone, PartialEq)]
pub struct VqReport {
    /// Median seconds to decode a batch of code grids into images.
    pub decode_seconds: f64,
    /// Median seconds to encode a batch of images into code grids.
    pub encode_seconds: f64,
}

/// Times the tokenizer alone: `warmup` untimed rounds, then `runs` timed decodes of random
/// `grid × grid` code grids (`batch` of them at once), each followed by a timed encode of the
/// decoded images. Every timing ends with the result read back to the host.
pub fn run_vq<B: Backend>(
    vq: &VqModel<B>,
    batch: usize,
    grid: usize,
    warmup: usize,
    runs: usize,
) -> VqReport {
    let codebook = vq.config.codebook_size.max(1) as u64;
    // A fixed pseudo-random code per position (the timing does not depend on the values).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let tokens: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..grid * grid)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % codebook) as u32
                })
                .collect()
        })
        .collect();
    let device = vq.quant_conv.weight.device();
    let mut dec = Vec::new();
    let mut enc = Vec::new();
    for round in 0..warmup + runs.max(1) {
        let t = Instant::now();
        let pixels = decode_tokens(vq, &tokens, grid).into_data();
        let d = t.elapsed().as_secs_f64();
        let pixels = Tensor::<B, 4>::from_data(pixels, &device);
        let t = Instant::now();
        let (_, codes) = vq.encode(pixels);
        let _ = codes.into_data();
        let e = t.elapsed().as_secs_f64();
        if round >= warmup {
            dec.push(d);
            enc.push(e);
        }
    }
    VqReport {
        decode_seconds: median(&mut dec),
        encode_seconds: median(&mut enc),
    }
}

/// A generation stopped once the observer has seen token `stop`.
fn run_until<B: Backend>(
    generator: &Generator<'_, B>,
    requests: &[Request],
    stop: usize,
) -> Result<(), GenerateError> {
    let cancel = AtomicBool::new(false);
    let mut observer = |e: &TokenEvent<'_>| {
        if e.index >= stop {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    generator.generate(requests, &mut observer, Some(&cancel))?;
    Ok(())
}

/// Runs `warmup` whole jobs (generation and the tokenizer's decode), then `runs` timed ones (each followed by the tokenizer's
/// decode), then two counting generations stopped at a quarter and at three quarters of the
/// tokens: their difference gives the per-step counts.
pub fn run<B: Backend>(
    generator: &Generator<'_, B>,
    vq: &VqModel<B>,
    requests: &[Request],
    warmup: usize,
    runs: usize,
    counter: Option<&dyn LaunchCounter>,
    mut on_run: impl FnMut(f64),
) -> Result<BenchReport, GenerateError> {
    let cfg = &generator.gpt.config;
    let total = cfg.block_size;
    let grid = cfg.grid_size();
    for _ in 0..warmup {
        let out = generator.generate(requests, &mut (), None)?;
        let _ = decode_tokens(vq, &out.tokens, grid).into_data();
    }
    let after_warmup = counter.map(|c| c.totals());

    let mut gen_times = Vec::new();
    let mut dec_times = Vec::new();
    let mut enc_times = Vec::new();
    let mut forward_passes = 0;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let out = generator.generate(requests, &mut (), None)?;
        let seconds = t.elapsed().as_secs_f64();
        forward_passes = out.forward_passes;
        gen_times.push(seconds);
        on_run(seconds);
        let t = Instant::now();
        let pixels = decode_tokens(vq, &out.tokens, grid);
        let pixels = Tensor::<B, 4>::from_data(pixels.into_data(), &vq.quant_conv.weight.device());
        dec_times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (_, codes) = vq.encode(pixels);
        let _ = codes.into_data();
        enc_times.push(t.elapsed().as_secs_f64());
    }

    // Counting runs: stopped after token `lo` and after token `hi`.
    let (lo, hi) = (total / 4, (3 * total / 4).max(total / 4 + 1).min(total - 1));
    let reads0 = HOST_READS.load(Ordering::Relaxed);
    let before_lo = counter.map(|c| c.totals());
    run_until(generator, requests, lo)?;
    let reads1 = HOST_READS.load(Ordering::Relaxed);
    let after_lo = counter.map(|c| c.totals());
    run_until(generator, requests, hi)?;
    let reads2 = HOST_READS.load(Ordering::Relaxed);
    let after_hi = counter.map(|c| c.totals());
    let steps = (hi - lo) as f64;
    let host_syncs_per_step = ((reads2 - reads1) as f64 - (reads1 - reads0) as f64) / steps;
    let kernels = match (after_warmup, before_lo, after_lo, after_hi) {
        (Some(w), Some(b), Some(l), Some(h)) => Some(KernelCounts {
            launches_per_step: ((h.0 - l.0) as f64 - (l.0 - b.0) as f64) / steps,
            compilations_after_warmup: h.1 - w.1,
            autotunes_after_warmup: h.2 - w.2,
        }),
        _ => None,
    };
    Ok(BenchReport {
        seconds: median(&mut gen_times),
        vq_decode_seconds: median(&mut dec_times),
        vq_encode_seconds: median(&mut enc_times),
        tokens_per_image: total,
        forward_passes,
        host_syncs_per_step,
        kernels,
    })
}

/// Median seconds of one forward pass over `len` image tokens for each `len` in `lens`, with
/// the logits read back (what a pass of speculative decoding costs): `rows` rows (the batch,
/// doubled by CFG), classes `0..rows`, at the middle of the sequence (the cache holds the
/// condition and half the image). Each timed pass is rolled back afterwards.
pub fn pass_seconds<B: Backend>(
    gpt: &crate::gpt::Transformer<B>,
    rows: usize,
    lens: &[usize],
    runs: usize,
) -> Vec<(usize, f64)> {
    let cfg = &gpt.config;
    let device = gpt.device();
    let t = cfg.cls_token_num;
    let ids = |n: usize, salt: usize| {
        let v: Vec<i64> = (0..rows * n)
            .map(|i| ((i * 7919 + salt) % cfg.vocab_size) as i64)
            .collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [rows, n]), &device)
    };
    let classes: Vec<i64> = (0..rows).map(|i| (i % cfg.num_classes) as i64).collect();
    let cond =
        crate::gpt::Condition::Class(Tensor::from_data(TensorData::new(classes, [rows]), &device));
    let mut cache = gpt.new_cache(rows);
    let _ = gpt.prefill(&cond, &mut cache).into_data();
    let mid = cfg.block_size / 2;
    let _ = gpt.decode(ids(mid, 1), t, &mut cache).into_data();
    let held = cache.len();
    lens.iter()
        .map(|&len| {
            let len = len.clamp(1, cfg.block_size - mid);
            // One untimed pass for this length (allocations, any shape-dependent set-up).
            let _ = gpt.decode(ids(len, 2), t + mid, &mut cache).into_data();
            cache.truncate(held);
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|r| {
                    let input = ids(len, 3 + r);
                    let start = Instant::now();
                    let _ = gpt.decode(input, t + mid, &mut cache).into_data();
                    let s = start.elapsed().as_secs_f64();
                    cache.truncate(held);
                    s
                })
                .collect();
            (len, median(&mut times))
        })
        .collect()
}
