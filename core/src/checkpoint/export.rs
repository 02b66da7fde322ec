//! Writing modules back out with the official key names, as safetensors: the one table that
//! maps this project's module paths to the official ones, and an atomic file write.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use safetensors::tensor::{Dtype, TensorView};

use crate::config::TensorSpec;
use crate::error::{CheckpointError, ShapeMismatch};

/// Module path fragments of this project → the official `state_dict` names. burn-store's
/// PyTorch adapter already turns Linear weights back to `[out, in]` and GroupNorm's
/// gamma/beta into weight/bias.
const PATH_TABLE: &[(&str, &str)] = &[
    ("cls_embedding.label.", "cls_embedding."),
    ("cls_embedding.caption.", "cls_embedding."),
    (".mid.res_a.", ".mid.0."),
    (".mid.attn.", ".mid.1."),
    (".mid.res_b.", ".mid.2."),
];

fn official_name(path: &str) -> String {
    PATH_TABLE
        .iter()
        .fold(path.to_string(), |p, (ours, theirs)| {
            p.replace(ours, theirs)
        })
}

/// The module's tensors under their official names, checked against `specs` (every spec
/// present with its shape, nothing else).
pub fn state_dict<B: Backend, M: Module<B>>(
    module: &M,
    specs: &[TensorSpec],
) -> Result<Vec<(String, TensorData)>, CheckpointError> {
    state_dict_renamed(module, specs, official_name)
}

/// [`state_dict`] for modules whose official names are not a fixed substitution of their module
/// paths (such as the PatchGAN's `nn.Sequential` indices): `rename` maps each module path (after
/// burn-store's PyTorch adapter) to its official name.
pub fn state_dict_renamed<B: Backend, M: Module<B>>(
    module: &M,
    specs: &[TensorSpec],
    rename: impl Fn(&str) -> String,
) -> Result<Vec<(String, TensorData)>, CheckpointError> {
    let snapshots = module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let mut out = Vec::with_capacity(snapshots.len());
    for snap in snapshots {
        let name = rename(&snap.full_path());
        let data = snap.to_data().map_err(|e| CheckpointError::TensorData {
            name: name.clone(),
            reason: format!("{e:?}"),
        })?;
        out.push((name, data));
    }
    let mut mismatched = Vec::new();
    let mut missing = Vec::new();
    for spec in specs {
        match out.iter().find(|(n, _)| *n == spec.name) {
            None => missing.push(spec.name.clone()),
            Some((_, d)) if d.shape.as_slice() != spec.shape.as_slice() => {
                mismatched.push(ShapeMismatch {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: d.shape.to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    if !mismatched.is_empty() {
        return Err(CheckpointError::ShapeMismatch(mismatched));
    }
    if !missing.is_empty() {
        return Err(CheckpointError::MissingKeys(missing));
    }
    let extra: Vec<String> = out
        .iter()
        .filter(|(n, _)| !specs.iter().any(|s| s.name == *n))
        .map(|(n, _)| n.clone())
        .collect();
    if !extra.is_empty() {
        return Err(CheckpointError::UnexpectedKeys(extra));
    }
    Ok(out)
}

/// Metadata that stores `config` as JSON under `key` (see [`super::VQ_CONFIG_KEY`] and
/// [`super::GPT_CONFIG_KEY`]), so the file loads with exactly the configuration it was
/// trained with.
pub fn config_metadata<T: serde::Serialize>(
    key: &str,
    config: &T,
) -> Option<std::collections::HashMap<String, String>> {
    let json = serde_json::to_string(config).ok()?;
    Some(std::iter::once((key.to_string(), json)).collect())
}

/// How a safetensors file stores its float tensors. Every loader here reads all three back into
/// the precision asked for ([`super::Weights`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StoredFloat {
    /// Four bytes a value: exactly what training holds.
    #[default]
    F32,
    /// IEEE half precision: two bytes a value, 11 significant bits (relative rounding at most
    /// 2^-11), finite up to ±65504.
    F16,
    /// bfloat16: two bytes a value, f32's range, 8 significant bits.
    BF16,
}

impl std::fmt::Display for StoredFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredFloat::F32 => "f32",
            StoredFloat::F16 => "f16",
            StoredFloat::BF16 => "bf16",
        })
    }
}

/// Writes f32 tensors as a safetensors file with optional string metadata; the file appears
/// only once complete (written beside it, then renamed).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    write_safetensors_as(path, tensors, metadata, StoredFloat::F32)
}

/// [`write_safetensors`] with the float tensors stored as `stored`: every value is converted to
/// f32, then rounded to nearest. A finite value that the 16-bit type cannot hold (beyond f16's
/// ±65504) is refused, naming the tensor, rather than stored as infinity. Tensors that are not
/// floats (counters, indices) are written in f32 whatever `stored` says, so they stay exact.
pub fn write_safetensors_as(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<std::collections::HashMap<String, String>>,
    stored: StoredFloat,
) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(name, data)| {
            let values = data
                .clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| err(format!("{name}: {e:?}")))?;
            let stored = if data.dtype.is_float() {
                stored
            } else {
                StoredFloat::F32
            };
            RawTensor::float(name.clone(), data.shape.to_vec(), &values, stored).map_err(err)
        })
        .collect::<Result<_, CheckpointError>>()?;
    write_raw(path, &raw, metadata)
}

