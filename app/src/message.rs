//! What the studio's threads say to each other: the UI's [`Command`]s to the worker, the
//! worker's [`Event`]s back, and the plain data they carry. Every other module of the studio
//! may import this one; it imports none of them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use image::RgbImage;
use llamagen::config::ModelType;
use llamagen::generate::Request;
use llamagen::image_io::ModelFile;
use llamagen::sampling::{SamplerParams, TokenSampling};

/// Which model to open.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// The bundled class-conditional demo model.
    Demo,
    /// The bundled text-conditional demo model (with its own small text encoder).
    TextDemo,
    /// A generator and a tokenizer checkpoint (official `.pt` or `.safetensors`, or a project
    /// model with its card beside it).
    Files {
        gpt: PathBuf,
        vq: PathBuf,
        /// Image side in pixels, for checkpoints whose grid size cannot be inferred.
        image_size: Option<usize>,
    },
}

/// What the UI knows about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: ModelSpec,
    pub description: String,
    pub params: usize,
    pub model_type: ModelType,
    pub image_size: usize,
    pub grid_size: usize,
    pub vocab_size: usize,
    pub n_head: usize,
    pub class_names: Vec<String>,
    pub sampler: SamplerParams,
    pub gpt_file: ModelFile,
    pub vq_file: ModelFile,
    pub compute: String,
    /// The generator's weights' float type.
    pub precision: llamagen::Precision,
    /// How the generator's linear layers are held.
    pub quantize: llamagen::Quantize,
    /// Bytes of the generator's weights as held.
    pub weight_bytes: usize,
    /// Pixels per token side (the tokenizer's downsampling factor).
    pub patch: usize,
    /// The text encoder the model's card names (the bundled text demo has one).
    pub t5_dir: Option<PathBuf>,
}

/// A batch to generate.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub requests: Vec<Request>,
    /// Requests generated together; more go batch after batch (0 = all at once).
    pub batch_size: usize,
    /// A true VQ decode of the partial grids at most every this many tokens (0 = only at the
    /// end); the preview's time budget may space them further.
    pub decode_every: usize,
    pub cancel: Arc<AtomicBool>,
    /// The prompt of each request of a text-conditional model (encoded by the worker's T5,
    /// once per distinct prompt); `None` for class requests.
    pub prompts: Vec<Option<String>>,
    /// How forward passes become tokens.
    pub decoding: llamagen::generate::Decoding,
}

pub enum Command {
    /// Opens a model with its weights in a precision.
    Load(ModelSpec, llamagen::Precision),
    /// Loads a FLAN-T5 folder for the loaded text-conditional model.
    LoadText(PathBuf),
    /// Frees the T5 encoder.
    ReleaseText,
    Generate(Job),
}

/// Code → patch images, each codebook entry decoded alone.
#[derive(Debug, Clone)]
pub struct Patches {
    pub patch: usize,
    pub codes: Vec<u32>,
    /// `codes.len()` RGB patches of `patch × patch` pixels, one after the other.
    pub rgb: Vec<u8>,
}

#[derive(Debug)]
pub enum Event {
    Loading(String),
    Loaded(Box<ModelInfo>),
    LoadFailed(String),
    TextLoaded {
        dir: PathBuf,
        params: usize,
        /// The weights' float type and their size in bytes.
        precision: String,
        bytes: usize,
    },
    TextFailed(String),
    TextReleased,
    /// Atlas entries for the live preview.
    Patches(Patches),
    /// The mean colour of every code (measured for a sample, predicted for the rest): what
    /// the mosaic draws until a code's patch arrives.
    Colours(Colours),
    /// Tokens the generator made, for every sample of the batch that starts at request
    /// `first` of the job.
    Token {
        job: u64,
        first: usize,
        index: usize,
        total: usize,
        new: Vec<u32>,
        probs: Vec<f32>,
        entropy: Vec<f32>,
        /// Forward passes of this batch so far (fewer than tokens with SJD or ZipAR).
        passes: usize,
    },
    /// A true VQ decode of the complete rows generated so far of images `first..`: each image
    /// is `tokens_done / grid` rows of patches tall.
    Partial {
        job: u64,
        /// The job's request of the first image.
        first: usize,
        tokens_done: usize,
        images: Vec<RgbImage>,
    },
    Finished {
        job: u64,
        tokens: Vec<Vec<u32>>,
        images: Vec<RgbImage>,
        cancelled: bool,
        seconds: f64,
        /// Where the tokens were drawn (kept in the images' records).
        sampling: TokenSampling,
    },
    Failed {
        job: u64,
        error: String,
    },
}

/// Mean colours of every code of the codebook.
#[derive(Debug, Clone)]
pub struct Colours {
    /// `[r, g, b]` per code.
    pub rgb: Vec<[u8; 3]>,
    /// Codes whose colour is measured (decoded); the others are predicted from their vector.
    pub measured: Vec<u32>,
}
