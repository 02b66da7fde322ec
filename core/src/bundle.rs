//! A model the user picks: a tokenizer and a generator that fit together, plus what the weights
//! cannot say (image size, class names). The CLI and the studio both load models through here.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::checkpoint::{GptHints, StateDict, WeightsChoice};
use crate::classes::ClassNames;
use crate::config::ModelType;
use crate::error::CheckpointError;
use crate::gpt::Transformer;
use crate::image_io::ModelFile;
use crate::vq::VqModel;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("generator {path}: {source}")]
    Gpt {
        path: PathBuf,
        source: CheckpointError,
    },
    #[error("tokenizer {path}: {source}")]
    Vq {
        path: PathBuf,
        source: CheckpointError,
    },
    #[error("the checkpoints do not fit together: {0}")]
    Mismatch(String),
}

/// What the user may say about the checkpoints.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Named GPT size (`GPT-L`), for widths that do not say it.
    pub gpt_model: Option<String>,
    /// Image side in pixels; default from the file name (`…_384.pt`), else 256.
    pub image_size: Option<usize>,
    /// Attention heads, for a GPT width that is not a named size.
    pub n_head: Option<usize>,
    /// Read the `ema` weights of training checkpoints when present.
    pub ema: bool,
}

/// A loaded (tokenizer, generator) pair.
#[derive(Debug)]
pub struct ModelBundle<B: Backend> {
    pub gpt: Transformer<B>,
    pub vq: VqModel<B>,
    pub gpt_file: ModelFile,
    pub vq_file: ModelFile,
    pub class_names: ClassNames,
    pub image_size: usize,
}

impl<B: Backend> ModelBundle<B> {
    /// Loads both checkpoints (config inferred), and checks that they fit: the codebook is the
    /// generator's vocabulary, and the image size divides by the tokenizer's downsampling.
    pub fn load(
        gpt_path: &Path,
        vq_path: &Path,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self, BundleError> {
        let choice = if opts.ema {
            WeightsChoice::PreferEma
        } else {
            WeightsChoice::Model
        };
        let vq_err = |source| BundleError::Vq {
            path: vq_path.to_path_buf(),
            source,
        };
        let gpt_err = |source| BundleError::Gpt {
            path: gpt_path.to_path_buf(),
            source,
        };
        let vq_sd = StateDict::open(vq_path, choice).map_err(vq_err)?;
        let vq_cfg = vq_sd.infer_vq_config().map_err(vq_err)?;
        let downsample = vq_cfg.downsample();
        if let Some(size) = opts.image_size
            && size % downsample != 0
        {
            return Err(BundleError::Mismatch(format!(
                "image size {size} does not divide by the tokenizer's downsampling factor {downsample}"
            )));
        }
        let gpt_sd = StateDict::open(gpt_path, choice).map_err(gpt_err)?;
        let hints = GptHints {
            image_size: opts.image_size,
            downsample: Some(downsample),
            gpt_model: opts.gpt_model.clone(),
            n_head: opts.n_head,
            file_name: None,
        };
        let gpt_cfg = gpt_sd.infer_gpt_config(&hints).map_err(gpt_err)?;
        if vq_cfg.codebook_size != gpt_cfg.vocab_size {
            return Err(BundleError::Mismatch(format!(
                "the tokenizer's codebook has {} entries but the generator's vocabulary has {}",
                vq_cfg.codebook_size, gpt_cfg.vocab_size
            )));
        }
        let vq = VqModel::load(&vq_sd, &vq_cfg, device).map_err(vq_err)?;
        drop(vq_sd);
        let gpt = Transformer::load(&gpt_sd, &gpt_cfg, device).map_err(gpt_err)?;
        let class_names = match gpt_cfg.model_type {
            ModelType::C2i if gpt_cfg.num_classes == 1000 => ClassNames::imagenet(),
            _ => ClassNames::numbered(gpt_cfg.num_classes),
        };
        let image_size = gpt_cfg.grid_size() * downsample;
        Ok(Self {
            gpt,
            vq,
            gpt_file: ModelFile::describe(gpt_path),
            vq_file: ModelFile::describe(vq_path),
            class_names,
            image_size,
        })
    }

    pub fn grid_size(&self) -> usize {
        self.gpt.config.grid_size()
    }

    /// `GPT-L c2i`, or `GPT (dim 64, 2 layers) c2i` for unnamed sizes.
    pub fn description(&self) -> String {
        let c = &self.gpt.config;
        let size = c
            .size_name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("GPT (dim {}, {} layers)", c.dim, c.n_layer));
        format!("{size} {}", c.model_type.as_str())
    }
}
