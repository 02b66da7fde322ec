//! Checkpoints: official PyTorch `.pt` files (read by burn-store's pickle reader, which never
//! executes pickle code) and `.safetensors`, turned into one name → tensor map with the official
//! key names; checked against a configuration (all problems listed at once); and read into
//! burn modules through [`Weights`].

mod export;
mod infer;
pub mod pickle_guard;
mod weights;

pub use export::{
    StoredFloat, config_metadata, state_dict, state_dict_renamed, write_gpt, write_safetensors,
    write_safetensors_as,
};

pub use infer::{GptHints, Shapes, image_size_from_file_name, infer_gpt_config, infer_vq_config};
pub use weights::Weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleStore, SafetensorsStore, TensorSnapshot};

use crate::config::TensorSpec;
use crate::error::{CheckReport, CheckpointError, ShapeMismatch};

/// The on-disk format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    PyTorch,
    Safetensors,
}

/// Which copy of the weights to take from a training checkpoint that holds several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsChoice {
    /// `model` (what the official sampling scripts read).
    #[default]
    Model,
    /// `ema` when present (what the official VQ scripts prefer), else `model`.
    PreferEma,
}

/// Safetensors metadata key under which this project's writers store the tokenizer's
/// configuration as JSON (what tensor shapes cannot say, e.g. GroupNorm groups).
pub const VQ_CONFIG_KEY: &str = "llamagen.vq_config";
/// Likewise for the generator (attention heads, token grid).
pub const GPT_CONFIG_KEY: &str = "llamagen.gpt_config";

/// Metadata key of a quantized generator file ([`crate::quant`]): `q8` or `q4`.
pub const QUANTIZE_KEY: &str = "llamagen.quantize";
/// Suffixes of a quantized linear weight's two tensors in such a file: the values `[in, out]`
/// (`I8`; for q4 two values a byte, `U8` `[in, out/2]`, the first in the low nibble) and the
/// f32 scales `[in, out/32]`.
pub const QVALUES_SUFFIX: &str = ".qvalues";
pub const QSCALES_SUFFIX: &str = ".qscales";

/// A linear weight held quantized in the file.
pub(crate) struct QuantizedEntry {
    pub values: TensorSnapshot,
    pub scales: TensorSnapshot,
    pub quantize: crate::quant::Quantize,
    /// burn's `[in, out]`.
    pub dims: [usize; 2],
}

/// Wrappers the official scripts store a state dict under, in the order they are looked for.
const WRAPPERS: &[&str] = &["model", "module", "state_dict"];

/// Entries of official checkpoints that are not weights and are skipped on load:
/// the rotary table some GPT checkpoints carry, KV caches and attention masks.
pub fn is_ignored_key(name: &str) -> bool {
    name == "freqs_cis"
        || name.ends_with(".freqs_cis")
        || name.contains("kv_cache.")
        || name == "causal_mask"
}

/// A checkpoint's tensors, keyed by their official names (wrapper prefix removed).
pub struct StateDict {
    pub path: PathBuf,
    pub format: Format,
    /// Where the weights were found: `model`, `ema`, `module`, `state_dict` or `(bare)`.
    pub wrapper: String,
    tensors: BTreeMap<String, TensorSnapshot>,
    /// The safetensors header's `__metadata__` strings (empty for PyTorch files).
    pub metadata: BTreeMap<String, String>,
    /// Linear weights held quantized (files written by `llamagen quantize`), by official name.
    quantized: BTreeMap<String, QuantizedEntry>,
}

