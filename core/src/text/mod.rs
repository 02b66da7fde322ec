//! Text conditioning for the t2i models: the FLAN-T5 encoder ([`t5`]), its Hugging Face model
//! folder ([`folder`]), the prompt tokenizer ([`tokenizer`]), the official caption cleaning
//! ([`clean`]), and [`TextEncoder`], which turns prompts into the left-padded caption features
//! the generator takes (`RequestCondition::Caption`), caching them per prompt.
//!
//! # The pipeline (official `sample_t2i.py` + `language/t5.py`)
//!
//! 1. clean the prompt ([`clean::preprocess_prompt`]: `clean_caption` twice);
//! 2. tokenize to `max_length` (120) tokens: truncation, `</s>`, right padding, attention mask;
//! 3. run the T5 encoder with the mask → `last_hidden_state` `[120, d_model]` (2048 for XL);
//! 4. left-pad: the valid rows are moved to the end (`cat(emb[n:], emb[:n])`), the mask is
//!    flipped, and the features are multiplied by it (masked rows are zero);
//! 5. the GPT projects them with its caption MLP; the masks keep the padding out of attention,
//!    and CFG's unconditional rows use the model's `uncond_embedding` with the same masks.
//!
//! # Memory
//!
//! FLAN-T5-XL's encoder ([`T5Config::flan_t5_xl`]: d_model 2048, 24 layers, 32 heads × 64,
//! gated-GELU FFN 5120, vocabulary 32128) has exactly 1,223,527,424 parameters (65.8M of them
//! the token embedding): **4.89 GB (4.56 GiB) in f32**, 2.45 GB (2.28 GiB) in bf16/f16. The
//! released `flan-t5-xl` folder also holds the decoder (2.85B parameters in all); only the
//! encoder's tensors are read into the model (each converted to f32 one at a time, so a
//! tensor's stored and converted copies coexist only briefly). Activations are small
//! by comparison: one 120-token prompt needs `32 × 120 × 120` attention scores per layer
//! (1.8 MB in f32) and `120 × 5120` FFN activations (2.5 MB). [`T5Precision::Auto`] holds the
//! weights in bf16 where the backend computes in it (else f16, else f32), each tensor converted
//! as it is read, with norm statistics, attention scores and softmax in f32 as `transformers`
//! does (the official sampler runs FLAN-T5 in bf16); since a prompt is encoded once and its features
//! (`120 × 2048` f32 = 983 KB) are cached, the encoder can be freed
//! ([`TextEncoder::release_model`]) before generation starts, so T5 and the GPT never need to
//! be resident together. The tiny test model of the reference fixtures (`t5_tiny`: d_model 32,
//! 2 layers) has 23,968 parameters = 95,872 bytes in f32 and 47,936 in bf16 or f16 (measured
//! by `t5_memory_of_the_tiny_model` and `t5_in_half_precision_halves_the_weights_and_stays_close`
//! in the test suite).

pub mod clean;
pub mod folder;
pub mod init;
pub mod t5;
pub mod tokenizer;

pub use folder::T5Folder;
pub use t5::{T5Config, T5Encoder, relative_position_bucket};
pub use tokenizer::{PromptTokenizer, Tokens, write_word_tokenizer};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{Bool, DType, FloatDType, TensorData};

use crate::error::CheckpointError;
use crate::generate::RequestCondition;

/// The official maximum prompt length in tokens (`t5_feature_max_len`, = the t2i models'
/// `cls_token_num`).
pub const MAX_PROMPT_TOKENS: usize = 120;

/// Everything that can go wrong with the text encoder.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("T5 model folder not found: {0}")]
    FolderNotFound(PathBuf),
    #[error("T5 model folder {dir} has no {file}")]
    MissingFile { dir: PathBuf, file: String },
    #[error("T5 config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("T5 weight index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("T5 weights in {dir}: {source}")]
    Weights {
        dir: PathBuf,
        source: CheckpointError,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error(
        "the text encoder's features are {t5_dim}-dimensional (T5 d_model) but the generator expects captions of {caption_dim}"
    )]
    CaptionDim { t5_dim: usize, caption_dim: usize },
    #[error("the T5 model was released; prompt {0:?} is not in the cache")]
    Released(String),
    #[error("this backend cannot hold T5 in {0} (try another --t5-precision)")]
    Precision(&'static str),
}

