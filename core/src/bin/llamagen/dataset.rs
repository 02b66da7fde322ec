//! `llamagen dataset shapes`: the procedural shapes data set.

use std::path::Path;

use anyhow::{Result, bail};

use crate::common::progress;

pub fn dataset_shapes(out: &Path, per_class: u64, seed: u64, size: u32) -> Result<()> {
    if size < 16 {
        bail!("--size must be at least 16 pixels");
    }
    let n = per_class * llamagen::dataset::SHAPE_CLASSES.len() as u64;
    let bar = progress(n, "images");
    llamagen::dataset::write_image_folder(out, per_class, seed, size, || bar.inc(1))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {n} images ({} classes × {per_class}, {size}×{size}, seed {seed}) to {}",
        llamagen::dataset::SHAPE_CLASSES.len(),
        out.display()
    );
    Ok(())
}