/// One tensor as a safetensors file stores it.
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: String, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name,
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// f32 values stored as `stored`; the error names the tensor and the first value the type
    /// cannot hold.
    pub fn float(
        name: String,
        shape: Vec<usize>,
        values: &[f32],
        stored: StoredFloat,
    ) -> Result<Self, String> {
        use burn::tensor::{bf16, f16};
        let narrow = |dtype: Dtype, to_bits: &dyn Fn(f32) -> (f32, [u8; 2])| {
            let mut bytes = Vec::with_capacity(values.len() * 2);
            for &v in values {
                let (back, b) = to_bits(v);
                if v.is_finite() && !back.is_finite() {
                    return Err(format!(
                        "{name}: the value {v} is beyond {stored}'s range; store this file as \
                         bf16 or f32"
                    ));
                }
                bytes.extend_from_slice(&b);
            }
            Ok(Self {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                bytes,
            })
        };
        match stored {
            StoredFloat::F32 => Ok(Self::f32(name, shape, values)),
            StoredFloat::F16 => narrow(Dtype::F16, &|v| {
                let h = f16::from_f32(v);
                (h.to_f32(), h.to_le_bytes())
            }),
            StoredFloat::BF16 => narrow(Dtype::BF16, &|v| {
                let h = bf16::from_f32(v);
                (h.to_f32(), h.to_le_bytes())
            }),
        }
    }
}

/// Writes raw tensors as a safetensors file, atomically (beside it, then renamed).
pub(crate) fn write_raw(
    path: &Path,
    tensors: &[RawTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("safetensors.partial");
    safetensors::tensor::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Writes a generator whose linear layers may be quantized: float tensors as f32 under their
/// official names and orientation; a quantized linear weight as its values and scales exactly
/// as held (see [`super::QVALUES_SUFFIX`]), so it loads again without re-quantizing. The
/// configuration and the quantization go into the metadata.
pub fn write_gpt<B: Backend>(
    model: &crate::gpt::Transformer<B>,
    path: &Path,
) -> Result<(), CheckpointError> {
    use burn::tensor::DType;
    use burn::tensor::quantization::QuantizedBytes;
    let err = |reason: String| CheckpointError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let quantize = model.quantization();
    let mut raw = Vec::new();
    for snap in model.collect(None, None, true) {
        let name = official_name(&snap.full_path());
        let data = snap.to_data().map_err(|e| err(format!("{name}: {e:?}")))?;
        let shape = data.shape.to_vec();
        if let DType::QFloat(scheme) = data.dtype {
            if scheme.store != burn::tensor::quantization::QuantStore::Native {
                return Err(err(format!(
                    "{name}: quantized weights are written from the CPU backend"
                )));
            }
            let num_elements = data.num_elements();
            let (values, params) = QuantizedBytes {
                bytes: data.into_bytes(),
                scheme,
                num_elements,
            }
            .into_vec_i8();
            let [d_in, d_out] = shape[..] else {
                return Err(err(format!(
                    "{name}: a quantized tensor of shape {shape:?}"
                )));
            };
            let bytes: Vec<u8> = match crate::quant::Quantize::of(DType::QFloat(scheme)) {
                crate::quant::Quantize::Q4 => values
                    .chunks(2)
                    .map(|p| (p[0] as u8 & 0x0f) | ((p[1] as u8) << 4))
                    .collect(),
                _ => values.iter().map(|&v| v as u8).collect(),
            };
            let (dtype, stored) = match quantize {
                crate::quant::Quantize::Q4 => (Dtype::U8, d_out / 2),
                _ => (Dtype::I8, d_out),
            };
            raw.push(RawTensor {
                name: format!("{name}{}", super::QVALUES_SUFFIX),
                dtype,
                shape: vec![d_in, stored],
                bytes,
            });
            raw.push(RawTensor::f32(
                format!("{name}{}", super::QSCALES_SUFFIX),
                vec![d_in, d_out / crate::quant::BLOCK],
                &params.scales,
            ));
            continue;
        }
        let mut data = data.convert::<f32>();
        let mut shape = shape;
        // burn holds a linear weight `[in, out]`; the official files `[out, in]`.
        if shape.len() == 2 && crate::quant::is_linear_weight(&name) {
            let [r, c] = [shape[0], shape[1]];
            let v = data.to_vec::<f32>().map_err(|e| err(format!("{e:?}")))?;
            let t: Vec<f32> = (0..c * r).map(|i| v[(i % r) * c + i / r]).collect();
            shape = vec![c, r];
            data = TensorData::new(t, shape.clone());
        }
        let values = data
            .to_vec::<f32>()
            .map_err(|e| err(format!("{name}: {e:?}")))?;
        raw.push(RawTensor::f32(name, shape, &values));
    }
    let mut metadata = config_metadata(super::GPT_CONFIG_KEY, &model.config).unwrap_or_default();
    if quantize != crate::quant::Quantize::None {
        metadata.insert(super::QUANTIZE_KEY.to_string(), quantize.name().to_string());
    }
    write_raw(path, &raw, Some(metadata))
}