impl std::fmt::Debug for StateDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDict")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("wrapper", &self.wrapper)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl StateDict {
    /// Reads a checkpoint; `.safetensors` by extension, everything else as a PyTorch file.
    pub fn open(path: impl AsRef<Path>, choice: WeightsChoice) -> Result<Self, CheckpointError> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CheckpointError::NotFound(path.clone())
            } else {
                CheckpointError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        if meta.is_dir() {
            return Err(CheckpointError::Unreadable {
                path,
                format: "directory",
                reason: "expected a file".into(),
            });
        }
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let (format, raw, metadata) = if is_safetensors {
            let metadata = read_safetensors_metadata(&path)?;
            (Format::Safetensors, read_safetensors(&path)?, metadata)
        } else {
            (Format::PyTorch, read_pytorch(&path)?, BTreeMap::new())
        };
        let mut sd = Self::from_raw(path, format, raw, choice)?;
        sd.metadata = metadata;
        sd.gather_quantized()?;
        Ok(sd)
    }

    fn from_raw(
        path: PathBuf,
        format: Format,
        raw: BTreeMap<String, TensorSnapshot>,
        choice: WeightsChoice,
    ) -> Result<Self, CheckpointError> {
        let has_prefix = |p: &str| raw.keys().any(|k| k.starts_with(&format!("{p}.")));
        let mut order: Vec<&str> = Vec::new();
        if choice == WeightsChoice::PreferEma {
            order.push("ema");
        }
        order.extend_from_slice(WRAPPERS);
        let wrapper = order.into_iter().find(|p| has_prefix(p));
        let tensors: BTreeMap<String, TensorSnapshot> = match wrapper {
            Some(p) => {
                let prefix = format!("{p}.");
                raw.into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_string(), v)))
                    .collect()
            }
            None => raw,
        };
        if tensors.is_empty() {
            return Err(CheckpointError::NoWeights {
                path,
                hint: " (no tensors found)".into(),
            });
        }
        Ok(Self {
            path,
            format,
            wrapper: wrapper.unwrap_or("(bare)").to_string(),
            tensors,
            metadata: BTreeMap::new(),
            quantized: BTreeMap::new(),
        })
    }

    /// Moves the value/scale pairs of a quantized file into [`QuantizedEntry`]s, checking
    /// their types and shapes against each other.
    fn gather_quantized(&mut self) -> Result<(), CheckpointError> {
        use crate::quant::{BLOCK, Quantize};
        use burn::tensor::DType;
        let bad = |reason: String| CheckpointError::Unreadable {
            path: self.path.clone(),
            format: "quantized safetensors",
            reason,
        };
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_suffix(QVALUES_SUFFIX).map(str::to_string))
            .collect();
        let Some(q) = self.metadata.get(QUANTIZE_KEY) else {
            return match names.first() {
                Some(n) => Err(bad(format!(
                    "{n}{QVALUES_SUFFIX} is quantized but the file does not say how ({QUANTIZE_KEY})"
                ))),
                None => Ok(()),
            };
        };
        let quantize = match Quantize::parse(q) {
            Some(Quantize::None) | None => {
                return Err(bad(format!("{QUANTIZE_KEY} is '{q}', expected q8 or q4")));
            }
            Some(q) => q,
        };
        for name in names {
            let values = self.tensors.remove(&format!("{name}{QVALUES_SUFFIX}"));
            let scales = self.tensors.remove(&format!("{name}{QSCALES_SUFFIX}"));
            let (Some(values), Some(scales)) = (values, scales) else {
                return Err(bad(format!("{name}: values without scales")));
            };
            let (vs, ss) = (values.shape.to_vec(), scales.shape.to_vec());
            let [d_in, stored] = vs[..] else {
                return Err(bad(format!(
                    "{name}: values of shape {vs:?}, expected 2 dimensions"
                )));
            };
            let (dtype, d_out) = match quantize {
                Quantize::Q4 => (DType::U8, stored * 2),
                _ => (DType::I8, stored),
            };
            if values.dtype != dtype {
                return Err(bad(format!(
                    "{name}: {quantize} values stored as {:?}, expected {dtype:?}",
                    values.dtype
                )));
            }
            if d_out % BLOCK != 0 || ss != [d_in, d_out / BLOCK] || scales.dtype != DType::F32 {
                return Err(bad(format!(
                    "{name}: scales {:?} {ss:?} do not fit values {vs:?} (expected F32 [{d_in}, {}])",
                    scales.dtype,
                    d_out / BLOCK
                )));
            }
            self.quantized.insert(
                name,
                QuantizedEntry {
                    values,
                    scales,
                    quantize,
                    dims: [d_in, d_out],
                },
            );
        }
        Ok(())
    }

    /// How the file's linear weights are held: `None` for float weights.
    pub fn quantization(&self) -> crate::quant::Quantize {
        self.quantized
            .values()
            .next()
            .map_or(crate::quant::Quantize::None, |e| e.quantize)
    }

    pub(crate) fn quantized(&self, name: &str) -> Option<&QuantizedEntry> {
        self.quantized.get(name)
    }

    /// A checkpoint split over several files (Hugging Face shards: `model-00001-of-00002.safetensors`
    /// …, `pytorch_model-00001-of-00002.bin` …) as one state dict named `path`. Each shard is read
    /// like [`StateDict::open`]; a name present in several shards keeps its first tensor.
    pub fn open_shards(
        path: impl Into<PathBuf>,
        files: &[PathBuf],
        choice: WeightsChoice,
    ) -> Result<Self, CheckpointError> {
        let path = path.into();
        let mut tensors = BTreeMap::new();
        let mut format = Format::Safetensors;
        let mut wrapper = String::from("(bare)");
        let mut metadata = BTreeMap::new();
        let mut quantized = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let part = Self::open(file, choice)?;
            if i == 0 {
                format = part.format;
                wrapper = part.wrapper;
                metadata = part.metadata;
            }
            for (k, v) in part.tensors {
                tensors.entry(k).or_insert(v);
            }
            for (k, v) in part.quantized {
                quantized.entry(k).or_insert(v);
            }
        }
        if tensors.is_empty() {
            return Err(CheckpointError::NoWeights {
                path,
                hint: " (no shard files)".into(),
            });
        }
        Ok(Self {
            path,
            format,
            wrapper,
            tensors,
            metadata,
            quantized,
        })
    }

    /// Number of weights (a quantized weight counts once).
    pub fn len(&self) -> usize {
        self.tensors.len() + self.quantized.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.quantized.contains_key(name)
    }

    /// Names of every weight, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let mut keys: Vec<&str> = self
            .tensors
            .keys()
            .chain(self.quantized.keys())
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys.into_iter()
    }

    /// Name → shape of every weight (what config inference reads; a quantized linear weight
    /// has PyTorch's `[out, in]`, as a float one).
    pub fn shapes(&self) -> Shapes {
        self.keys()
            .filter_map(|k| self.shape(k).map(|s| (k.to_string(), s)))
            .collect()
    }

    /// The GPT configuration: the one this project's writers stored in the file (with the
    /// hints' head count and image size applied), else inferred from the shapes, the hints and
    /// the file name.
    pub fn infer_gpt_config(
        &self,
        hints: &GptHints,
    ) -> Result<crate::config::GptConfig, CheckpointError> {
        if let Some(mut cfg) = self.stored_config::<crate::config::GptConfig>(GPT_CONFIG_KEY)? {
            if let Some(n_head) = hints.n_head {
                cfg.n_head = n_head;
            }
            if let Some(size) = hints.image_size {
                let downsample = hints.downsample.unwrap_or(16);
                if size % downsample != 0 {
                    return Err(CheckpointError::Infer(format!(
                        "image size {size} is not a multiple of the tokenizer's downsampling {downsample}"
                    )));
                }
                cfg.block_size = (size / downsample).pow(2);
            }
            cfg.validate()?;
            return Ok(cfg);
        }
        let mut hints = hints.clone();
        hints.file_name.get_or_insert_with(|| self.path.clone());
        infer_gpt_config(&self.shapes(), &hints)
    }

    /// The tokenizer configuration: the one stored in the file by this project's writers,
    /// else inferred from the shapes (official checkpoints: GroupNorm groups are 32).
    pub fn infer_vq_config(&self) -> Result<crate::config::VqConfig, CheckpointError> {
        if let Some(cfg) = self.stored_config::<crate::config::VqConfig>(VQ_CONFIG_KEY)? {
            cfg.validate()?;
            return Ok(cfg);
        }
        infer_vq_config(&self.shapes())
    }

    /// A configuration stored as JSON under `key` in the file's metadata.
    fn stored_config<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CheckpointError> {
        let Some(json) = self.metadata.get(key) else {
            return Ok(None);
        };
        serde_json::from_str(json).map(Some).map_err(|e| {
            CheckpointError::Infer(format!(
                "{}: the configuration stored under '{key}' does not parse: {e}",
                self.path.display()
            ))
        })
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.quantized.get(name) {
            Some(q) => Some(vec![q.dims[1], q.dims[0]]),
            None => self.tensors.get(name).map(|t| t.shape.to_vec()),
        }
    }

    /// The storage dtype of a tensor, as burn names it.
    pub fn dtype(&self, name: &str) -> Option<burn::tensor::DType> {
        match self.quantized.get(name) {
            Some(q) => q.quantize.scheme().map(burn::tensor::DType::QFloat),
            None => self.tensors.get(name).map(|t| t.dtype),
        }
    }

    pub(crate) fn snapshot(&self, name: &str) -> Option<&TensorSnapshot> {
        self.tensors.get(name)
    }

    /// Compares the checkpoint with the tensors a configuration needs; every problem is listed.
    /// Entries that official checkpoints carry but are not weights (`freqs_cis`, KV caches)
    /// are not counted as unexpected.
    pub fn check(&self, specs: &[TensorSpec]) -> CheckReport {
        let mut report = CheckReport::default();
        let mut expected = std::collections::HashSet::new();
        for spec in specs {
            expected.insert(spec.name.as_str());
            match self.shape(&spec.name) {
                None => report.missing.push(spec.name.clone()),
                Some(found) if found != spec.shape => report.mismatched.push(ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found,
                }),
                Some(_) => {}
            }
        }
        report.unexpected = self
            .keys()
            .filter(|k| !expected.contains(k) && !is_ignored_key(k))
            .map(str::to_string)
            .collect();
        report
    }
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, CheckpointError> {
    let mut store = SafetensorsStore::from_file(path.to_path_buf());
    let all = store
        .get_all_snapshots()
        .map_err(|e| CheckpointError::Unreadable {
            path: path.to_path_buf(),
            format: "safetensors",
            reason: e.to_string(),
        })?;
    Ok(all.clone())
}

