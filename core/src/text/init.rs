//! A small T5-style text encoder that the project makes itself, for text-conditional models
//! trained with no download: a word-level `tokenizer.json` over the words of a caption set, a
//! T5 v1.1 `config.json`, and `model.safetensors` holding weights drawn from a seed with
//! Hugging Face's T5 initialisation. The folder is an ordinary T5 model folder: everything that
//! reads FLAN-T5 reads it the same way.
//!
//! Its weights are not trained: a randomly initialised encoder still maps different words to
//! different, fixed features, and the generator's caption MLP learns to read them.

use std::path::Path;

use burn::tensor::TensorData;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{T5Config, TextError, clean, write_word_tokenizer};

/// The distinct words of `captions` after the official cleaning, sorted.
pub fn caption_words<'a>(captions: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut words: Vec<String> = captions
        .into_iter()
        .flat_map(|c| {
            clean::preprocess_prompt(c)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    words.sort();
    words.dedup();
    words
}

/// A small gated-GELU T5 v1.1 encoder over a vocabulary of `vocab_size` tokens.
pub fn small_config(
    vocab_size: usize,
    d_model: usize,
    num_layers: usize,
    num_heads: usize,
) -> T5Config {
    // FLAN-T5's buckets, epsilon, feed-forward and special ids; a small width.
    T5Config {
        vocab_size,
        d_model,
        d_kv: (d_model / num_heads).max(1),
        d_ff: 2 * d_model,
        num_layers,
        num_heads,
        ..T5Config::flan_t5_xl()
    }
}

/// Every encoder tensor of `cfg`, drawn from `seed` with the initialisation of `transformers`'
/// `T5PreTrainedModel._init_weights` (factor 1): embedding N(0, 1); query N(0, (d_model ·
/// d_kv)^-½); key and value N(0, d_model^-½); output N(0, (heads · d_kv)^-½); relative
/// position bias N(0, d_model^-½); feed-forward in N(0, d_model^-½), out N(0, d_ff^-½); layer
/// norms 1.
pub fn random_state(cfg: &T5Config, seed: u64) -> Vec<(String, TensorData)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = cfg.d_model as f64;
    cfg.state_dict_specs()
        .into_iter()
        .map(|spec| {
            let n: usize = spec.shape.iter().product();
            let name = spec.name.as_str();
            let std = if name.ends_with("layer_norm.weight") {
                None
            } else if name == "shared.weight" {
                Some(1.0)
            } else if name.ends_with(".q.weight") {
                Some((d * cfg.d_kv as f64).powf(-0.5))
            } else if name.ends_with(".o.weight") {
                Some(((cfg.num_heads * cfg.d_kv) as f64).powf(-0.5))
            } else if name.ends_with(".wo.weight") {
                Some((cfg.d_ff as f64).powf(-0.5))
            } else {
                Some(d.powf(-0.5))
            };
            let values: Vec<f32> = match std {
                None => vec![1.0; n],
                Some(s) => (0..n).map(|_| (normal(&mut rng) * s) as f32).collect(),
            };
            (
                spec.name.clone(),
                TensorData::new(values, spec.shape.clone()),
            )
        })
        .collect()
}

/// One standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Writes a T5 model folder (`config.json`, `tokenizer.json`, `model.safetensors`) for a
/// word-level vocabulary over `words`, with weights from `seed`; returns its config.
pub fn write_t5_folder(
    dir: &Path,
    words: &[String],
    d_model: usize,
    num_layers: usize,
    num_heads: usize,
    seed: u64,
) -> Result<T5Config, TextError> {
    if num_heads == 0 || d_model % num_heads != 0 {
        return Err(TextError::Config {
            path: dir.join("config.json"),
            reason: format!("d_model {d_model} does not divide into {num_heads} heads"),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| TextError::Config {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let tokenizer = dir.join("tokenizer.json");
    write_word_tokenizer(&tokenizer, &refs)?;
    // The word tokenizer's vocabulary: 3 specials, the words, `▁` and 26 letters.
    let cfg = small_config(words.len() + 30, d_model, num_layers, num_heads);
    cfg.validate()
        .map_err(|e| TextError::Checkpoint(e.into()))?;
    let config_path = dir.join("config.json");
    let mut json = serde_json::to_value(&cfg).expect("configs serialise");
    json["model_type"] = "t5".into();
    json["architectures"] = serde_json::json!(["T5EncoderModel"]);
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&json).expect("json") + "\n",
    )
    .map_err(|e| TextError::Config {
        path: config_path.clone(),
        reason: e.to_string(),
    })?;
    crate::checkpoint::write_safetensors(
        &dir.join("model.safetensors"),
        &random_state(&cfg, seed),
        None,
    )?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_cleaned_distinct_and_sorted() {
        let w = caption_words(["A Red star on a blue background", "red stripes on BLUE"]);
        assert_eq!(
            w,
            ["a", "background", "blue", "on", "red", "star", "stripes"]
        );
    }

    #[test]
    fn weights_follow_the_seed_and_the_t5_scales() {
        let cfg = small_config(40, 64, 2, 4);
        let a = random_state(&cfg, 7);
        assert_eq!(a, random_state(&cfg, 7));
        assert_ne!(a, random_state(&cfg, 8));
        let std_of = |name: &str| {
            let v: Vec<f32> = a
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .to_vec()
                .unwrap();
            let m = v.iter().sum::<f32>() / v.len() as f32;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
        };
        assert!((std_of("shared.weight") - 1.0).abs() < 0.1);
        let q = std_of("encoder.block.0.layer.0.SelfAttention.q.weight");
        assert!((q - (64.0f32 * 16.0).powf(-0.5)).abs() < 0.01, "{q}");
        assert_eq!(std_of("encoder.final_layer_norm.weight"), 0.0);
    }
}