/// The features of one prompt, left-padded: `[max_length, dim]` row-major, padding rows first
/// and zero.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionFeatures {
    /// The prompt after cleaning (what T5 saw).
    pub cleaned: String,
    pub features: Vec<f32>,
    /// True at the valid (last `tokens`) positions.
    pub mask: Vec<bool>,
    /// Number of valid tokens (including `</s>`).
    pub tokens: usize,
    pub dim: usize,
}

impl CaptionFeatures {
    /// The generator's condition for this prompt.
    pub fn condition(&self) -> RequestCondition {
        RequestCondition::Caption {
            features: self.features.clone(),
            mask: self.mask.clone(),
        }
    }
}

/// The official left padding: the `n` valid rows of right-padded `features` (`[len, dim]`,
/// `mask` true at the first `n` positions) are moved to the end, the mask is flipped, and the
/// padding rows are zeroed.
pub fn left_pad(features: &[f32], mask: &[bool], dim: usize) -> (Vec<f32>, Vec<bool>) {
    let len = mask.len();
    assert_eq!(features.len(), len * dim, "features must be [len, dim]");
    let n = mask.iter().filter(|&&m| m).count();
    let new_mask: Vec<bool> = mask.iter().rev().copied().collect();
    let mut out = Vec::with_capacity(features.len());
    // cat(emb[n:], emb[:n]) * flipped mask
    for (row, &valid) in (n..len).chain(0..n).zip(&new_mask) {
        if valid {
            out.extend_from_slice(&features[row * dim..(row + 1) * dim]);
        } else {
            out.extend(std::iter::repeat_n(0.0, dim));
        }
    }
    (out, new_mask)
}

/// How prompts are prepared before tokenization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleaning {
    /// The official `clean_caption`, twice (the default, as in training).
    #[default]
    Official,
    /// Lower-case and strip only (the official `use_text_preprocessing=False`).
    LowerStrip,
}

impl Cleaning {
    pub fn apply(self, prompt: &str) -> String {
        match self {
            Cleaning::Official => clean::preprocess_prompt(prompt),
            Cleaning::LowerStrip => clean::lower_strip(prompt),
        }
    }
}

/// The float type T5's weights are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum T5Precision {
    /// bf16 where the backend supports it, else f16, else f32: half the memory of f32
    /// (FLAN-T5 was trained in bf16, and the official sampler runs it so).
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl T5Precision {
    /// The float type this choice means on `device`; an error for a half type the backend
    /// cannot compute in.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Result<FloatDType, TextError> {
        let ok = |d: DType| B::supports_dtype(device, d);
        match self {
            T5Precision::F32 => Ok(FloatDType::F32),
            T5Precision::Bf16 if ok(DType::BF16) => Ok(FloatDType::BF16),
            T5Precision::Bf16 => Err(TextError::Precision("bf16")),
            T5Precision::F16 if ok(DType::F16) => Ok(FloatDType::F16),
            T5Precision::F16 => Err(TextError::Precision("f16")),
            T5Precision::Auto if ok(DType::BF16) => Ok(FloatDType::BF16),
            T5Precision::Auto if ok(DType::F16) => Ok(FloatDType::F16),
            T5Precision::Auto => Ok(FloatDType::F32),
        }
    }
}

