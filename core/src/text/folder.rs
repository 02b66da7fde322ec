//! A Hugging Face T5 model folder: `config.json`, the weights (`model.safetensors`, sharded
//! safetensors with `model.safetensors.index.json`, or the older `pytorch_model.bin` /
//! `pytorch_model.bin.index.json` shards, read by the same pickle-free `.pt` reader as the
//! checkpoints) and `tokenizer.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::TextError;
use super::t5::{T5Config, T5Encoder};
use crate::checkpoint::{StateDict, WeightsChoice};

/// Weight layouts of a model folder, in the order they are looked for.
const WEIGHT_FILES: &[&str] = &[
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The files of a T5 model folder, found and checked (nothing loaded yet but the config).
#[derive(Debug, Clone)]
pub struct T5Folder {
    pub dir: PathBuf,
    pub config: T5Config,
    /// The weight files (one, or every shard named by the index).
    pub weights: Vec<PathBuf>,
}

impl T5Folder {
    /// Finds `config.json` and the weights; says which file is missing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, TextError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(TextError::FolderNotFound(dir));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(TextError::MissingFile {
                dir,
                file: "config.json".into(),
            });
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| TextError::Config {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config: T5Config = serde_json::from_str(&text).map_err(|e| TextError::Config {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        config.validate().map_err(|e| TextError::Config {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let weights = find_weights(&dir)?;
        Ok(Self {
            dir,
            config,
            weights,
        })
    }

    /// The folder's `tokenizer.json` (an error naming it when it is absent).
    pub fn tokenizer_path(&self) -> Result<PathBuf, TextError> {
        let path = self.dir.join("tokenizer.json");
        if path.is_file() {
            Ok(path)
        } else {
            Err(TextError::MissingFile {
                dir: self.dir.clone(),
                file: "tokenizer.json".into(),
            })
        }
    }

    /// Every weight file as one state dict.
    pub fn state_dict(&self) -> Result<StateDict, TextError> {
        Ok(match self.weights.as_slice() {
            [one] => StateDict::open(one, WeightsChoice::Model)?,
            many => StateDict::open_shards(&self.dir, many, WeightsChoice::Model)?,
        })
    }

    /// Loads the encoder (in f32, whatever the stored dtype).
    pub fn load_encoder<B: Backend>(&self, device: &B::Device) -> Result<T5Encoder<B>, TextError> {
        self.load_encoder_as(burn::tensor::FloatDType::F32, device)
    }

    /// Loads the encoder with its weights in `dtype` (see [`T5Encoder::load_as`]).
    pub fn load_encoder_as<B: Backend>(
        &self,
        dtype: burn::tensor::FloatDType,
        device: &B::Device,
    ) -> Result<T5Encoder<B>, TextError> {
        let state = self.state_dict()?;
        T5Encoder::load_as(&state, &self.config, dtype, device).map_err(|source| {
            TextError::Weights {
                dir: self.dir.clone(),
                source,
            }
        })
    }
}

fn find_weights(dir: &Path) -> Result<Vec<PathBuf>, TextError> {
    for name in WEIGHT_FILES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        if !name.ends_with(".index.json") {
            return Ok(vec![path]);
        }
        let bad = |reason: String| TextError::Index {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.is_empty() {
            return Err(bad("the weight map names no files".into()));
        }
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let file = dir.join(shard);
            if !file.is_file() {
                return Err(TextError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: format!("{shard} (listed in {name})"),
                });
            }
            files.push(file);
        }
        return Ok(files);
    }
    Err(TextError::MissingFile {
        dir: dir.to_path_buf(),
        file: format!("weights (one of {})", WEIGHT_FILES.join(", ")),
    })
}
