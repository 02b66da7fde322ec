//! The worker driven without a window, on the bundled demo model and the CPU backend: a run with
//! the live preview on never waits for a preview decode, and the mosaic's mean colours mean
//! something.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use llamagen::bundle::{LoadOptions, ModelBundle};
use llamagen::generate::Request;
use llamagen::sampling::SamplerParams;
use llamagen_studio::decoder::{
    BudgetClock, COLOUR_SAMPLE, PreviewPolicy, decode_patches, mean_colours,
};
use llamagen_studio::timeline::DecodeKind;
use llamagen_studio::worker::{Command, Compute, Event, Job, ModelInfo, ModelSpec, WorkerHandle};

const WAIT: Duration = Duration::from_secs(120);

/// Events until `done` says stop (or the time is up: then the test fails).
fn until(worker: &WorkerHandle, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let end = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for the worker");
        let event = worker
            .events
            .recv_timeout(left)
            .expect("the worker is running");
        if let Event::Failed { error, .. } | Event::LoadFailed(error) = &event {
            panic!("the worker failed: {error}");
        }
        let stop = done(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

fn loaded(worker: &WorkerHandle) -> ModelInfo {
    worker.send(Command::Load(ModelSpec::Demo, llamagen::Precision::F32));
    let mut info = None;
    let mut colours = false;
    // The model, and the mean colours of its codebook (the preview's first work).
    until(worker, |e| {
        match e {
            Event::Loaded(i) => info = Some((**i).clone()),
            Event::Colours(_) => colours = true,
            _ => {}
        }
        info.is_some() && colours
    });
    info.unwrap()
}

#[test]
fn no_token_step_waits_on_a_preview_decode() {
    // No budget limit and normal priority: the preview decodes as much as it can, at the same
    // time as the token loop.
    let policy = PreviewPolicy {
        budget: 1.0,
        clock: BudgetClock::Wall,
        threads: 1,
        low_priority: false,
    };
    let worker = WorkerHandle::spawn_with(Compute::Cpu, policy, || {});
    let info = loaded(&worker);
    let grid = info.grid_size;
    let requests: Vec<Request> = (0..4)
        .map(|i| {
            Request::class(
                i % info.class_names.len(),
                SamplerParams {
                    seed: i as u64,
                    ..info.sampler
                },
            )
        })
        .collect();
    worker.send(Command::Generate(Job {
        id: 7,
        requests,
        batch_size: 0,
        decode_every: 1,
        cancel: Arc::new(AtomicBool::new(false)),
        prompts: vec![None; 4],
        decoding: Default::default(),
    }));
    let events = until(&worker, |e| matches!(e, Event::Finished { job: 7, .. }));
    let timeline = worker.timeline();

    assert_eq!(timeline.job, Some(7));
    assert_eq!(timeline.steps.len(), grid * grid, "one step per token");
    let during: Vec<_> = timeline.run_decodes().collect();
    assert!(
        during.iter().any(|d| d.kind == DecodeKind::Refresh),
        "refreshes ran during the run: {during:?}"
    );
    assert!(
        during.iter().any(|d| d.kind == DecodeKind::Patches),
        "patches were decoded during the run: {during:?}"
    );
    // The measurement: no token step's own part lasted through a decode, and no decode ran on
    // the token loop's thread.
    let waited = timeline.steps_that_waited();
    assert!(
        waited.is_empty(),
        "token steps {waited:?} waited on a preview decode"
    );
    // And the generator went on while the preview decoded: token steps ended inside decodes.
    let overlapped: usize = during.iter().map(|d| timeline.steps_during(&d.span)).sum();
    assert!(overlapped > 0, "no token step ended while a decode ran");

    // Every refresh that arrived shows the complete rows generated when it was asked for.
    let partials: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Partial {
                job: 7,
                tokens_done,
                images,
                first,
            } => Some((*first, *tokens_done, images)),
            _ => None,
        })
        .collect();
    assert!(!partials.is_empty(), "no refresh reached the UI");
    for (first, tokens_done, images) in partials {
        assert!(first < 4);
        assert_eq!(tokens_done % grid, 0, "whole rows");
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].width() as usize, grid * info.patch);
        assert_eq!(images[0].height() as usize, tokens_done / grid * info.patch);
    }
}

