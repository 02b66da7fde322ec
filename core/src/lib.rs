//! LlamaGen in Rust: a VQ image tokenizer and Llama-architecture generators that predict image
//! tokens one by one, conditioned on a class or a caption; official checkpoints load unchanged.
//!
//! The library in ten lines: load a (generator, tokenizer) pair (here the bundled demo model;
//! pass paths for the official checkpoints), generate a batch of token grids, decode them into
//! pixels, save a PNG.
//!
//! ```ignore
//! use llamagen::{backend::Cpu, bundle::{LoadOptions, ModelBundle}, generate::{self, Generator, Request}};
//! let device = Default::default();
//! let bundle = ModelBundle::<Cpu>::open(None, None, &LoadOptions::default(), &device)?;
//! let star = bundle.class_names.resolve("star")?;
//! let params = llamagen::sampling::SamplerParams { seed: 7, ..bundle.sampler };
//! let out = Generator::new(&bundle.gpt).generate(&[Request::class(star, params)], &mut (), None)?;
//! let pixels = generate::decode_tokens(&bundle.vq, &out.tokens, bundle.grid_size());
//! let image = &llamagen::image_io::tensor_to_images(pixels)[0];
//! image.save(std::env::temp_dir().join("llamagen-doc-star.png"))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Where things are: [`bundle`] opens checkpoints and model cards, [`generate`] runs the
//! decoding loop (sequential, SJD, ZipAR), [`sampling`] holds CFG, temperature, top-k and top-p,
//! [`gpt`] and [`vq`] are the two models, [`text`] the FLAN-T5 prompt encoder, [`eval`] the
//! sample export for FID, and `train` (feature `train`) the trainers. `docs/architecture.md`
//! walks the data path from a class or prompt to pixels.

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
