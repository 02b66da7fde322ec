//! Checkpoint handling: key lists and parameter counts of the official configurations, config
//! inference, and a clear error (never a panic) for every kind of bad checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llamagen::checkpoint::{
    GptHints, Shapes, StateDict, WeightsChoice, infer_gpt_config, infer_vq_config,
};
use llamagen::config::{GptConfig, ModelType, VqConfig};
use llamagen::error::CheckpointError;
use llamagen::gpt::Transformer;
use llamagen::vq::VqModel;
use llamagen_tests::{Manifest, reference_dir};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

type B = llamagen::backend::Cpu;

fn read_json(name: &str) -> Value {
    let path = reference_dir().join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("valid JSON")
}

fn key_list(file: &str) -> BTreeMap<String, Vec<usize>> {
    read_json(file)["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| {
            let shape = k["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k["name"].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

fn spec_map(specs: Vec<llamagen::config::TensorSpec>) -> BTreeMap<String, Vec<usize>> {
    specs.into_iter().map(|s| (s.name, s.shape)).collect()
}

#[test]
fn gpt_b_key_list_is_exactly_the_official_one() {
    let official = key_list("gpt_b_c2i_keys.json");
    let ours = spec_map(GptConfig::named("GPT-B").unwrap().state_dict_specs());
    assert_eq!(ours.len(), official.len());
    assert_eq!(ours, official);
}

#[test]
fn vq16_key_list_is_exactly_the_official_one() {
    let official = key_list("vq16_keys.json");
    let ours = spec_map(VqConfig::named("VQ-16").unwrap().state_dict_specs());
    assert_eq!(ours.len(), official.len());
    assert_eq!(ours, official);
}

#[test]
fn parameter_counts_equal_the_official_ones() {
    let counts = read_json("param_counts.json");
    let configs = counts["configs"].as_object().expect("configs");
    assert!(configs.len() >= 10);
    for (label, entry) in configs {
        let constructor = entry["constructor"].as_str().unwrap();
        let name = constructor.split('\'').nth(1).expect("quoted model name");
        let expected = entry["total_params"].as_u64().unwrap() as usize;
        let kwargs = &entry["kwargs"];
        let ours = if name.starts_with("VQ") {
            let mut cfg = VqConfig::named(name).unwrap();
            if let Some(n) = kwargs["codebook_size"].as_u64() {
                cfg.codebook_size = n as usize;
            }
            if let Some(n) = kwargs["codebook_embed_dim"].as_u64() {
                cfg.codebook_embed_dim = n as usize;
            }
            cfg.num_params()
        } else {
            let mut cfg = GptConfig::named(name).unwrap();
            if kwargs["model_type"] == "t2i" {
                cfg = cfg.into_t2i();
            }
            for (k, v) in kwargs.as_object().unwrap() {
                let n = v.as_u64().map(|n| n as usize);
                match k.as_str() {
                    "vocab_size" => cfg.vocab_size = n.unwrap(),
                    "block_size" => cfg.block_size = n.unwrap(),
                    "num_classes" => cfg.num_classes = n.unwrap(),
                    "cls_token_num" => cfg.cls_token_num = n.unwrap(),
                    "caption_dim" => cfg.caption_dim = n.unwrap(),
                    "model_type" => {}
                    other => panic!("{label}: unhandled kwarg {other}"),
                }
            }
            if let Some(h) = entry["ffn_hidden_dim"].as_u64() {
                assert_eq!(cfg.ffn_hidden_dim(), h as usize, "{label}: ffn width");
            }
            cfg.num_params()
        };
        assert_eq!(ours, expected, "{label}: parameter count");
    }
}

#[test]
fn config_is_inferred_from_official_shapes_and_file_name() {
    let shapes: Shapes = key_list("gpt_b_c2i_keys.json");
    let hints = |file: &str| GptHints {
        file_name: Some(PathBuf::from(file)),
        ..GptHints::default()
    };
    let cfg = infer_gpt_config(&shapes, &hints("c2i_B_256.pt")).unwrap();
    assert_eq!(cfg, GptConfig::named("GPT-B").unwrap());
    let cfg = infer_gpt_config(&shapes, &hints("c2i_B_384.pt")).unwrap();
    assert_eq!(cfg.block_size, 576);
    // An explicit image size wins over the file name.
    let cfg = infer_gpt_config(
        &shapes,
        &GptHints {
            image_size: Some(384),
            ..hints("c2i_B_256.pt")
        },
    )
    .unwrap();
    assert_eq!(cfg.grid_size(), 24);

    let vq = infer_vq_config(&key_list("vq16_keys.json")).unwrap();
    assert_eq!(vq, VqConfig::named("VQ-16").unwrap());
}

#[test]
fn config_is_inferred_for_every_reference_case() {
    let manifest = Manifest::load();
    for case in manifest.gpt_cases() {
        let expected = case.gpt_config();
        let sd = case.state_dict();
        let hints = GptHints {
            n_head: Some(expected.n_head),
            image_size: Some(expected.grid_size() * 16),
            downsample: Some(16),
            ..GptHints::default()
        };
        let cfg = sd.infer_gpt_config(&hints).unwrap();
        assert_eq!(cfg.dim, expected.dim, "{}", case.name);
        assert_eq!(cfg.n_layer, expected.n_layer, "{}", case.name);
        assert_eq!(cfg.kv_heads(), expected.kv_heads(), "{}", case.name);
        assert_eq!(cfg.vocab_size, expected.vocab_size, "{}", case.name);
        assert_eq!(cfg.block_size, expected.block_size, "{}", case.name);
        assert_eq!(cfg.model_type, expected.model_type, "{}", case.name);
        assert_eq!(cfg.cls_token_num, expected.cls_token_num, "{}", case.name);
        match cfg.model_type {
            ModelType::C2i => assert_eq!(cfg.num_classes, expected.num_classes, "{}", case.name),
            ModelType::T2i => assert_eq!(cfg.caption_dim, expected.caption_dim, "{}", case.name),
        }
        assert_eq!(
            cfg.state_dict_specs(),
            expected.state_dict_specs(),
            "{}",
            case.name
        );
    }
    for case in manifest.vq_cases() {
        let sd = case.state_dict();
        assert_eq!(
            sd.infer_vq_config().unwrap(),
            case.vq_config(),
            "{}",
            case.name
        );
    }
}

// ---- bad checkpoints ---------------------------------------------------------------------

fn tiny_gpt() -> (PathBuf, GptConfig) {
    let manifest = Manifest::load();
    let case = manifest
        .gpt_cases()
        .into_iter()
        .find(|c| c.name == "gpt_c2i_tiny")
        .expect("gpt_c2i_tiny case");
    (case.dir.join("gpt_c2i_tiny.safetensors"), case.gpt_config())
}

/// Rewrites a safetensors state dict through `edit` (drop, add, reshape entries).
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) {
    let sd = StateDict::open(src, WeightsChoice::Model).unwrap();
    let device = Default::default();
    let w = llamagen::checkpoint::Weights::<B>::new(&sd, &device);
    let mut map: BTreeMap<String, (Vec<usize>, Vec<f32>)> = sd
        .keys()
        .map(|k| {
            let d = w.data(k).unwrap();
            (
                k.to_string(),
                (d.shape.to_vec(), d.to_vec::<f32>().unwrap()),
            )
        })
        .collect();
    edit(&mut map);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .into_iter()
        .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, dst).unwrap();
}

fn load_err(path: &Path, cfg: &GptConfig) -> CheckpointError {
    match StateDict::open(path, WeightsChoice::Model) {
        Err(e) => e,
        Ok(sd) => {
            Transformer::<B>::load(&sd, cfg, &Default::default()).expect_err("load must fail")
        }
    }
}

#[test]
fn missing_file_is_reported_with_its_path() {
    let err = StateDict::open("/no/such/c2i_B_256.pt", WeightsChoice::Model).unwrap_err();
    assert!(matches!(err, CheckpointError::NotFound(_)));
    assert!(err.to_string().contains("/no/such/c2i_B_256.pt"), "{err}");
}

#[test]
fn directory_and_non_checkpoint_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = StateDict::open(dir.path(), WeightsChoice::Model).unwrap_err();
    assert!(err.to_string().contains("expected a file"), "{err}");

    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "this is not a checkpoint\n").unwrap();
    let err = StateDict::open(&text, WeightsChoice::Model).unwrap_err();
    assert!(matches!(err, CheckpointError::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("notes.pt"), "{err}");

    let fake = dir.path().join("fake.safetensors");
    std::fs::write(&fake, [0u8; 3]).unwrap();
    let err = StateDict::open(&fake, WeightsChoice::Model).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Unreadable {
                format: "safetensors",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (st, cfg) = tiny_gpt();
    let pt = st.with_extension("pt");
    for (src, name) in [(&pt, "cut.pt"), (&st, "cut.safetensors")] {
        let bytes = std::fs::read(src).unwrap();
        for fraction in [2, 4, 10] {
            let cut = dir.path().join(name);
            std::fs::write(&cut, &bytes[..bytes.len() - bytes.len() / fraction]).unwrap();
            let result = std::panic::catch_unwind(|| load_err(&cut, &cfg));
            let err =
                result.unwrap_or_else(|_| panic!("loading {name} cut by 1/{fraction} panicked"));
            let msg = err.to_string();
            assert!(!msg.is_empty());
        }
    }
}

#[test]
fn missing_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (st, cfg) = tiny_gpt();
    let out = dir.path().join("missing.safetensors");
    rewrite(&st, &out, |m| {
        m.remove("norm.weight");
        m.remove("layers.1.feed_forward.w2.weight");
    });
    let err = load_err(&out, &cfg);
    assert!(
        matches!(err, CheckpointError::MissingKeys(ref k) if k.len() == 2),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("norm.weight") && msg.contains("layers.1.feed_forward.w2.weight"),
        "{msg}"
    );
}