/// A run with SJD: every token arrives once, in order, in fewer passes than tokens.
#[test]
fn a_run_with_speculative_decoding_delivers_every_token_in_fewer_passes() {
    let worker = WorkerHandle::spawn(Compute::Cpu, || {});
    let info = loaded(&worker);
    let total = info.grid_size * info.grid_size;
    let requests: Vec<Request> = (0..2)
        .map(|i| {
            Request::class(
                i,
                SamplerParams {
                    seed: 5 + i as u64,
                    ..info.sampler
                },
            )
        })
        .collect();
    worker.send(Command::Generate(Job {
        id: 9,
        requests,
        batch_size: 0,
        decode_every: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        prompts: vec![None; 2],
        decoding: llamagen::generate::Decoding::Sjd { window: 8 },
    }));
    let events = until(&worker, |e| matches!(e, Event::Finished { job: 9, .. }));
    let steps: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Token {
                job: 9,
                index,
                passes,
                ..
            } => Some((*index, *passes)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>(),
        "every token once, in order"
    );
    let passes = steps.last().unwrap().1;
    assert!(passes < total, "{passes} passes for {total} tokens");
    assert!(steps.windows(2).all(|w| w[0].1 <= w[1].1));
}

#[test]
fn predicted_mean_colours_beat_one_colour_for_all() {
    let bundle = ModelBundle::<llamagen::backend::Cpu>::open(
        None,
        None,
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("the demo model");
    let vq = &bundle.vq;
    let codes = vq.config.codebook_size;
    assert!(codes > 2 * COLOUR_SAMPLE);
    // Every code's true mean colour.
    let all: Vec<u32> = (0..codes as u32).collect();
    let truth = decode_patches(vq, &all);
    let codebook: Vec<f32> = vq.quantize.codebook().into_data().to_vec().unwrap();
    let exact = mean_colours(&truth, codes, &codebook);
    // The studio's estimate: a sample decoded, the rest predicted from the codebook vectors.
    let sample: Vec<u32> = (0..COLOUR_SAMPLE)
        .map(|i| (i * codes / COLOUR_SAMPLE) as u32)
        .collect();
    let estimate = mean_colours(&decode_patches(vq, &sample), codes, &codebook);
    assert_eq!(estimate.measured, sample);
    for &c in &sample {
        assert_eq!(estimate.rgb[c as usize], exact.rgb[c as usize]);
    }
    let held_out: Vec<usize> = (0..codes)
        .filter(|c| !sample.contains(&(*c as u32)))
        .collect();
    let mean_of_sample = {
        let mut m = [0f64; 3];
        for &c in &sample {
            for k in 0..3 {
                m[k] += exact.rgb[c as usize][k] as f64 / sample.len() as f64;
            }
        }
        m
    };
    let err = |pred: &dyn Fn(usize) -> [f64; 3]| {
        held_out
            .iter()
            .map(|&c| {
                let p = pred(c);
                (0..3)
                    .map(|k| (p[k] - exact.rgb[c][k] as f64).abs())
                    .sum::<f64>()
                    / 3.0
            })
            .sum::<f64>()
            / held_out.len() as f64
    };
    let fitted = err(&|c| estimate.rgb[c].map(f64::from));
    let flat = err(&|_| mean_of_sample);
    eprintln!(
        "mean colour error over {} held-out codes: fit {fitted:.1}, one colour {flat:.1} (of 255)",
        held_out.len()
    );
    assert!(
        fitted < 0.8 * flat,
        "the fit ({fitted:.1}) is no better than one colour for all ({flat:.1})"
    );
}
