//! The hint under an error: every failure ends with one line saying what to try next. Errors
//! whose message already carries a hint keep it; the rest get one chosen by the library error
//! found in their chain, and failing that the subcommand's `--help`.

use llamagen::error::CheckpointError;
use llamagen::generate::GenerateError;
use llamagen::image_io::ImageError;
use llamagen::text::TextError;

/// The hint for `e`, raised by `command`; `None` when the message already has one.
pub fn hint(e: &anyhow::Error, message: &str, command: &str) -> Option<String> {
    if message.contains("hint:") {
        return None;
    }
    let help = format!("`llamagen {command} --help` explains every option");
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CheckpointError>() {
            return Some(checkpoint(c).to_string());
        }
        if let Some(i) = cause.downcast_ref::<ImageError>() {
            return Some(match i {
                ImageError::NoParameters(_) => {
                    "only PNGs written by `llamagen generate` (or the studio) carry the record \
                     --from replays; `llamagen info PNG` shows whether one does"
                        .into()
                }
                ImageError::Write { .. } => {
                    "check that the folder exists and is writable, and that the disk has room"
                        .into()
                }
                ImageError::Read { .. } => {
                    "check the path; the file must be a PNG or JPEG image".into()
                }
            });
        }
        if let Some(t) = cause.downcast_ref::<TextError>() {
            return Some(match t {
                TextError::Checkpoint(c) => checkpoint(c).to_string(),
                _ => "--t5 takes a FLAN-T5 folder in the Hugging Face layout (config.json, \
                      tokenizer.json or spiece.model, and the weights)"
                    .into(),
            });
        }
        if cause.downcast_ref::<GenerateError>().is_some() {
            return Some(format!(
                "`llamagen inspect` on the checkpoint shows its classes and sizes; {help}"
            ));
        }
        #[cfg(feature = "train")]
        if let Some(t) = cause.downcast_ref::<llamagen::train::TrainError>() {
            use llamagen::train::TrainError;
            return Some(match t {
                TrainError::Checkpoint(c) => checkpoint(c).to_string(),
                TrainError::Resume { .. } => {
                    "--resume goes on from the run folder of an earlier run of the same command \
                     (its --out); leave --resume out to start a new run"
                        .into()
                }
                TrainError::Diverged { .. } => "pass a smaller --lr".into(),
                TrainError::Data { .. } => {
                    "image folders hold one folder per class (`llamagen dataset shapes` writes \
                     one); codes files come from `llamagen extract-codes` with the same tokenizer"
                        .into()
                }
                _ => help.clone(),
            });
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return Some(match io.kind() {
                ErrorKind::NotFound => "check the path".into(),
                ErrorKind::PermissionDenied => {
                    "check the permissions of the file or folder named above".into()
                }
                _ => help,
            });
        }
    }
    Some(help)
}

fn checkpoint(e: &CheckpointError) -> &'static str {
    match e {
        CheckpointError::NotFound(_) | CheckpointError::Io { .. } => {
            "check the path; official checkpoints are .pt files such as c2i_B_256.pt and \
             vq_ds16_c2i.pt"
        }
        CheckpointError::Unreadable { .. } | CheckpointError::TensorData { .. } => {
            "the file may be truncated (an interrupted download) or not a checkpoint: compare \
             its size with the source's, or download it again"
        }
        CheckpointError::Write { .. } => {
            "check that the folder exists and is writable, and that the disk has room"
        }
        _ => {
            "`llamagen inspect FILE` shows what a checkpoint holds and which model it fits; \
             --gpt-model and --image-size say what the file cannot"
        }
    }
}
