//! `llamagen convert`: a checkpoint to safetensors with the official names.

use std::path::Path;

use anyhow::{Result, bail};
use llamagen::checkpoint::{StateDict, WeightsChoice};

pub fn convert(input: &Path, output: &Path, ema: bool, force: bool) -> Result<()> {
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
    let sd = StateDict::open(input, choice)?;
    let device = Default::default();
    let w = llamagen::checkpoint::Weights::<llamagen::backend::Cpu>::new(&sd, &device);
    let tensors = sd
        .keys()
        .filter(|k| !llamagen::checkpoint::is_ignored_key(k))
        .map(|k| Ok((k.to_string(), w.data(k)?)))
        .collect::<Result<Vec<_>, llamagen::error::CheckpointError>>()?;
    // A stored configuration (this project's own files) travels with the weights.
    let metadata = (!sd.metadata.is_empty()).then(|| sd.metadata.clone().into_iter().collect());
    llamagen::checkpoint::write_safetensors(output, &tensors, metadata)?;
    eprintln!(
        "wrote {} tensors ({} weights) to {}",
        tensors.len(),
        sd.wrapper,
        output.display()
    );
    Ok(())
}