/// The `__metadata__` strings of a safetensors header (8-byte little-endian header length,
/// then the JSON header), read without touching the tensor data.
fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    use std::io::Read;
    let bad = |reason: String| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        format: "safetensors",
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| bad(format!("no header: {e}")))?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if len > 100_000_000 || len + 8 > file_len {
        return Err(bad(format!("header length {len} does not fit the file")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a `.pt` file through burn-store, after [`pickle_guard`] has refused what would
/// exhaust the stack or the memory, with burn-store's panics (if any input finds one) turned
/// into errors.
fn read_pytorch(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, CheckpointError> {
    let unreadable = |reason: String| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        format: "PyTorch .pt",
        reason,
    };
    pickle_guard::check_file(path).map_err(|r| unreadable(r.0))?;
    let tensors = crate::error::contain(|| PytorchReader::new(path).map(|r| r.into_tensors()))
        .map_err(|panic| unreadable(format!("the pickle reader failed ({panic})")))?
        .map_err(|e| unreadable(e.to_string()))?;
    // Every tensor's bytes lie in the file: a shape that claims more is a lie that would
    // otherwise become an allocation of that size when the tensor is read.
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    for (name, t) in &tensors {
        let mut bytes = Some(t.dtype.size() as u64);
        for &d in t.shape.iter() {
            bytes = bytes.and_then(|n| n.checked_mul(d as u64));
        }
        if bytes.is_none_or(|b| b > file_len) {
            return Err(unreadable(format!(
                "tensor {name} claims shape {:?} of {:?}, more than the file's {file_len} bytes",
                &t.shape[..],
                t.dtype
            )));
        }
    }
    Ok(tensors.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::export::{RawTensor, write_raw};
    use super::*;
    use safetensors::tensor::Dtype;

    fn file(tensors: Vec<RawTensor>, quantize: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.safetensors");
        let metadata = quantize.map(|q| std::iter::once((QUANTIZE_KEY.into(), q.into())).collect());
        write_raw(&path, &tensors, metadata).unwrap();
        (dir, path)
    }

    fn values(name: &str, dtype: Dtype, shape: Vec<usize>) -> RawTensor {
        let n = shape.iter().product();
        RawTensor {
            name: format!("{name}{QVALUES_SUFFIX}"),
            dtype,
            shape,
            bytes: vec![1; n],
        }
    }

    fn scales(name: &str, shape: Vec<usize>) -> RawTensor {
        let n = shape.iter().product();
        RawTensor::f32(format!("{name}{QSCALES_SUFFIX}"), shape, &vec![0.5; n])
    }

    fn refused(tensors: Vec<RawTensor>, quantize: Option<&str>, says: &str) {
        let (_dir, path) = file(tensors, quantize);
        match StateDict::open(&path, WeightsChoice::Model) {
            Err(e @ CheckpointError::Unreadable { .. }) => {
                assert!(e.to_string().contains(says), "{e}")
            }
            other => panic!("expected a refusal saying '{says}', got {other:?}"),
        }
    }

    #[test]
    fn quantized_entries_read_as_their_float_shape() {
        let w = "output.weight";
        let (_dir, path) = file(
            vec![values(w, Dtype::U8, vec![4, 32]), scales(w, vec![4, 2])],
            Some("q4"),
        );
        let sd = StateDict::open(&path, WeightsChoice::Model).unwrap();
        assert_eq!(sd.shape(w), Some(vec![64, 4]));
        assert_eq!(sd.quantization(), crate::quant::Quantize::Q4);
        assert_eq!(sd.keys().collect::<Vec<_>>(), vec![w]);
    }

    #[test]
    fn malformed_quantized_files_are_refused_with_the_reason() {
        let w = "output.weight";
        refused(
            vec![values(w, Dtype::I8, vec![4, 32]), scales(w, vec![4, 1])],
            None,
            "does not say how",
        );
        refused(
            vec![values(w, Dtype::I8, vec![4, 32]), scales(w, vec![4, 1])],
            Some("q3"),
            "expected q8 or q4",
        );
        refused(
            vec![values(w, Dtype::I8, vec![4, 32])],
            Some("q8"),
            "values without scales",
        );
        refused(
            vec![values(w, Dtype::U8, vec![4, 32]), scales(w, vec![4, 1])],
            Some("q8"),
            "expected I8",
        );
        refused(
            vec![values(w, Dtype::I8, vec![4, 32]), scales(w, vec![4, 2])],
            Some("q8"),
            "do not fit",
        );
        refused(
            vec![values(w, Dtype::I8, vec![4, 30]), scales(w, vec![4, 1])],
            Some("q8"),
            "do not fit",
        );
        refused(
            vec![values(w, Dtype::I8, vec![128]), scales(w, vec![4, 1])],
            Some("q8"),
            "2 dimensions",
        );
    }
}
