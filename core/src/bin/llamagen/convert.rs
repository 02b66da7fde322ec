//! `llamagen convert`: a checkpoint to safetensors with the official names.

use std::path::Path;

use anyhow::{Result, bail};
use llamagen::checkpoint::{StateDict, StoredFloat, WeightsChoice};

pub fn convert(
    input: &Path,
    output: &Path,
    ema: bool,
    force: bool,
    stored: StoredFloat,
) -> Result<()> {
    if output.exists() {
        if !force || output.canonicalize().ok() == input.canonicalize().ok() {
            bail!(
                "{} exists{}\nhint: {}",
                output.display(),
                if force { " and is the input" } else { "" },
                if force {
                    "write the converted file under another name"
                } else {
                    "choose another output name, or pass --force to replace it"
                }
            );
        }
    }
    let choice = if ema {
        WeightsChoice::PreferEma
    } else {
        WeightsChoice::Model
    };
    let (count, wrapper) = rewrite(input, output, choice, stored)?;
    eprintln!(
        "wrote {count} tensors ({wrapper} weights, stored as {stored}) to {}",
        output.display()
    );
    Ok(())
}

/// Writes the weights of `input` (any checkpoint format read here) to the safetensors file
/// `output` under their official names, float tensors stored as `stored`, its metadata (the
/// configuration of this project's own files) kept. Returns the tensor count and which weights
/// were taken.
pub(crate) fn rewrite(
    input: &Path,
    output: &Path,
    choice: WeightsChoice,
    stored: StoredFloat,
) -> Result<(usize, String)> {
    let sd = StateDict::open(input, choice)?;
    let device = Default::default();
    let w = llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(&sd, &device);
    let tensors = sd
        .keys()
        .filter(|k| !llamagen::checkpoint::is_ignored_key(k))
        .map(|k| Ok((k.to_string(), w.data(k)?)))
        .collect::<Result<Vec<_>, llamagen::error::CheckpointError>>()?;
    let metadata = (!sd.metadata.is_empty()).then(|| sd.metadata.clone().into_iter().collect());
    llamagen::checkpoint::write_safetensors_as(output, &tensors, metadata, stored)?;
    Ok((tensors.len(), sd.wrapper.to_string()))
}