/// FLAN-T5 + tokenizer + cleaning, with a per-prompt cache of the finished caption features.
pub struct TextEncoder<B: Backend> {
    model: Option<T5Encoder<B>>,
    pub tokenizer: PromptTokenizer,
    pub config: T5Config,
    pub dir: PathBuf,
    /// Tokens per prompt (= the generator's `cls_token_num`; 120 for the released models).
    pub max_length: usize,
    pub cleaning: Cleaning,
    cache: HashMap<String, CaptionFeatures>,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for TextEncoder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("dir", &self.dir)
            .field("loaded", &self.model.is_some())
            .field("max_length", &self.max_length)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl<B: Backend> TextEncoder<B> {
    /// Loads a T5 model folder (config, weights, `tokenizer.json`) in f32.
    pub fn load(
        dir: impl AsRef<Path>,
        max_length: usize,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        Self::from_folder(&T5Folder::open(dir)?, max_length, device)
    }

    /// [`TextEncoder::load`] from a folder already opened (its config can be checked first,
    /// before gigabytes of weights are read).
    pub fn from_folder(
        folder: &T5Folder,
        max_length: usize,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        Self::from_folder_as(folder, max_length, T5Precision::F32, device)
    }

    /// [`TextEncoder::from_folder`] with the weights in `precision`.
    pub fn from_folder_as(
        folder: &T5Folder,
        max_length: usize,
        precision: T5Precision,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        let dtype = precision.resolve::<B>(device)?;
        let tokenizer = PromptTokenizer::open(
            folder.tokenizer_path()?,
            folder.config.eos_token_id,
            folder.config.pad_token_id,
        )?;
        let model = folder.load_encoder_as::<B>(dtype, device)?;
        Ok(Self::new(model, tokenizer, folder.dir.clone(), max_length))
    }

    pub fn new(
        model: T5Encoder<B>,
        tokenizer: PromptTokenizer,
        dir: PathBuf,
        max_length: usize,
    ) -> Self {
        let device = model.device();
        Self {
            config: model.config.clone(),
            model: Some(model),
            tokenizer,
            dir,
            max_length: max_length.max(1),
            cleaning: Cleaning::Official,
            cache: HashMap::new(),
            device,
        }
    }

    /// The width of the features (T5's `d_model`).
    pub fn dim(&self) -> usize {
        self.config.d_model
    }

    /// An error unless the features fit a generator with `caption_dim`-wide captions.
    pub fn check_caption_dim(&self, caption_dim: usize) -> Result<(), TextError> {
        if self.dim() == caption_dim {
            Ok(())
        } else {
            Err(TextError::CaptionDim {
                t5_dim: self.dim(),
                caption_dim,
            })
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.model.is_some()
    }

    /// The float type of the loaded weights and the bytes they take (`None` once released).
    pub fn weights(&self) -> Option<(DType, usize)> {
        self.model.as_ref().map(|m| (m.dtype(), m.weight_bytes()))
    }

    /// Frees the T5 weights; cached prompts stay available.
    pub fn release_model(&mut self) {
        self.model = None;
    }

    /// Forgets every cached prompt.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The caption features of one prompt.
    pub fn encode(&mut self, prompt: &str) -> Result<CaptionFeatures, TextError> {
        Ok(self
            .encode_batch(&[prompt.to_string()])?
            .pop()
            .expect("one result per prompt"))
    }

    /// The caption features of several prompts; those not cached yet are encoded in one
    /// batch.
    pub fn encode_batch(&mut self, prompts: &[String]) -> Result<Vec<CaptionFeatures>, TextError> {
        let mut todo: Vec<&String> = Vec::new();
        for p in prompts {
            if !self.cache.contains_key(p) && !todo.contains(&p) {
                todo.push(p);
            }
        }
        if !todo.is_empty() {
            let Some(model) = &self.model else {
                return Err(TextError::Released(todo[0].clone()));
            };
            let (len, dim) = (self.max_length, self.config.d_model);
            let cleaned: Vec<String> = todo.iter().map(|p| self.cleaning.apply(p)).collect();
            let mut ids = Vec::with_capacity(todo.len() * len);
            let mut masks = Vec::with_capacity(todo.len() * len);
            for text in &cleaned {
                let t = self.tokenizer.tokenize(text, len)?;
                ids.extend(t.ids.iter().map(|&x| x as i64));
                masks.extend(t.mask);
            }
            let b = todo.len();
            let input =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, len]), &self.device);
            let mask = Tensor::<B, 2, Bool>::from_data(
                TensorData::new(masks.clone(), [b, len]),
                &self.device,
            );
            let hidden: Vec<f32> = model
                .forward(input, Some(mask))
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 features");
            for (i, (prompt, text)) in todo.iter().zip(cleaned).enumerate() {
                let rows = &hidden[i * len * dim..(i + 1) * len * dim];
                let mask = &masks[i * len..(i + 1) * len];
                let (features, mask) = left_pad(rows, mask, dim);
                let tokens = mask.iter().filter(|&&m| m).count();
                self.cache.insert(
                    (*prompt).clone(),
                    CaptionFeatures {
                        cleaned: text,
                        features,
                        mask,
                        tokens,
                        dim,
                    },
                );
            }
        }
        Ok(prompts.iter().map(|p| self.cache[p].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_moves_valid_rows_to_the_end() {
        // 4 positions × 2 dims, 2 valid tokens (right-padded).
        let feats = [1., 2., 3., 4., 9., 9., 8., 8.];
        let mask = [true, true, false, false];
        let (f, m) = left_pad(&feats, &mask, 2);
        assert_eq!(m, vec![false, false, true, true]);
        assert_eq!(f, vec![0., 0., 0., 0., 1., 2., 3., 4.]);
        // All valid: unchanged.
        let (f, m) = left_pad(&feats, &[true; 4], 2);
        assert_eq!((f.as_slice(), m), (&feats[..], vec![true; 4]));
    }
}
