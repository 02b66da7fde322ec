//! `llamagen train-classifier`: the shapes classifier that eval-classes scores with.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llamagen::train::classifier;
use llamagen::train::classifier::ShapeClassifier;

use crate::training::{check_output, fit_shape_net};

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Output file (burn record, .mpk).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the training images (held-out images use another).
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
    /// Train on degraded copies (blur, coarser resampling, contrast and colour shifts, noise),
    /// so that the classifier judges the shape and looks past a tokenizer's softer edges.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,
}

pub fn train_classifier(args: TrainClassifierArgs) -> Result<()> {
    check_output(&args.out, false)?;
    let device = Default::default();
    let model = fit_shape_net(
        ShapeClassifier::init,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.augment,
    );
    let clean = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, false);
    let degraded = classifier::held_out_accuracy(&model, &device, args.seed + 7919, 100, true);
    model.save(&args.out)?;
    println!(
        "held-out accuracy {:.2}% as drawn, {:.2}% degraded (100 images per class, seed {}); wrote {}",
        clean * 100.0,
        degraded * 100.0,
        args.seed + 7919,
        args.out.display()
    );
    Ok(())
}
