//! The generator against the official code: every GPT case of the reference manifest, loaded
//! from every one of its weight files, built from the manifest's config.

use burn::prelude::*;
use burn::tensor::Bool;
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::config::ModelType;
use llamagen::gpt::{Condition, Transformer};
use llamagen_tests::{Case, Manifest, Report, to_f32};

/// Expected tensors that belong to the generation / sampling work, not to the model itself.
fn is_generation_tensor(name: &str) -> bool {
    name.starts_with("gen_") || name.starts_with("sampling_")
}

fn condition<B: Backend>(case: &Case, model_type: ModelType, device: &B::Device) -> Condition<B> {
    match model_type {
        ModelType::C2i => Condition::Class(case.int::<B, 1>("labels", device)),
        ModelType::T2i => Condition::Caption(case.float::<B, 3>("caption", device)),
    }
}

fn emb_masks<B: Backend>(case: &Case, device: &B::Device) -> Option<Tensor<B, 2, Bool>> {
    case.has("emb_masks")
        .then(|| case.int::<B, 2>("emb_masks", device).equal_elem(1))
}

fn check_model<B: Backend>(
    case: &Case,
    model: &Transformer<B>,
    label: &str,
    tol: f64,
    report: &mut Report,
    covered: &mut Vec<String>,
) {
    let device = model.device();
    let cfg = &model.config;
    let cond = condition::<B>(case, cfg.model_type, &device);
    let mut cover = |n: &str| covered.push(n.to_string());

    if case.has("freqs_cis") {
        report.check_close(
            case,
            label,
            "freqs_cis",
            to_f32(model.freqs_cis.clone()),
            tol,
        );
        cover("freqs_cis");
    }

    // Teacher forcing (training branch).
    if case.has("tf_logits") {
        let idx = case.int::<B, 2>("idx", &device);
        let mask = case
            .has("train_attn_mask")
            .then(|| case.int::<B, 4>("train_attn_mask", &device).equal_elem(1));
        let logits = model.forward_train(&cond, idx, mask);
        report.check_close(case, label, "tf_logits", to_f32(logits.clone()), tol);
        cover("tf_logits");
        let targets = case.int::<B, 2>("targets", &device);
        if case.has("tf_loss") {
            let loss = model.loss(logits.clone(), targets.clone(), None);
            report.check_close(case, label, "tf_loss", to_f32(loss), tol);
            cover("tf_loss");
        }
        if case.has("tf_loss_valid") {
            let valid = case.float::<B, 1>("valid", &device);
            let loss = model.loss(logits, targets, Some(valid));
            report.check_close(case, label, "tf_loss_valid", to_f32(loss), tol);
            cover("tf_loss_valid");
        }
    }

    // KV cache: prefill, then one decode step per teacher-forced token.
    if case.has("kv_logits") {
        let idx = case.int::<B, 2>("idx", &device);
        let [b, steps] = idx.dims();
        let t = cfg.cls_token_num;
        let mut cache = model.new_cache(b);
        if let Some(m) = emb_masks::<B>(case, &device) {
            cache.mask_captions(m);
        }
        let prefill = model.prefill(&cond, &mut cache);
        let v = cfg.vocab_size;
        let mut rows = vec![prefill.slice([0..b, t - 1..t, 0..v])];
        for i in 0..steps {
            let tok = idx.clone().slice([0..b, i..i + 1]);
            rows.push(model.decode(tok, t + i, &mut cache));
        }
        report.check_close(case, label, "kv_logits", to_f32(Tensor::cat(rows, 1)), tol);
        cover("kv_logits");
    }

    // CFG prefill: conditional rows, then the null condition, in one batch.
    if case.has("cfg_prefill_cond_logits") || case.has("prefill_logits") {
        let b = cond.batch();
        let t = cfg.cls_token_num;
        let v = cfg.vocab_size;
        let both = Condition::cat(cond.clone(), model.null_condition(&cond));
        let mut cache = model.new_cache(2 * b);
        if let Some(m) = emb_masks::<B>(case, &device) {
            cache.mask_captions(Tensor::cat(vec![m.clone(), m], 0));
        }
        let logits = model.prefill(&both, &mut cache);
        if case.has("prefill_logits") {
            report.check_close(case, label, "prefill_logits", to_f32(logits.clone()), tol);
            cover("prefill_logits");
        }
        if case.has("cfg_prefill_cond_logits") {
            let last = logits.slice([0..2 * b, t - 1..t, 0..v]).reshape([2 * b, v]);
            let cond_l = last.clone().slice([0..b, 0..v]);
            let uncond_l = last.slice([b..2 * b, 0..v]);
            let scale = case.values_f32("cfg_scale")[0] as f64;
            let combined = uncond_l.clone() + (cond_l.clone() - uncond_l.clone()) * scale;
            report.check_close(case, label, "cfg_prefill_cond_logits", to_f32(cond_l), tol);
            report.check_close(
                case,
                label,
                "cfg_prefill_uncond_logits",
                to_f32(uncond_l),
                tol,
            );
            report.check_close(case, label, "cfg_prefill_combined", to_f32(combined), tol);
            cover("cfg_prefill_cond_logits");
            cover("cfg_prefill_uncond_logits");
            cover("cfg_prefill_combined");
        }
    }
}

fn run_all<B: Backend>(device: &B::Device, backend: &str, tol: f64) {
    let manifest = Manifest::load();
    let cases = manifest.gpt_cases();
    assert!(!cases.is_empty(), "the manifest has no GPT cases");
    let mut report = Report::default();
    for case in &cases {
        let cfg = case.gpt_config();
        let mut covered = Vec::new();
        for file in case.weight_files() {
            let choices: &[WeightsChoice] = if file.to_string_lossy().ends_with(".ema.pt") {
                &[WeightsChoice::Model, WeightsChoice::PreferEma]
            } else {
                &[WeightsChoice::Model]
            };
            for &choice in choices {
                let sd = StateDict::open(&file, choice)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let model = Transformer::<B>::load(&sd, &cfg, device)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let label = format!(
                    "[{backend}] {} ({})",
                    file.file_name().unwrap().to_string_lossy(),
                    sd.wrapper
                );
                check_model(case, &model, &label, tol, &mut report, &mut covered);
            }
        }
        // Every expected tensor of the model itself must have been compared.
        for name in case.expected_names() {
            if !is_generation_tensor(&name) && !covered.contains(&name) {
                report.failures.push(format!(
                    "{}: expected tensor {name} was not checked",
                    case.name
                ));
            }
        }
    }
    report.finish();
}

#[test]
fn gpt_matches_reference_on_cpu() {
    run_all::<llamagen::backend::Cpu>(&Default::default(), "cpu", 1.0);
}

#[cfg(feature = "wgpu")]
#[test]
fn gpt_matches_reference_on_wgpu() {
    run_all::<llamagen::backend::Wgpu>(&Default::default(), "wgpu", 1.0);
}
