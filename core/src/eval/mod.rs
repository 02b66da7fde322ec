//! Evaluation: sample runs for FID written as the official evaluator reads them, and (with the
//! `train` feature, which holds the shape classifier) the class accuracy of the shape models.

#[cfg(feature = "train")]
pub mod classes;
pub mod npz;
pub mod samples;
