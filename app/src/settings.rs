//! What the studio remembers between runs (eframe storage).

use std::path::PathBuf;

use llamagen::sampling::SamplerParams;
use serde::{Deserialize, Serialize};

use crate::explore::XyGrid;

/// A model opened from files, for the "recent" list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentModel {
    pub gpt: PathBuf,
    pub vq: PathBuf,
    pub image_size: Option<usize>,
}

/// What a result's overlay shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Overlay {
    #[default]
    None,
    /// Probability of each chosen token (dark = unlikely).
    Probability,
    /// Entropy of the distribution each token was drawn from (bright = uncertain).
    Entropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub sampler: SamplerParams,
    /// Keep the seed between runs; otherwise every run draws a new one.
    pub seed_locked: bool,
    /// Images per selected class.
    pub num_images: usize,
    /// Images generated together: a run of more goes batch after batch (memory grows with
    /// the batch, the attention cache above all).
    pub batch_size: usize,
    /// A true VQ decode of the partial image every this many tokens (0 = only at the end).
    pub decode_every: usize,
    pub classes: Vec<usize>,
    pub class_search: String,
    /// Prompts, one a line (text-conditional models).
    pub prompt: String,
    /// The FLAN-T5 folder of text-conditional models.
    pub t5_dir: String,
    pub recent: Vec<RecentModel>,
    /// The model to open at start (none = the bundled demo).
    pub last_model: Option<RecentModel>,
    pub xy: XyGrid,
    pub overlay: Overlay,
    /// Write every finished image to `save_dir` (a PNG with its parameters, as `llamagen
    /// generate --out-dir`), so that closing the studio loses nothing.
    pub save_images: bool,
    pub save_dir: PathBuf,
    /// The generator's weights' float type (half the memory in f16 or bf16).
    pub precision: llamagen::Precision,
    /// How forward passes become tokens (sequential, SJD or ZipAR).
    pub decoding: llamagen::generate::Decoding,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sampler: SamplerParams::default(),
            seed_locked: false,
            num_images: 4,
            batch_size: 16,
            decode_every: 16,
            classes: Vec::new(),
            class_search: String::new(),
            prompt: String::new(),
            t5_dir: String::new(),
            recent: Vec::new(),
            last_model: None,
            xy: XyGrid::default(),
            overlay: Overlay::None,
            save_images: true,
            save_dir: default_save_dir(),
            precision: llamagen::Precision::F32,
            decoding: llamagen::generate::Decoding::Sequential,
        }
    }
}

/// Where finished images go unless the person picks another folder: `llamagen` in the
/// pictures folder (in the home folder where there is none).
pub fn default_save_dir() -> PathBuf {
    dirs::picture_dir()
        .or_else(dirs::home_dir)
        .map_or_else(|| PathBuf::from("llamagen-images"), |d| d.join("llamagen"))
}

impl Settings {
    pub const KEY: &'static str = "llamagen-studio.settings";

    /// Puts a model at the front of the recent list (at most 8 kept).
    pub fn remember(&mut self, model: RecentModel) {
        self.recent.retain(|m| m != &model);
        self.recent.insert(0, model.clone());
        self.recent.truncate(8);
        self.last_model = Some(model);
    }
}
