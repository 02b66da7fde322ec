//! Training checkpoints: one directory per save, `<out>/step-0001000/`, holding
//! - `model.safetensors` (official names: loads in `llamagen generate` as it is),
//! - `train/*.mpk` (burn records of the model, optimizers and EMA, parameter ids included, so
//!   that optimizer state matches the parameters on resume),
//! - `state.json` (step, configuration, options).
//!
//! A save is written into `<out>/.step-N.partial/`, renamed into place, and only then is the
//! `<out>/latest` pointer replaced (write then rename). A process killed at any moment leaves
//! either the previous checkpoint or the new one as `latest`, never a half-written one.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};

use super::TrainError;

/// Checkpoint directories kept (older ones are deleted after a successful save).
pub const KEEP: usize = 2;

fn step_dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// The directory `latest` points at, if any and complete.
pub fn latest(out: &Path) -> Result<Option<PathBuf>, TrainError> {
    let pointer = out.join("latest");
    let name = match std::fs::read_to_string(&pointer) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(&pointer, e)),
    };
    let dir = out.join(&name);
    if !dir.join("state.json").is_file() {
        return Err(TrainError::Resume {
            path: dir,
            reason: "the directory `latest` names has no state.json".into(),
        });
    }
    Ok(Some(dir))
}

/// Writes a checkpoint for `step`: `fill` writes the files into the (temporary) directory it is
/// given. Returns the final directory.
pub fn save(
    out: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let name = step_dir_name(step);
    let tmp = out.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    fill(&tmp)?;
    let dir = out.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    let pointer = out.join("latest");
    let pointer_tmp = out.join(".latest.partial");
    std::fs::write(&pointer_tmp, format!("{name}\n"))
        .map_err(|e| TrainError::io(&pointer_tmp, e))?;
    std::fs::rename(&pointer_tmp, &pointer).map_err(|e| TrainError::io(&pointer, e))?;
    prune(out, &name)?;
    Ok(dir)
}

/// Deletes all but the newest [`KEEP`] step directories (never `current`).
fn prune(out: &Path, current: &str) -> Result<(), TrainError> {
    let mut dirs: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| TrainError::io(out, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    dirs.sort();
    let n = dirs.len();
    for name in dirs.into_iter().take(n.saturating_sub(KEEP)) {
        if name != current {
            let _ = std::fs::remove_dir_all(out.join(name));
        }
    }
    Ok(())
}

/// Saves a burn record (model, optimizer, EMA) as `<path>.mpk`.
pub fn save_record<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<(), TrainError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e.to_string()))?;
    }
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(record, path.to_path_buf())
        .map_err(|e| TrainError::io(path, recorder_reason(&e)))
}

/// The words of a burn recorder error, without the variant's name around them.
fn recorder_reason(e: &burn::record::RecorderError) -> String {
    use burn::record::RecorderError as E;
    match e {
        E::FileNotFound(s) | E::DeserializeError(s) | E::Unknown(s) => s.clone(),
    }
}

/// Loads a record saved by [`save_record`].
pub fn load_record<B: Backend, R: Record<B>>(
    path: &Path,
    device: &B::Device,
) -> Result<R, TrainError> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| TrainError::Resume {
            path: path.to_path_buf(),
            reason: recorder_reason(&e),
        })
}

/// What a trainer needs to resume: the latest checkpoint of `kind` in `out`, parsed.
pub struct Resumed<C, O> {
    pub dir: PathBuf,
    pub step: u64,
    pub config: C,
    pub options: O,
}

/// Reads `out`'s latest checkpoint, checking it was written by a trainer of `kind`
/// (`"gpt"`, `"vq"`); `None` when the run has no checkpoint yet.
pub fn open_latest<C: serde::de::DeserializeOwned, O: serde::de::DeserializeOwned>(
    out: &Path,
    kind: &str,
) -> Result<Option<Resumed<C, O>>, TrainError> {
    let Some(dir) = latest(out)? else {
        return Ok(None);
    };
    let state = load_state(&dir)?;
    let bad = |reason: String| TrainError::Resume {
        path: dir.clone(),
        reason,
    };
    if state["kind"] != kind {
        return Err(bad(format!("not a `{kind}` training checkpoint")));
    }
    let config = serde_json::from_value(state["config"].clone()).map_err(|e| bad(e.to_string()))?;
    let options =
        serde_json::from_value(state["options"].clone()).map_err(|e| bad(e.to_string()))?;
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| bad("no step".into()))?;
    Ok(Some(Resumed {
        dir,
        step,
        config,
        options,
    }))
}

/// Writes `state.json`.
pub fn save_state(dir: &Path, state: &serde_json::Value) -> Result<(), TrainError> {
    let path = dir.join("state.json");
    let text = serde_json::to_string_pretty(state).expect("JSON values serialise");
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// Reads `state.json`.
pub fn load_state(dir: &Path) -> Result<serde_json::Value, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Resume {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_save_keeps_the_previous_checkpoint() {
        let out = tempfile::tempdir().unwrap();
        assert!(latest(out.path()).unwrap().is_none());
        save(out.path(), 10, |d| {
            save_state(d, &serde_json::json!({"step": 10}))
        })
        .unwrap();
        // A save that fails half-way (as a kill would leave it) does not move `latest`.
        let r = save(out.path(), 20, |d| {
            std::fs::write(d.join("model.safetensors"), b"half").unwrap();
            Err(TrainError::io(d, "killed"))
        });
        assert!(r.is_err());
        let l = latest(out.path()).unwrap().unwrap();
        assert_eq!(load_state(&l).unwrap()["step"], 10);
        // The next save cleans the partial directory and moves on; old ones are pruned.
        for step in [20, 30, 40] {
            save(out.path(), step, |d| {
                save_state(d, &serde_json::json!({"step": step}))
            })
            .unwrap();
        }
        let l = latest(out.path()).unwrap().unwrap();
        assert_eq!(load_state(&l).unwrap()["step"], 40);
        let steps: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-"))
            .collect();
        assert_eq!(steps.len(), KEEP);
    }
}
