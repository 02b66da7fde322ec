//! The prompt pipeline around the T5 encoder: model-folder layouts (single, sharded
//! safetensors, `pytorch_model.bin` and its shards) and their errors, tokenization + encoding +
//! official left padding, the per-prompt cache, and prompts driving the t2i generator. Built on
//! the reference fixtures' tiny T5 and t2i GPT (shapes from the manifest) with a tokenizer the
//! test writes itself.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use llamagen::checkpoint::{StateDict, Weights, WeightsChoice, write_safetensors};
use llamagen::config::ModelType;
use llamagen::generate::{Generator, Request, RequestCondition};
use llamagen::gpt::Transformer;
use llamagen::sampling::SamplerParams;
use llamagen::text::{T5Folder, TextEncoder, TextError, left_pad, write_word_tokenizer};
use llamagen_tests::{Case, Manifest, compare, to_f32};

type B = llamagen::backend::Cpu;

const WORDS: &[&str] = &[
    "a", "red", "cat", "dog", "on", "the", "mat", "blue", "sky", "photo", "of",
];

fn t5_case() -> Case {
    Manifest::load()
        .t5_cases()
        .into_iter()
        .next()
        .expect("a T5 case in the manifest")
}

/// The case's Hugging Face folder (the parent of its `…/config.json`).
fn hf_folder(case: &Case) -> PathBuf {
    case.weight_files()
        .into_iter()
        .find(|f| f.ends_with("config.json"))
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .expect("the T5 case has a model folder")
}

