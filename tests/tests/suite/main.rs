//! The cross-crate test suite, one binary so burn's generic code is compiled once:
//! parity with the official code, checkpoint handling, generator behaviour.

mod checkpoints;
mod decoding;
mod fuzz_replay;
mod generator;
mod half_precision;
mod hostile_checkpoints;
mod kernels;
mod parity_generate;
mod parity_gpt;
mod parity_patchgan;
mod parity_t5;
mod parity_vq;
mod text_encoder;
mod tokenizer;
mod training;
