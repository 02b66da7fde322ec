//! Error types of the library. The binaries add context and hints at their edge.

use std::path::PathBuf;

/// A configuration that cannot describe a model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown GPT size '{0}' (known: GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-XXXL, GPT-1B, GPT-3B, GPT-7B)"
    )]
    UnknownGptSize(String),
    #[error("unknown tokenizer size '{0}' (known: VQ-16, VQ-8)")]
    UnknownVqSize(String),
    #[error("unknown model type '{0}' (known: c2i, t2i)")]
    UnknownModelType(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A shape disagreement between a checkpoint and the model it is loaded into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {:?}, found {:?}",
            self.name, self.expected, self.found
        )
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - SHOWN));
    }
    s
}

/// Everything that can go wrong while reading or applying a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file not found: {0}")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable checkpoint ({format}): {reason}")]
    Unreadable {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path} holds no model weights{hint}")]
    NoWeights { path: PathBuf, hint: String },
    #[error("{} tensor(s) missing from the checkpoint: {}", .0.len(), list(.0))]
    MissingKeys(Vec<String>),
    #[error("{} unexpected tensor(s) in the checkpoint: {}", .0.len(), list(.0))]
    UnexpectedKeys(Vec<String>),
    #[error("{} tensor(s) with the wrong shape: {}", .0.len(), .0.iter().take(8).map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    ShapeMismatch(Vec<ShapeMismatch>),
    #[error("tensor {name} has dtype {dtype}, which cannot be converted to float")]
    Dtype { name: String, dtype: String },
    #[error("cannot read tensor {name}: {reason}")]
    TensorData { name: String, reason: String },
    #[error("cannot infer the model configuration: {0}")]
    Infer(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path} holds {held} weights; they cannot be quantized again as {asked}")]
    Requantize {
        path: PathBuf,
        held: &'static str,
        asked: &'static str,
    },
}

/// The result of checking a state dict against a configuration, all problems at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<ShapeMismatch>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// The most important problem as an error (shape mismatches, then missing, then unexpected).
    pub fn into_result(self) -> Result<(), CheckpointError> {
        if !self.mismatched.is_empty() {
            Err(CheckpointError::ShapeMismatch(self.mismatched))
        } else if !self.missing.is_empty() {
            Err(CheckpointError::MissingKeys(self.missing))
        } else if !self.unexpected.is_empty() {
            Err(CheckpointError::UnexpectedKeys(self.unexpected))
        } else {
            Ok(())
        }
    }
}

/// The words of a caught panic (`catch_unwind`'s payload, or a panic hook's), for binaries
/// that report a panic as an error rather than a crash.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "an unknown error".into())
}

thread_local! {
    static CONTAINED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, a dependency's parser, turning a panic into `Err` with its words. While it runs,
/// [`panic_is_contained`] is true on this thread, so that a binary's panic hook can stay quiet
/// about a panic that becomes an ordinary error.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CONTAINED.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get() - 1));
    result.map_err(|p| panic_message(p.as_ref()))
}

/// Whether a panic now would be caught by [`contain`] (for panic hooks).
pub fn panic_is_contained() -> bool {
    CONTAINED.with(|c| c.get() > 0)
}