/// A copy of the case's model folder plus a tokenizer.json.
fn model_dir(case: &Case, dir: &Path) -> PathBuf {
    let out = dir.join("t5");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(hf_folder(case)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    write_word_tokenizer(&out.join("tokenizer.json"), WORDS).unwrap();
    out
}

fn forward_reference_input(folder: &T5Folder, case: &Case) -> Vec<f32> {
    let device = Default::default();
    let model = folder.load_encoder::<B>(&device).unwrap();
    let ids = case.int::<B, 2>("input_ids", &device);
    let mask = case.int::<B, 2>("attention_mask", &device).equal_elem(1);
    to_f32(model.forward(ids, Some(mask)))
}

#[test]
fn every_folder_layout_loads_the_same_encoder() {
    let case = t5_case();
    let tmp = tempfile::tempdir().unwrap();
    let expected = case.values_f32("last_hidden_state");
    let (atol, rtol) = case.tolerance("last_hidden_state");
    let config = hf_folder(&case).join("config.json");
    let state = case.state_dict();
    let device = Default::default();
    let w = Weights::<B>::new(&state, &device);
    let keys: Vec<String> = state.keys().map(str::to_string).collect();
    let pt = case.dir.join(format!("{}.pt", case.name));

    let layouts: Vec<(&str, Box<dyn Fn(&Path)>)> = vec![
        (
            "model.safetensors",
            Box::new(|d: &Path| {
                std::fs::copy(
                    hf_folder(&case).join("model.safetensors"),
                    d.join("model.safetensors"),
                )
                .unwrap();
            }),
        ),
        (
            "sharded safetensors",
            Box::new(|d: &Path| {
                let mut map = serde_json::Map::new();
                for (i, part) in keys.chunks(keys.len().div_ceil(2)).enumerate() {
                    let name = format!("model-0000{}-of-00002.safetensors", i + 1);
                    let tensors: Vec<_> = part
                        .iter()
                        .map(|k| (k.clone(), w.data(k).unwrap()))
                        .collect();
                    write_safetensors(&d.join(&name), &tensors, None).unwrap();
                    for k in part {
                        map.insert(k.clone(), serde_json::Value::String(name.clone()));
                    }
                }
                let index = serde_json::json!({"metadata": {}, "weight_map": map});
                std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
            }),
        ),
        (
            "pytorch_model.bin",
            Box::new(|d: &Path| {
                std::fs::copy(&pt, d.join("pytorch_model.bin")).unwrap();
            }),
        ),
        (
            "pytorch_model.bin shards",
            Box::new(|d: &Path| {
                let shard = "pytorch_model-00001-of-00001.bin";
                std::fs::copy(&pt, d.join(shard)).unwrap();
                let map: serde_json::Map<String, serde_json::Value> = keys
                    .iter()
                    .map(|k| (k.clone(), serde_json::Value::String(shard.into())))
                    .collect();
                let index = serde_json::json!({"weight_map": map});
                std::fs::write(d.join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
            }),
        ),
    ];
    for (i, (label, make)) in layouts.iter().enumerate() {
        let dir = tmp.path().join(format!("layout{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&config, dir.join("config.json")).unwrap();
        make(&dir);
        let folder = T5Folder::open(&dir).unwrap_or_else(|e| panic!("{label}: {e}"));
        let actual = forward_reference_input(&folder, &case);
        let c = compare(&actual, &expected, atol, rtol);
        println!("{label}: max abs err {:.3e}", c.max_abs_err);
        assert_eq!(c.violations, 0, "{label}: max abs err {}", c.max_abs_err);
    }
}

#[test]
fn folder_problems_name_the_missing_file() {
    let case = t5_case();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t5");
    let msg = |r: Result<T5Folder, TextError>| r.unwrap_err().to_string();

    assert!(msg(T5Folder::open(&dir)).contains("not found"));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(msg(T5Folder::open(&dir)).contains("config.json"));
    std::fs::copy(
        hf_folder(&case).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = msg(T5Folder::open(&dir));
    assert!(
        err.contains("model.safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );

    // An index naming a shard that is not there.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = msg(T5Folder::open(&dir));
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();

    // Weights but no tokenizer.json: the encoder loads, the text encoder says what is missing.
    std::fs::copy(
        hf_folder(&case).join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    assert!(T5Folder::open(&dir).is_ok());
    let err = TextEncoder::<B>::load(&dir, 16, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // Weights that do not fit the config: every problem named.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // One layer more than the case has: the first missing block is named.
    let layers = cfg["num_layers"].as_u64().expect("config.json: num_layers");
    cfg["num_layers"] = serde_json::json!(layers + 1);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = T5Folder::open(&dir)
        .unwrap()
        .load_encoder::<B>(&Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("encoder.block.{layers}")), "{err}");

    // A config that is not a T5 config.
    std::fs::write(dir.join("config.json"), r#"{"d_model": 4}"#).unwrap();
    let err = msg(T5Folder::open(&dir));
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn prompts_become_left_padded_cached_features() {
    let case = t5_case();
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(&case, tmp.path());
    let device = Default::default();
    let len = 10;
    let mut enc = TextEncoder::<B>::load(&dir, len, &device).unwrap();
    let d = enc.dim();
    assert_eq!(d, case.t5_config().d_model);

    let f = enc
        .encode("A RED Cat on the mat!!! https://example.com")
        .unwrap();
    assert_eq!(f.cleaned, "a red cat on the mat!!!");
    let tokens = enc.tokenizer.tokenize(&f.cleaned, len).unwrap();
    assert_eq!(f.tokens, tokens.len());
    // Left padding: valid positions last, padding rows zero.
    let n = f.tokens;
    assert!(f.mask[..len - n].iter().all(|&m| !m) && f.mask[len - n..].iter().all(|&m| m));
    assert!(f.features[..(len - n) * d].iter().all(|&x| x == 0.0));
    // The same as the encoder run by hand, then the official left padding.
    let model = T5Folder::open(&dir)
        .unwrap()
        .load_encoder::<B>(&device)
        .unwrap();
    let ids: Vec<i64> = tokens.ids.iter().map(|&x| x as i64).collect();
    let hidden = to_f32(model.forward(
        Tensor::from_data(burn::tensor::TensorData::new(ids, [1, len]), &device),
        Some(Tensor::from_data(
            burn::tensor::TensorData::new(tokens.mask.clone(), [1, len]),
            &device,
        )),
    ));
    let (manual, mask) = left_pad(&hidden, &tokens.mask, d);
    assert_eq!(mask, f.mask);
    assert!(compare(&f.features, &manual, 1e-6, 0.0).violations == 0);

    // A batch: cached prompts are not recomputed, results in order.
    let prompts = vec![
        "a blue sky".to_string(),
        "A RED Cat on the mat!!! https://example.com".to_string(),
    ];
    let both = enc.encode_batch(&prompts).unwrap();
    assert_eq!(both[1], f);
    assert_eq!(enc.cached(), 2);
    assert_ne!(both[0].features, f.features);
    // Truncation: a long prompt keeps len − 1 words and </s>, no padding.
    let long = enc.encode(&["a red cat"; 10].join(" ")).unwrap();
    assert_eq!(long.tokens, len);

    // Freed model: cached prompts still work, new ones are a clear error.
    enc.release_model();
    assert!(!enc.is_loaded());
    assert_eq!(enc.encode("a blue sky").unwrap(), both[0]);
    let err = enc.encode("a dog").unwrap_err();
    assert!(matches!(err, TextError::Released(_)), "{err}");
    enc.clear_cache();
    assert_eq!(enc.cached(), 0);

    // Caption widths must agree with the generator's.
    assert!(enc.check_caption_dim(d).is_ok());
    let err = enc.check_caption_dim(d + 1).unwrap_err().to_string();
    assert!(
        err.contains(&d.to_string()) && err.contains(&(d + 1).to_string()),
        "{err}"
    );
}

#[test]
fn prompts_condition_the_t2i_generator() {
    let manifest = Manifest::load();
    let t5 = t5_case();
    let Some(gpt_case) = manifest
        .gpt_cases()
        .into_iter()
        .find(|c| c.gpt_config().model_type == ModelType::T2i)
    else {
        panic!("the manifest has no t2i GPT case");
    };
    let cfg = gpt_case.gpt_config();
    let device = Default::default();
    let sd = StateDict::open(
        gpt_case.dir.join(format!("{}.safetensors", gpt_case.name)),
        WeightsChoice::Model,
    )
    .unwrap();
    let gpt = Transformer::<B>::load(&sd, &cfg, &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut enc =
        TextEncoder::<B>::load(model_dir(&t5, tmp.path()), cfg.cls_token_num, &device).unwrap();
    enc.check_caption_dim(cfg.caption_dim)
        .expect("the fixtures' tiny T5 width is the tiny t2i GPT's caption width");

    let prompts: Vec<String> = ["a red cat", "a blue sky", "a red cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let feats = enc.encode_batch(&prompts).unwrap();
    assert_eq!(enc.cached(), 2);
    let requests: Vec<Request> = feats
        .iter()
        .map(|f| Request {
            condition: f.condition(),
            params: SamplerParams {
                cfg_scale: 4.0,
                seed: 7,
                ..SamplerParams::default()
            },
            prefix: Vec::new(),
        })
        .collect();
    let out = Generator::new(&gpt)
        .generate(&requests, &mut (), None)
        .unwrap();
    assert!(out.is_complete(cfg.block_size));
    // Same prompt, same seed: same image.
    assert_eq!(out.tokens[0], out.tokens[2]);

    // A caption for a class-conditional model is refused with a clear error.
    let c2i = manifest
        .gpt_cases()
        .into_iter()
        .find(|c| c.gpt_config().model_type == ModelType::C2i)
        .unwrap();
    let c2i_model = Transformer::<B>::load(&c2i.state_dict(), &c2i.gpt_config(), &device).unwrap();
    let err = Generator::new(&c2i_model)
        .generate(&requests[..1], &mut (), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class-conditional"), "{err}");
    // And a class for the text-conditional one.
    let err = Generator::new(&gpt)
        .generate(
            &[Request::class(0, SamplerParams::default())],
            &mut (),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt"), "{err}");
    assert!(matches!(
        requests[0].condition,
        RequestCondition::Caption { .. }
    ));
}