#[test]
fn unexpected_keys_are_listed_but_official_extras_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (st, cfg) = tiny_gpt();
    let out = dir.path().join("extra.safetensors");
    rewrite(&st, &out, |m| {
        m.insert("layers.0.attention.bias".into(), (vec![4], vec![0.0; 4]));
    });
    let err = load_err(&out, &cfg);
    assert!(matches!(err, CheckpointError::UnexpectedKeys(_)), "{err}");
    assert!(err.to_string().contains("layers.0.attention.bias"), "{err}");

    // Released GPT checkpoints may carry freqs_cis; caches are not weights either.
    let out = dir.path().join("official_extras.safetensors");
    rewrite(&st, &out, |m| {
        m.insert("freqs_cis".into(), (vec![17, 8, 2], vec![0.0; 17 * 16]));
        m.insert(
            "layers.0.attention.kv_cache.k_cache".into(),
            (vec![1, 4, 8, 16], vec![0.0; 512]),
        );
    });
    let sd = StateDict::open(&out, WeightsChoice::Model).unwrap();
    Transformer::<B>::load(&sd, &cfg, &Default::default()).expect("official extras are ignored");
}

#[test]
fn shape_mismatches_name_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (st, cfg) = tiny_gpt();
    let out = dir.path().join("shape.safetensors");
    // The same values under another shape: half the rows, twice the columns (or one column).
    let mut shapes = None;
    rewrite(&st, &out, |m| {
        let (shape, v) = m.remove("output.weight").unwrap();
        let wrong = match shape[..] {
            [rows, cols] if rows % 2 == 0 => vec![rows / 2, cols * 2],
            _ => vec![shape.iter().product(), 1],
        };
        assert_ne!(shape, wrong);
        shapes = Some((shape, wrong.clone()));
        m.insert("output.weight".into(), (wrong, v));
    });
    let (expected, wrong) = shapes.unwrap();
    let err = load_err(&out, &cfg);
    let msg = err.to_string();
    assert!(matches!(err, CheckpointError::ShapeMismatch(_)), "{msg}");
    assert!(
        msg.contains("output.weight")
            && msg.contains(&format!("{expected:?}"))
            && msg.contains(&format!("{wrong:?}")),
        "{msg}"
    );
}

