//! Helpers shared by the cross-crate tests: the reference-fixture directory, its manifest,
//! the io tensors of each case, configs built from the manifest, and tolerant comparison.

pub mod fuzz;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::{ModuleStore, SafetensorsStore};
use llamagen::config::{GptConfig, VqConfig};
use serde_json::Value;

/// `LLAMAGEN_REFERENCE_DIR`, or `../shared/fixtures/reference` beside the checkout.
pub fn reference_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LLAMAGEN_REFERENCE_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/reference")
}

/// The parsed `manifest.json`.
pub struct Manifest {
    pub dir: PathBuf,
    pub json: Value,
}

impl Manifest {
    pub fn load() -> Self {
        let dir = reference_dir();
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}); set LLAMAGEN_REFERENCE_DIR to the reference fixtures",
                path.display()
            )
        });
        let json = serde_json::from_str(&text).expect("manifest.json is valid JSON");
        Self { dir, json }
    }

    pub fn cases(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.json["cases"].as_object().expect("cases object").iter()
    }

    /// Cases whose config is a GPT `ModelArgs` (it has a `model_type`).
    pub fn gpt_cases(&self) -> Vec<Case> {
        self.cases()
            .filter(|(_, c)| {
                c["config"].get("model_type").is_some() && c["config"].get("dim").is_some()
            })
            .map(|(n, c)| Case::new(&self.dir, n, c))
            .collect()
    }

    /// Cases whose config is a VQ model (`model_args` with a codebook).
    pub fn vq_cases(&self) -> Vec<Case> {
        self.cases()
            .filter(|(_, c)| c["config"]["model_args"].get("codebook_size").is_some())
            .map(|(n, c)| Case::new(&self.dir, n, c))
            .collect()
    }

    /// Cases whose config is a Hugging Face T5 config (`model_type` "t5").
    pub fn t5_cases(&self) -> Vec<Case> {
        self.cases()
            .filter(|(_, c)| c["config"].get("model_type").and_then(Value::as_str) == Some("t5"))
            .map(|(n, c)| Case::new(&self.dir, n, c))
            .collect()
    }

    /// Cases whose config is a PatchGAN discriminator (`NLayerDiscriminator`: it has an `ndf`).
    pub fn patchgan_cases(&self) -> Vec<Case> {
        self.cases()
            .filter(|(_, c)| c["config"].get("ndf").is_some())
            .map(|(n, c)| Case::new(&self.dir, n, c))
            .collect()
    }
}

/// One reference case: its config, weight files and io tensors.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub json: Value,
    pub io: BTreeMap<String, TensorData>,
}

