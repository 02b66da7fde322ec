//! LlamaGen in Rust: a VQ image tokenizer and Llama-architecture generators that predict image
//! tokens one by one, conditioned on a class or a caption; official checkpoints load unchanged.

pub mod backend;
pub mod bench;
pub mod bundle;
pub mod checkpoint;
pub mod classes;
pub mod config;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod generate;
pub mod gpt;
pub mod image_io;
pub mod kernels;
pub mod precision;
pub mod quant;
pub mod sampling;
pub mod text;
#[cfg(feature = "train")]
pub mod train;
pub mod vq;

pub use config::{GptConfig, ModelType, VqConfig};
pub use error::{CheckpointError, ConfigError};
pub use precision::Precision;
pub use quant::Quantize;