#[test]
fn a_config_that_does_not_match_the_weights_is_an_error() {
    let (st, cfg) = tiny_gpt();
    // Grouped-query config (one key/value head, where the case has as many as query heads)
    // against full-attention weights; a case with one head has no grouped variant.
    assert_eq!(
        cfg.n_kv_head.unwrap_or(cfg.n_head),
        cfg.n_head,
        "the case is full attention"
    );
    if cfg.n_head > 1 {
        let gqa = GptConfig {
            n_kv_head: Some(1),
            ..cfg.clone()
        };
        let err = load_err(&st, &gqa);
        assert!(err.to_string().contains("wqkv"), "{err}");
    }
    // A text-conditional config against a class-conditional checkpoint.
    let t2i = GptConfig {
        model_type: ModelType::T2i,
        ..cfg.clone()
    };
    let err = load_err(&st, &t2i);
    assert!(err.to_string().contains("cap_proj"), "{err}");
    // A GPT checkpoint handed to the tokenizer.
    let sd = StateDict::open(&st, WeightsChoice::Model).unwrap();
    assert!(sd.infer_vq_config().is_err());
    let err = VqModel::<B>::load(&sd, &VqConfig::named("VQ-16").unwrap(), &Default::default())
        .unwrap_err();
    assert!(err.to_string().contains("encoder.conv_in.weight"), "{err}");
    // An invalid config is refused before any tensor is read.
    // More heads than the width has channels never divide it.
    let bad = GptConfig {
        n_head: cfg.dim + 1,
        ..cfg
    };
    assert!(matches!(load_err(&st, &bad), CheckpointError::Config(_)));
}