impl Case {
    fn new(dir: &Path, name: &str, json: &Value) -> Self {
        let io_path = dir.join(format!("{name}.io.safetensors"));
        let mut store = SafetensorsStore::from_file(io_path.clone());
        let io = store
            .get_all_snapshots()
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", io_path.display()))
            .iter()
            .map(|(k, v)| (k.clone(), v.to_data().expect("io tensor data")))
            .collect();
        Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            json: json.clone(),
            io,
        }
    }

    /// Every weight file of the case (safetensors, .pt and the training-checkpoint variants).
    pub fn weight_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.json["files"]
            .as_object()
            .expect("files object")
            .keys()
            .filter(|f| !f.ends_with(".io.safetensors"))
            .map(|f| self.dir.join(f))
            .collect();
        files.sort();
        files
    }

    /// The case's state dict from its `<case>.safetensors`.
    pub fn state_dict(&self) -> llamagen::checkpoint::StateDict {
        let path = self.dir.join(format!("{}.safetensors", self.name));
        llamagen::checkpoint::StateDict::open(&path, llamagen::checkpoint::WeightsChoice::Model)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn gpt_config(&self) -> GptConfig {
        serde_json::from_value(self.json["config"].clone()).expect("GPT config from manifest")
    }

    /// The T5 encoder config (the case's Hugging Face `config.json` content).
    pub fn t5_config(&self) -> llamagen::text::T5Config {
        serde_json::from_value(self.json["config"].clone()).expect("T5 config from manifest")
    }

    pub fn vq_config(&self) -> VqConfig {
        let c = &self.json["config"];
        let mut cfg: VqConfig =
            serde_json::from_value(c["model_args"].clone()).expect("VQ model_args from manifest");
        let enc = &c["encoder_kwargs"];
        let dec = &c["decoder_kwargs"];
        let get = |v: &Value, k: &str, default: usize| {
            v.get(k)
                .and_then(Value::as_u64)
                .map_or(default, |x| x as usize)
        };
        cfg.ch = get(enc, "ch", cfg.ch);
        cfg.num_res_blocks = get(enc, "num_res_blocks", cfg.num_res_blocks);
        cfg.in_channels = get(enc, "in_channels", cfg.in_channels);
        cfg.out_channels = get(dec, "out_channels", cfg.out_channels);
        if let Some(m) = enc.get("ch_mult") {
            cfg.encoder_ch_mult = serde_json::from_value(m.clone()).expect("ch_mult");
        }
        if let Some(m) = dec.get("ch_mult") {
            cfg.decoder_ch_mult = serde_json::from_value(m.clone()).expect("ch_mult");
        }
        cfg
    }

    /// The discriminator's constructor arguments; `use_actnorm` must be false (the only variant
    /// LlamaGen builds).
    pub fn patchgan_config(&self) -> llamagen::train::discriminator::PatchGanConfig {
        let c = &self.json["config"];
        assert!(
            !c.get("use_actnorm")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            "{}: use_actnorm is not supported",
            self.name
        );
        let get = |k: &str| {
            c[k].as_u64()
                .unwrap_or_else(|| panic!("{}: config.{k} missing", self.name)) as usize
        };
        llamagen::train::discriminator::PatchGanConfig {
            input_nc: get("input_nc"),
            ndf: get("ndf"),
            n_layers: get("n_layers"),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.io.contains_key(name)
    }

    /// Names of the tensors whose role is `expected`.
    pub fn expected_names(&self) -> Vec<String> {
        self.json["io"]
            .as_object()
            .expect("io object")
            .iter()
            .filter(|(_, v)| v["role"] == "expected")
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn float<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let data = self
            .io
            .get(name)
            .unwrap_or_else(|| panic!("{}: no io tensor {name}", self.name));
        Tensor::from_data(data.clone().convert::<f32>(), device)
    }

    pub fn int<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let data = self
            .io
            .get(name)
            .unwrap_or_else(|| panic!("{}: no io tensor {name}", self.name));
        Tensor::from_data(data.clone().convert::<i64>(), device)
    }

    pub fn values_f32(&self, name: &str) -> Vec<f32> {
        self.io[name]
            .clone()
            .convert::<f32>()
            .to_vec()
            .expect("f32 values")
    }

    pub fn values_i64(&self, name: &str) -> Vec<i64> {
        self.io[name]
            .clone()
            .convert::<i64>()
            .to_vec()
            .expect("i64 values")
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.io[name].shape.to_vec()
    }

    /// `(atol, rtol)` of an expected tensor from the manifest.
    pub fn tolerance(&self, name: &str) -> (f64, f64) {
        let t = &self.json["io"][name]["tolerance"];
        (
            t["atol"]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: {name} has no atol", self.name)),
            t["rtol"].as_f64().unwrap_or(0.0),
        )
    }
}

/// Result of comparing one tensor with its expected value.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub max_abs_err: f64,
    /// Elements outside `atol + rtol · |expected|`.
    pub violations: usize,
}

