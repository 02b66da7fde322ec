//! Evaluation: sample runs for FID written as the official evaluator reads them.

pub mod npz;
pub mod samples;