#[test]
fn training_checkpoint_wrappers_select_model_or_ema() {
    let (st, _) = tiny_gpt();
    let ema = st.with_file_name("gpt_c2i_tiny.ema.pt");
    let sd = StateDict::open(&ema, WeightsChoice::Model).unwrap();
    assert_eq!(sd.wrapper, "model");
    let sd_ema = StateDict::open(&ema, WeightsChoice::PreferEma).unwrap();
    assert_eq!(sd_ema.wrapper, "ema");
    // Optimizer state and step counters are not taken as weights.
    assert_eq!(sd.len(), sd_ema.len());
    let fsdp = StateDict::open(
        st.with_file_name("gpt_c2i_tiny.fsdp.pt"),
        WeightsChoice::PreferEma,
    )
    .unwrap();
    assert_eq!(fsdp.wrapper, "(bare)");
    assert_eq!(fsdp.len(), sd.len());
}

#[test]
fn exported_state_dicts_use_official_names_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let manifest = Manifest::load();
    // Every GPT case: load, export, reload, compare a forward pass.
    for case in manifest.gpt_cases() {
        let cfg = case.gpt_config();
        let sd = case.state_dict();
        let model = Transformer::<B>::load(&sd, &cfg, &device).unwrap();
        let tensors = llamagen::checkpoint::state_dict(&model, &cfg.state_dict_specs()).unwrap();
        let out = dir.path().join(format!("{}.safetensors", case.name));
        llamagen::checkpoint::write_safetensors(&out, &tensors, None).unwrap();
        let back = StateDict::open(&out, WeightsChoice::Model).unwrap();
        assert!(back.check(&cfg.state_dict_specs()).is_ok());
        let w0 = llamagen::checkpoint::Weights::<B>::new(&sd, &device);
        let w1 = llamagen::checkpoint::Weights::<B>::new(&back, &device);
        for k in sd.keys() {
            assert_eq!(
                w0.data(k).unwrap(),
                w1.data(k).unwrap(),
                "{}: {k}",
                case.name
            );
        }
    }
    // A freshly initialised VQ-8-style tokenizer round-trips too.
    let cfg = VqConfig {
        ch: 32,
        z_channels: 32,
        codebook_size: 16,
        ..VqConfig::named("VQ-8").unwrap()
    };
    let vq = VqModel::<B>::init(&cfg, &device).unwrap();
    let tensors = llamagen::checkpoint::state_dict(&vq, &cfg.state_dict_specs()).unwrap();
    let out = dir.path().join("vq.safetensors");
    llamagen::checkpoint::write_safetensors(&out, &tensors, None).unwrap();
    let back = StateDict::open(&out, WeightsChoice::Model).unwrap();
    assert_eq!(back.infer_vq_config().unwrap(), cfg);
    VqModel::<B>::load(&back, &cfg, &device).unwrap();
}

