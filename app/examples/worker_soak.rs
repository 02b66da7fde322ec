//! A soak of the studio's worker without a window: many small generations with the bundled
//! demo model, with cancels, model reloads and prefix re-rolls mixed in, and the process's
//! resident memory after each job. A worker that leaks grows job after job; one that does not
//! levels off once its caches are warm.
//!
//! cargo run -p llamagen-studio --example worker_soak -- --jobs 1000 --every 100
//!
//! Per job: one or two images of class `job % classes`, seed `job`, the live preview on ("Decode
//! every" 16); every 7th job is cancelled after its first token, every 5th re-rolls the second
//! half of the previous job's first image (a kept prefix), every 3rd decodes with SJD, and every
//! 50th reloads the model first. Prints the resident memory every `--every` jobs, and at the
//! end the ratio of the last figure to the one after `--every` jobs (`--json` for one object).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use llamagen::generate::{Decoding, Request};
use llamagen_studio::worker::{Command, Compute, Event, Job, ModelSpec, WorkerHandle};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Jobs to run.
    #[arg(long, default_value_t = 1000)]
    jobs: u64,
    /// Report the resident memory every this many jobs.
    #[arg(long, default_value_t = 100)]
    every: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The process's resident memory in bytes (`VmRSS`), 0 where /proc is not there.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn load(worker: &WorkerHandle) -> Result<Vec<String>> {
    worker.send(Command::Load(ModelSpec::Demo, llamagen::Precision::F32));
    loop {
        match worker.events.recv_timeout(Duration::from_secs(300))? {
            Event::Loaded(info) => return Ok(info.class_names),
            Event::LoadFailed(e) => bail!("the worker could not load the demo model: {e}"),
            _ => {}
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let worker = WorkerHandle::spawn(Compute::Cpu, || {});
    let classes = load(&worker)?.len().max(1);
    let sampler = llamagen::sampling::SamplerParams::default();
    let mut previous: Option<Vec<u32>> = None;
    let mut curve: Vec<(u64, u64)> = Vec::new();
    let (mut cancelled, mut reloads, mut rerolls) = (0, 0, 0);
    let start = Instant::now();
    for job in 1..=args.jobs {
        if job % 50 == 0 {
            load(&worker)?;
            reloads += 1;
        }
        let params = llamagen::sampling::SamplerParams {
            seed: job,
            ..sampler
        };
        let mut requests = vec![Request::class((job as usize) % classes, params)];
        if job % 2 == 0 {
            requests.push(Request::class((job as usize + 1) % classes, params));
        }
        if job % 5 == 0
            && let Some(tokens) = previous.as_ref().filter(|t| !t.is_empty())
        {
            // A re-roll is one image, as in the studio (a batch shares one prefix length).
            requests.truncate(1);
            requests[0].prefix = tokens[..tokens.len() / 2].to_vec();
            rerolls += 1;
        }
        let cancel_early = job % 7 == 0;
        let cancel = Arc::new(AtomicBool::new(false));
        let prompts = vec![None; requests.len()];
        worker.send(Command::Generate(Job {
            id: job,
            requests,
            batch_size: 0,
            decode_every: 16,
            cancel: cancel.clone(),
            prompts,
            decoding: if job % 3 == 0 {
                Decoding::Sjd { window: 8 }
            } else {
                Decoding::Sequential
            },
        }));
        loop {
            match worker.events.recv_timeout(Duration::from_secs(300))? {
                Event::Token { job: j, .. } if j == job && cancel_early => {
                    cancel.store(true, Ordering::Relaxed)
                }
                Event::Finished {
                    job: j,
                    tokens,
                    cancelled: was,
                    ..
                } if j == job => {
                    if was {
                        cancelled += 1;
                    } else {
                        previous = tokens.into_iter().next();
                    }
                    break;
                }
                Event::Failed { job: j, error } if j == job => bail!("job {job} failed: {error}"),
                _ => {}
            }
        }
        if job % args.every == 0 || job == args.jobs {
            let rss = rss_bytes();
            curve.push((job, rss));
            if !args.json {
                println!(
                    "job {job:>5}: resident {:.1} MB ({:.0} s)",
                    rss as f64 / 1e6,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    let base = curve.first().map_or(0, |c| c.1).max(1);
    let last = curve.last().map_or(0, |c| c.1);
    let ratio = last as f64 / base as f64;
    if args.json {
        let points: Vec<_> = curve
            .iter()
            .map(|(j, r)| json!({"jobs": j, "rss_bytes": r}))
            .collect();
        println!(
            "{}",
            json!({"jobs": args.jobs, "cancelled": cancelled, "reloads": reloads,
                   "rerolls": rerolls, "seconds": start.elapsed().as_secs_f64(),
                   "rss": points, "last_over_first": ratio})
        );
    } else {
        println!(
            "{} jobs ({cancelled} cancelled, {reloads} reloads, {rerolls} re-rolls) in {:.0} s; \
             resident memory after {} jobs / after {}: {ratio:.3}",
            args.jobs,
            start.elapsed().as_secs_f64(),
            curve.last().map_or(0, |c| c.0),
            curve.first().map_or(0, |c| c.0),
        );
    }
    Ok(())
}
