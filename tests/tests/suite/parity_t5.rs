//! The T5 text encoder against `transformers`' `T5EncoderModel`: every T5 case of the reference
//! manifest (config `model_type` "t5"), loaded from each of its weight sources — the
//! `<case>.safetensors` / `<case>.pt` state dicts with the manifest's config, and every Hugging
//! Face model folder among its files with the folder's own `config.json`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use llamagen::checkpoint::{StateDict, WeightsChoice};
use llamagen::text::{T5Encoder, T5Folder, relative_position_bucket};
use llamagen_tests::{Case, Manifest, Report, to_f32};

/// Where a case's weights come from: a state-dict file, or a model folder.
enum Source {
    File(PathBuf),
    Folder(PathBuf),
}

fn sources(case: &Case) -> Vec<Source> {
    let mut files = Vec::new();
    let mut folders = BTreeSet::new();
    for f in case.weight_files() {
        match f.parent() {
            Some(p) if p != case.dir => {
                folders.insert(p.to_path_buf());
            }
            _ => files.push(Source::File(f)),
        }
    }
    files.extend(folders.into_iter().map(Source::Folder));
    files
}

fn load<B: Backend>(case: &Case, source: &Source, device: &B::Device) -> (T5Encoder<B>, String) {
    match source {
        Source::File(f) => {
            let sd = StateDict::open(f, WeightsChoice::Model)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let model = T5Encoder::<B>::load(&sd, &case.t5_config(), device)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (model, f.file_name().unwrap().to_string_lossy().into_owned())
        }
        Source::Folder(dir) => {
            let folder = T5Folder::open(dir).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                folder.config,
                case.t5_config(),
                "{}: config.json disagrees with the manifest",
                dir.display()
            );
            let model = folder
                .load_encoder::<B>(device)
                .unwrap_or_else(|e| panic!("{e}"));
            (
                model,
                format!("{}/", dir.file_name().unwrap().to_string_lossy()),
            )
        }
    }
}

fn run_all<B: Backend>(device: &B::Device, backend: &str) {
    let manifest = Manifest::load();
    let cases = manifest.t5_cases();
    assert!(!cases.is_empty(), "the manifest has no T5 cases");
    let mut report = Report::default();
    for case in &cases {
        let cfg = case.t5_config();
        let mut covered: Vec<String> = Vec::new();
        // Buckets: a pure function of the config.
        if case.has("relative_position_buckets") {
            let buckets: Vec<i64> = case
                .values_i64("relative_positions")
                .into_iter()
                .map(|r| {
                    relative_position_bucket(
                        r,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    ) as i64
                })
                .collect();
            report.check_exact(
                case,
                &format!("[{backend}]"),
                "relative_position_buckets",
                buckets,
            );
            covered.push("relative_position_buckets".into());
        }
        let sources = sources(case);
        assert!(!sources.is_empty(), "{}: no weight files", case.name);
        for source in &sources {
            let (model, name) = load::<B>(case, source, device);
            let label = format!("[{backend}] {name}");
            if case.has("position_bias") {
                let len = case.shape("position_bias")[2];
                report.check_close(
                    case,
                    &label,
                    "position_bias",
                    to_f32(model.position_bias(len)),
                    1.0,
                );
                covered.push("position_bias".into());
            }
            if case.has("last_hidden_state") {
                let ids = case.int::<B, 2>("input_ids", device);
                let mask = case
                    .has("attention_mask")
                    .then(|| case.int::<B, 2>("attention_mask", device).equal_elem(1));
                let hidden = model.forward(ids, mask);
                report.check_close(case, &label, "last_hidden_state", to_f32(hidden), 1.0);
                covered.push("last_hidden_state".into());
            }
        }
        report.require_covered(case, &covered);
    }
    report.finish();
}

#[test]
fn t5_matches_reference_on_cpu() {
    run_all::<llamagen::backend::Cpu>(&Default::default(), "cpu");
}

#[cfg(feature = "wgpu")]
#[test]
fn t5_matches_reference_on_wgpu() {
    run_all::<llamagen::backend::Wgpu>(&Default::default(), "wgpu");
}

/// The loaded encoder holds exactly the manifest's encoder tensors (the tied embedding once),
/// and its f32 size is what the `text` module's notes say.
#[test]
fn t5_memory_of_the_tiny_model() {
    type B = llamagen::backend::Cpu;
    let manifest = Manifest::load();
    for case in manifest.t5_cases() {
        let cfg = case.t5_config();
        let state = case.json["state_dict"].as_object().expect("state_dict");
        let tied = state.contains_key("shared.weight");
        let expected: usize = state
            .iter()
            .filter(|(k, _)| !(tied && k.as_str() == "encoder.embed_tokens.weight"))
            .filter(|(k, _)| k.starts_with("encoder.") || k.as_str() == "shared.weight")
            .map(|(_, v)| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .product::<usize>()
            })
            .sum();
        let sd = case.state_dict();
        let model = T5Encoder::<B>::load(&sd, &cfg, &Default::default()).unwrap();
        assert_eq!(model.num_params(), expected, "{}", case.name);
        assert_eq!(cfg.num_params(), expected, "{}", case.name);
        println!(
            "{}: {} parameters, {} bytes in f32",
            case.name,
            expected,
            expected * 4
        );
    }
}

/// Loaded in bf16 (and f16), the encoder holds half the bytes and still gives the reference
/// `last_hidden_state` to within the precision of a 16-bit float (relative to the features'
/// scale); the output comes back in f32.
#[test]
fn t5_in_half_precision_halves_the_weights_and_stays_close() {
    use burn::tensor::{DType, FloatDType};
    type B = llamagen::backend::Cpu;
    let device = Default::default();
    let manifest = Manifest::load();
    for case in manifest.t5_cases() {
        if !case.has("last_hidden_state") {
            continue;
        }
        let cfg = case.t5_config();
        let sd = case.state_dict();
        let expected = case.values_f32("last_hidden_state");
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (dtype, tol) in [(FloatDType::BF16, 3e-2), (FloatDType::F16, 4e-3)] {
            let model = T5Encoder::<B>::load_as(&sd, &cfg, dtype, &device).unwrap();
            assert_eq!(model.dtype(), DType::from(dtype));
            assert_eq!(model.weight_bytes(), cfg.num_params() * 2);
            let ids = case.int::<B, 2>("input_ids", &device);
            let mask = case
                .has("attention_mask")
                .then(|| case.int::<B, 2>("attention_mask", &device).equal_elem(1));
            let hidden = model.forward(ids, mask);
            assert_eq!(hidden.dtype(), DType::F32);
            let got = to_f32(hidden);
            let err = got
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            println!(
                "{} {dtype:?}: max error {err:.2e} of the features' scale {scale:.3}",
                case.name
            );
            assert!(err < tol, "{} {dtype:?}: relative error {err}", case.name);
        }
    }
}
