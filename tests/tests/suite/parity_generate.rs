//! Generation against the official `generate()`: greedy tokens must match exactly and the
//! logits handed to the sampler at every step within tolerance; and the sampling filters.

use burn::prelude::*;
use llamagen::generate::{EventDetail, Generator, Observer, TokenEvent};
use llamagen::gpt::Transformer;
use llamagen::sampling::{SamplerParams, argmax, filter_logits, logits_to_probs};
use llamagen_tests::{Manifest, Report};

/// Collects the logits of every step, `[step][sample][vocab]`.
#[derive(Default)]
struct StepLogits(Vec<Vec<Vec<f32>>>);

impl Observer for StepLogits {
    fn detail(&self) -> EventDetail {
        EventDetail {
            confidence: true,
            logits: true,
        }
    }
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self.0
            .push(event.logits.expect("logits requested").to_vec());
    }
}

fn run_all<B: Backend>(device: &B::Device, backend: &str) {
    let manifest = Manifest::load();
    let mut report = Report::default();
    let mut checked = 0;
    for case in manifest.gpt_cases() {
        let cfg = case.gpt_config();
        let sd = case.state_dict();
        let model = Transformer::<B>::load(&sd, &cfg, device).unwrap();
        let generator = Generator::new(&model);
        let cfg_scale = if case.has("cfg_scale") {
            case.values_f32("cfg_scale")[0]
        } else {
            4.0
        };
        let interval = if case.has("cfg_interval") {
            case.values_i64("cfg_interval")[0] as i32
        } else {
            -1
        };
        for (prefix, scale, cfg_interval) in [
            ("gen_cfg4", cfg_scale, -1),
            ("gen_cfg1", 1.0, -1),
            ("gen_cfg4_interval", cfg_scale, interval),
        ] {
            let tokens_name = format!("{prefix}_tokens");
            if !case.has(&tokens_name) {
                continue;
            }
            let params = SamplerParams {
                cfg_interval,
                ..SamplerParams::greedy(scale)
            };
            let reqs = llamagen_tests::requests(&case, cfg.model_type, params);
            let mut steps = StepLogits::default();
            let out = generator.generate(&reqs, &mut steps, None).unwrap();
            assert!(out.is_complete(cfg.block_size));
            let label = format!("[{backend}]");
            let flat: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
            report.check_exact(&case, &label, &tokens_name, flat);
            if llamagen::kernels::DeviceSampler::<B>::supported() {
                // No logits asked for: the fused decode step and the device sampler.
                let out = generator.generate(&reqs, &mut (), None).unwrap();
                assert!(out.is_complete(cfg.block_size));
                let flat: Vec<i64> = out.tokens.iter().flatten().map(|&t| t as i64).collect();
                let label = format!("[{backend}, device sampler]");
                report.check_exact(&case, &label, &tokens_name, flat);
                // Seeded sampling reproduces on the same backend, and the seed matters.
                let sampled = |seed: u64| {
                    let params = SamplerParams {
                        cfg_interval,
                        cfg_scale: scale,
                        top_k: 0,
                        seed,
                        ..SamplerParams::default()
                    };
                    let reqs = llamagen_tests::requests(&case, cfg.model_type, params);
                    generator.generate(&reqs, &mut (), None).unwrap().tokens
                };
                assert_eq!(sampled(7), sampled(7), "{label}: same seed, same tokens");
                let first = sampled(7);
                assert!(
                    (8..12).any(|seed| sampled(seed) != first),
                    "{label}: other seeds, other tokens"
                );
            }
            let logits_name = format!("{prefix}_step_logits");
            if case.has(&logits_name) {
                // [step][sample][vocab] → [sample][step][vocab]
                let b = reqs.len();
                let mut flat = Vec::new();
                for i in 0..b {
                    for step in &steps.0 {
                        flat.extend_from_slice(&step[i]);
                    }
                }
                report.check_close(&case, &label, &logits_name, flat, 1.0);
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "expected the six generation cases, checked {checked}"
    );
    report.finish();
}

#[test]
fn generation_matches_reference_on_cpu() {
    run_all::<llamagen::backend::Cpu>(&Default::default(), "cpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn generation_matches_reference_on_wgpu() {
    run_all::<llamagen::backend::Wgpu>(&Default::default(), "wgpu");
}

#[test]
fn sampling_filters_match_reference() {
    let manifest = Manifest::load();
    let mut report = Report::default();
    let mut checked = 0;
    for case in manifest.gpt_cases() {
        if !case.has("sampling_probs") {
            continue;
        }
        let logits = case.values_f32("sampling_logits");
        let settings = case.values_f32("sampling_settings");
        let shape = case.shape("sampling_logits");
        let (rows, vocab) = (shape[0], shape[1]);
        let n_settings = settings.len() / 3;
        let (mut probs, mut filtered, mut argmaxes) = (Vec::new(), Vec::new(), Vec::new());
        for s in 0..n_settings {
            let params = SamplerParams {
                temperature: settings[3 * s],
                top_k: settings[3 * s + 1] as usize,
                top_p: settings[3 * s + 2],
                ..SamplerParams::default()
            };
            for r in 0..rows {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let p = logits_to_probs(row, &params);
                argmaxes.push(argmax(&p) as i64);
                probs.extend(p);
                let mut f = row.to_vec();
                filter_logits(&mut f, params.temperature, params.top_k, params.top_p);
                filtered.extend(f);
            }
        }
        report.check_close(&case, "[host]", "sampling_probs", probs, 1.0);
        report.check_close(&case, "[host]", "sampling_filtered_logits", filtered, 1.0);
        report.check_exact(&case, "[host]", "sampling_argmax", argmaxes);
        checked += 1;
    }
    assert!(checked >= 1, "no case with sampling tensors");
    report.finish();
}