#[test]
fn half_precision_files_are_half_the_size_and_load_back_within_rounding() {
    use llamagen::checkpoint::{StoredFloat, write_safetensors_as};
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let manifest = Manifest::load();
    let case = manifest.gpt_cases().into_iter().next().expect("a GPT case");
    let cfg = case.gpt_config();
    let sd = case.state_dict();
    let model = Transformer::<B>::load(&sd, &cfg, &device).unwrap();
    let tensors = llamagen::checkpoint::state_dict(&model, &cfg.state_dict_specs()).unwrap();
    let values: usize = tensors.iter().map(|(_, d)| d.num_elements()).sum();
    let size = |stored: StoredFloat| {
        let out = dir.path().join(format!("{stored}.safetensors"));
        write_safetensors_as(&out, &tensors, None, stored).unwrap();
        (out.clone(), std::fs::metadata(&out).unwrap().len() as usize)
    };
    let (_, f32_size) = size(StoredFloat::F32);
    // (type, bits kept after the leading one: the largest relative rounding is 2^-(bits+1))
    for (stored, bits) in [(StoredFloat::F16, 10), (StoredFloat::BF16, 7)] {
        let (path, bytes) = size(stored);
        // Two bytes saved a value; the headers differ only in their dtype names and offsets.
        let saved = f32_size as i64 - bytes as i64;
        assert!(
            (saved - 2 * values as i64).abs() < 16 * tensors.len() as i64,
            "{stored}: {bytes} bytes against {f32_size} in f32, for {values} values"
        );
        let back = StateDict::open(&path, WeightsChoice::Model).unwrap();
        assert!(back.check(&cfg.state_dict_specs()).is_ok(), "{stored}");
        let w = llamagen::checkpoint::Weights::<B>::new(&back, &device);
        let mut changed = 0;
        for (name, data) in &tensors {
            let orig = data.to_vec::<f32>().unwrap();
            let read = w.data(name).unwrap().to_vec::<f32>().unwrap();
            for (a, b) in orig.iter().zip(&read) {
                // Relative to the value; f16's subnormals (below 2^-14) round in steps of 2^-24.
                let bound = (a.abs() * 2f32.powi(-(bits + 1))).max(2f32.powi(-25));
                assert!(
                    (a - b).abs() <= bound,
                    "{stored} {name}: {a} read back as {b}"
                );
                changed += usize::from(a != b);
            }
        }
        assert!(
            changed > values / 2,
            "{stored}: the values were rounded ({changed} of {values})"
        );
        // The rounded file still makes the model it came from.
        assert_eq!(
            back.infer_gpt_config(&GptHints {
                n_head: Some(cfg.n_head),
                ..Default::default()
            })
            .unwrap()
            .dim,
            cfg.dim
        );
        Transformer::<B>::load(&back, &cfg, &device).unwrap();
    }
    // A value f16 cannot hold is refused, naming the tensor, and no file is left; bf16 holds it.
    let big = vec![(
        "tok_embeddings.weight".to_string(),
        burn::tensor::TensorData::new(vec![1.0f32, 70000.0], [1, 2]),
    )];
    let out = dir.path().join("big.safetensors");
    let err = write_safetensors_as(&out, &big, None, StoredFloat::F16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tok_embeddings.weight") && err.contains("70000") && err.contains("bf16"),
        "{err}"
    );
    assert!(!out.exists());
    // Integers stay exact in a 16-bit file: they are stored in f32.
    let count = dir.path().join("count.safetensors");
    let counts = vec![(
        "codebook_used".to_string(),
        burn::tensor::TensorData::new(vec![70001i64, 3], [2]),
    )];
    write_safetensors_as(&count, &counts, None, StoredFloat::F16).unwrap();
    let back = StateDict::open(&count, WeightsChoice::Model).unwrap();
    let w = llamagen::checkpoint::Weights::<B>::new(&back, &device);
    assert_eq!(
        w.data("codebook_used").unwrap().to_vec::<f32>().unwrap(),
        vec![70001.0, 3.0]
    );
    write_safetensors_as(&out, &big, None, StoredFloat::BF16).unwrap();
    let back = StateDict::open(&out, WeightsChoice::Model).unwrap();
    let w = llamagen::checkpoint::Weights::<B>::new(&back, &device);
    assert_eq!(
        w.data("tok_embeddings.weight")
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0, 70144.0]
    );
}
