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

use burn::tensor::backend::DeviceOps;

use crate::error::{CheckpointError, ConfigError};

/// The devices of `n` data-parallel replicas of a trainer on `home`, where the backend has
/// `count` devices of `home`'s kind: replica i on the i-th of them counting on from `home` (so
/// with as many replicas as devices each has its own), or all on `home` when `count` ≤ 1
/// (replicas then run as threads side by side on it, which on a CPU spreads them over its
/// cores).
pub fn replica_devices<D: DeviceOps>(home: &D, n: usize, count: usize) -> Vec<D> {
    if count <= 1 {
        return vec![home.clone(); n];
    }
    let id = home.id();
    (0..n)
        .map(|i| {
            let index = (id.index_id as usize + i) % count;
            D::from_id(burn::tensor::backend::DeviceId {
                type_id: id.type_id,
                index_id: index as u16,
            })
        })
        .collect()
}

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
    /// The generator to start from does not fit the one being trained.
    #[error("cannot start from that generator: {0}")]
    StartFrom(String),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.into(),
            reason: e.to_string(),
        }
    }
}
