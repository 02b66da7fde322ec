//! `llamagen train-perceptual`: the small perceptual network for train-vq.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llamagen::train::classifier;
use llamagen::train::perceptual::PerceptualNet;

use crate::training::{check_output, fit_shape_net};

#[derive(Args, Debug)]
pub struct TrainPerceptualArgs {
    /// Output file (burn record, .mpk).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the training images (held-out images use another). The default differs from
    /// train-classifier's, so the network that shapes a tokenizer and the classifiers that
    /// score it learn from different drawings.
    #[arg(long, default_value_t = 2000)]
    pub seed: u64,
}

/// Trains on images as drawn (no degradations: the features must notice blur, which is what
/// the perceptual loss is for).
pub fn train_perceptual(args: TrainPerceptualArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let device = Default::default();
    let model = fit_shape_net(
        PerceptualNet::init,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        false,
    );
    let clean = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, false);
    model.save(&args.out)?;
    println!(
        "held-out accuracy {:.2}% (100 images per class, seed {}); wrote {}",
        clean * 100.0,
        args.seed + 7919,
        args.out.display()
    );
    Ok(())
}
