//! The LlamaGen image tokenizer (official `tokenizer/tokenizer_image/vq_model.py`): a
//! convolutional encoder, an l2-normalised vector quantizer and a convolutional decoder.

pub(crate) mod blocks;
mod decoder;
mod encoder;
mod model;
mod quantizer;

pub use blocks::{AttnBlock, Downsample, ResnetBlock, Upsample};
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use model::{VqModel, VqTrainOutput};
pub use quantizer::{QuantizerLosses, VectorQuantizer, compute_entropy_loss};

/// GroupNorm settings of the official `Normalize`.
pub const NORM_GROUPS: usize = 32;
pub const NORM_EPS: f64 = 1e-6;
