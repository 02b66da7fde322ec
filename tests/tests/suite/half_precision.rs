//! The generator in half precision against the official f32 logits: every GPT case of the
//! reference manifest, prefill plus teacher-forced decode steps, on the CPU (f16 and bf16
//! weights, f32 arithmetic) and on wgpu (f16 weights and activations). The error is stated
//! relative to the logits' scale; where the half model's greedy token differs from the f32
//! one, the f32 logits must have had a near tie there (a margin within the error).

use burn::prelude::*;
use burn::tensor::Bool;
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::config::ModelType;
use llamagen::gpt::{Condition, Transformer};
use llamagen::{Precision, Quantize};
use llamagen_tests::{Case, Manifest, to_f32};

/// Logits `[b · (steps + 1), vocab]` of the prefill's last row and every teacher-forced step.
fn kv_logits<B: Backend>(case: &Case, model: &Transformer<B>) -> Vec<f32> {
    let device = model.device();
    let cfg = &model.config;
    let cond = match cfg.model_type {
        ModelType::C2i => Condition::Class(case.int::<B, 1>("labels", &device)),
        ModelType::T2i => Condition::Caption(case.float::<B, 3>("caption", &device)),
    };
    let idx = case.int::<B, 2>("idx", &device);
    let [b, steps] = idx.dims();
    let t = cfg.cls_token_num;
    let mut cache = model.new_cache(b);
    if case.has("emb_masks") {
        let m: Tensor<B, 2, Bool> = case.int::<B, 2>("emb_masks", &device).equal_elem(1);
        cache.mask_captions(m);
    }
    let v = cfg.vocab_size;
    let prefill = model.prefill(&cond, &mut cache);
    let mut rows = vec![prefill.slice([0..b, t - 1..t, 0..v])];
    for i in 0..steps {
        let tok = idx.clone().slice([0..b, i..i + 1]);
        rows.push(model.decode(tok, t + i, &mut cache));
    }
    to_f32(Tensor::cat(rows, 1))
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

fn half_precision_stays_close<B: Backend>(
    device: &B::Device,
    backend: &str,
    precisions: &[(Precision, Quantize, f32)],
) {
    let manifest = Manifest::load();
    let mut checked = 0;
    for case in manifest.gpt_cases() {
        if !case.has("kv_logits") {
            continue;
        }
        let cfg = case.gpt_config();
        let expected = case.values_f32("kv_logits");
        let v = cfg.vocab_size;
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let file = case.weight_files().remove(0);
        let sd = StateDict::open(&file, WeightsChoice::Model).unwrap();
        for &(precision, quantize, tol) in precisions {
            let model =
                Transformer::<B>::load_with(&sd, &cfg, precision, quantize, device).unwrap();
            assert_eq!(model.precision(), precision);
            assert_eq!(model.quantization(), quantize);
            let f32_bytes = cfg.num_params() * 4;
            if quantize == Quantize::None {
                assert!(
                    model.weight_bytes() < f32_bytes * 6 / 10,
                    "half the weights' bytes"
                );
            } else {
                assert!(model.weight_bytes() < f32_bytes, "fewer bytes than f32");
            }
            let label = match quantize {
                Quantize::None => precision.to_string(),
                q => format!("{precision}+{q}"),
            };
            let got = kv_logits(&case, &model);
            assert_eq!(got.len(), expected.len());
            let err = got
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let mut same = 0;
            let rows = expected.len() / v;
            for r in 0..rows {
                let (e, g) = (&expected[r * v..(r + 1) * v], &got[r * v..(r + 1) * v]);
                let (want, pick) = (argmax(e), argmax(g));
                if want == pick {
                    same += 1;
                } else {
                    let margin = e[want] - e[pick];
                    println!(
                        "{} [{backend} {label}] row {r}: greedy token {pick} instead of {want}, \
                         f32 margin {margin:.2e}",
                        case.name
                    );
                    assert!(
                        margin <= 2.0 * err,
                        "{}: a greedy token changed where f32 was not near a tie ({margin} > 2 × {err})",
                        case.name
                    );
                }
            }
            println!(
                "{} [{backend} {label}]: max error {:.2e} of the logits' scale {scale:.2}, \
                 greedy tokens {same}/{rows} identical",
                case.name,
                err / scale
            );
            assert!(
                err <= tol * scale,
                "{} [{backend} {label}]: error {err} above {tol} × {scale}",
                case.name
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no GPT case with kv_logits");
}

#[test]
fn gpt_in_half_precision_stays_close_on_cpu() {
    half_precision_stays_close::<llamagen::backend::Cpu>(
        &Default::default(),
        "cpu",
        &[
            (Precision::F16, Quantize::None, 2e-3),
            (Precision::Bf16, Quantize::None, 2e-2),
            (Precision::F32, Quantize::Q8, 4e-2),
            (Precision::F16, Quantize::Q8, 4e-2),
            (Precision::F32, Quantize::Q4, 0.6),
        ],
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn gpt_in_half_precision_stays_close_on_wgpu() {
    let device = Default::default();
    if Precision::F16
        .check::<llamagen::backend::Wgpu>(&device)
        .is_err()
    {
        panic!("this test needs an adapter with SHADER_F16 (Mesa's lavapipe has it)");
    }
    half_precision_stays_close::<llamagen::backend::Wgpu>(
        &device,
        "wgpu",
        &[
            (Precision::F16, Quantize::None, 1e-2),
            (Precision::F32, Quantize::Q8, 4e-2),
            (Precision::F16, Quantize::Q8, 4e-2),
            (Precision::F16, Quantize::Q4, 0.6),
        ],
    );
}