/// Elementwise comparison in the manner of `torch.allclose`; -inf must match -inf exactly.
pub fn compare(actual: &[f32], expected: &[f32], atol: f64, rtol: f64) -> Comparison {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let mut max_abs_err = 0f64;
    let mut violations = 0;
    for (&a, &e) in actual.iter().zip(expected) {
        if e.is_infinite() || a.is_infinite() {
            if a != e {
                violations += 1;
                max_abs_err = f64::INFINITY;
            }
            continue;
        }
        let err = (a as f64 - e as f64).abs();
        if err.is_nan() {
            violations += 1;
            max_abs_err = f64::NAN;
            continue;
        }
        max_abs_err = max_abs_err.max(err);
        if err > atol + rtol * (e as f64).abs() {
            violations += 1;
        }
    }
    Comparison {
        max_abs_err,
        violations,
    }
}

pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 values")
}

pub fn to_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().expect("i64 values")
}

/// Collects per-tensor results so a test reports every failure of a case, not only the first.
#[derive(Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// Compares `actual` with the case's expected tensor `name` at the manifest tolerance,
    /// scaled by `tol_scale` (1 on the CPU).
    pub fn check_close(
        &mut self,
        case: &Case,
        label: &str,
        name: &str,
        actual: Vec<f32>,
        tol_scale: f64,
    ) {
        let (atol, rtol) = case.tolerance(name);
        let (atol, rtol) = (atol * tol_scale, rtol * tol_scale);
        let expected = case.values_f32(name);
        if actual.len() != expected.len() {
            self.failures.push(format!(
                "{} {label} {name}: {} values, expected {}",
                case.name,
                actual.len(),
                expected.len()
            ));
            return;
        }
        let c = compare(&actual, &expected, atol, rtol);
        let line = format!(
            "{} {label} {name}: max abs err {:.3e} (atol {atol:.0e}, rtol {rtol:.0e})",
            case.name, c.max_abs_err
        );
        if c.violations > 0 {
            self.failures
                .push(format!("{line}: {} values out of tolerance", c.violations));
        }
        self.lines.push(line);
    }

    pub fn check_exact(&mut self, case: &Case, label: &str, name: &str, actual: Vec<i64>) {
        let expected = case.values_i64(name);
        let wrong = actual.iter().zip(&expected).filter(|(a, e)| a != e).count()
            + actual.len().abs_diff(expected.len());
        let line = format!(
            "{} {label} {name}: {wrong} of {} differ (exact)",
            case.name,
            expected.len()
        );
        if wrong > 0 {
            self.failures.push(line.clone());
        }
        self.lines.push(line);
    }

    /// Records a failure for every expected tensor of `case` that is not in `covered`.
    pub fn require_covered(&mut self, case: &Case, covered: &[String]) {
        for name in case.expected_names() {
            if !covered.contains(&name) {
                self.failures.push(format!(
                    "{}: expected tensor {name} was not checked",
                    case.name
                ));
            }
        }
    }

    /// Prints every line (visible with `--nocapture`) and fails with every failure.
    pub fn finish(self) {
        for l in &self.lines {
            println!("{l}");
        }
        assert!(
            self.failures.is_empty(),
            "parity failures:\n{}",
            self.failures.join("\n")
        );
    }
}

/// One request per sample of a fixture case, each with `params`: its labels (c2i), or its caption
/// features and mask (t2i).
pub fn requests(
    case: &Case,
    model_type: llamagen::config::ModelType,
    params: llamagen::sampling::SamplerParams,
) -> Vec<llamagen::generate::Request> {
    use llamagen::config::ModelType;
    use llamagen::generate::{Request, RequestCondition};
    match model_type {
        ModelType::C2i => case
            .values_i64("labels")
            .into_iter()
            .map(|c| Request::class(c as usize, params))
            .collect(),
        ModelType::T2i => {
            let shape = case.shape("caption");
            let (b, t) = (shape[0], shape[1]);
            let per = t * shape[2];
            let feats = case.values_f32("caption");
            let masks = case.values_i64("emb_masks");
            (0..b)
                .map(|i| Request {
                    condition: RequestCondition::Caption {
                        features: feats[i * per..(i + 1) * per].to_vec(),
                        mask: masks[i * t..(i + 1) * t].iter().map(|&m| m == 1).collect(),
                    },
                    params,
                    prefix: Vec::new(),
                })
                .collect()
        }
    }
}
