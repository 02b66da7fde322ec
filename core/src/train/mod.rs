//! Training (Cargo feature `train`): the tokenizer (reconstruction + perceptual + VQ losses +
//! PatchGAN), code extraction with the paper's ten-crop augmentation, the generator on extracted
//! codes, the small classifier that measures the demo model, and the perceptual network that
//! stands in for LPIPS's VGG16 where its weights are missing.
//!
//! Every trainer is a plain struct with a `step` method, so the CLI, tests and other front ends
//! drive the same code; checkpoints are directories written atomically (see [`checkpoint`]).

pub mod checkpoint;
pub mod classifier;
#[cfg(feature = "cpu")]
pub mod cpu_conv;
pub mod data;
pub mod discriminator;
pub mod gpt;
pub mod lpips;
pub mod optim;
pub mod perceptual;
pub mod vq;

use std::path::PathBuf;

use crate::error::{CheckpointError, ConfigError};

/// The autodiff wrapper the trainers run on.
pub type Autodiff<B> = burn::backend::Autodiff<B>;

/// Errors of the training pipeline.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("data set {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: PathBuf, reason: String },
    #[error("the loss became {value} at step {step}: lower the learning rate")]
    Diverged { step: u64, value: f32 },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.into(),
            reason: e.to_string(),
        }
    }
}
