//! Reading checked tensors out of a [`StateDict`] into burn modules. Every name passed here is
//! an official state-dict key, so the model code itself is the key table.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::quantization::{QuantParam, QuantStore};
use burn::tensor::{DType, TensorData};

use super::StateDict;
use crate::error::{CheckpointError, ShapeMismatch};

/// A view of a state dict that hands out tensors on one device, converted to f32.
pub struct Weights<'a, B: Backend> {
    state: &'a StateDict,
    device: &'a B::Device,
    /// Float type of the tensors made (the backend's default when `None`).
    dtype: Option<burn::tensor::FloatDType>,
    /// Float type of the weight matrices alone (linear layers, embedding tables), when it
    /// differs from `dtype`.
    matrix_dtype: Option<burn::tensor::FloatDType>,
    /// Quantization of the linear layers' weights ([`crate::quant`]).
    quantize: crate::quant::Quantize,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(state: &'a StateDict, device: &'a B::Device) -> Self {
        Self {
            state,
            device,
            dtype: None,
            matrix_dtype: None,
            quantize: crate::quant::Quantize::None,
        }
    }

    /// Quantizes every linear layer's weight as it is read (each in turn, so the model never
    /// exists unquantized as a whole).
    pub fn with_quantize(mut self, quantize: crate::quant::Quantize) -> Self {
        self.quantize = quantize;
        self
    }

    /// Makes every tensor in `dtype` (each converted right after it is read, so a model never
    /// exists in f32 as a whole).
    pub fn with_dtype(mut self, dtype: burn::tensor::FloatDType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Makes the weight matrices (linear layers and embedding tables) alone in `dtype`.
    pub fn with_matrix_dtype(mut self, dtype: burn::tensor::FloatDType) -> Self {
        self.matrix_dtype = Some(dtype);
        self
    }

    fn matrix<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, CheckpointError> {
        let t = self.tensor(name, shape)?;
        Ok(match self.matrix_dtype {
            Some(d) => t.cast(d),
            None => t,
        })
    }

    pub fn device(&self) -> &B::Device {
        self.device
    }

    /// Raw f32 data of a tensor.
    pub fn data(&self, name: &str) -> Result<TensorData, CheckpointError> {
        let snap = self
            .state
            .snapshot(name)
            .ok_or_else(|| CheckpointError::MissingKeys(vec![name.to_string()]))?;
        let data = snap.to_data().map_err(|e| CheckpointError::TensorData {
            name: name.to_string(),
            reason: format!("{e:?}"),
        })?;
        match data.dtype {
            DType::F32 => Ok(data),
            DType::F64 | DType::F16 | DType::BF16 | DType::I64 | DType::I32 => {
                Ok(data.convert::<f32>())
            }
            other => Err(CheckpointError::Dtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    /// A float tensor, its shape checked against `shape`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, CheckpointError> {
        let data = self.data(name)?;
        if data.shape.as_slice() != shape.as_slice() {
            return Err(CheckpointError::ShapeMismatch(vec![ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: data.shape.to_vec(),
            }]));
        }
        let t: Tensor<B, D> = Tensor::from_data(data, self.device);
        Ok(match self.dtype {
            Some(d) => t.cast(d),
            None => t,
        })
    }

    /// `nn.Linear(d_in, d_out)` stored `[out, in]` by PyTorch; burn keeps `[in, out]`.
    pub fn linear(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, CheckpointError> {
        let bias = if bias {
            Some(Param::from_tensor(
                self.tensor(&format!("{name}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        if let Some(entry) = self.state.quantized(&format!("{name}.weight")) {
            return Ok(Linear {
                weight: Param::from_tensor(self.quantized(name, entry, [d_in, d_out])?),
                bias,
            });
        }
        // Cast before the transpose: the storage keeps PyTorch's `[out, in]` order.
        let weight = self.matrix(&format!("{name}.weight"), [d_out, d_in])?;
        let weight = crate::quant::quantize_weight(weight.transpose(), self.quantize);
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// A linear weight `[in, out]` read as the file holds it, quantized (no re-quantization).
    fn quantized(
        &self,
        name: &str,
        entry: &super::QuantizedEntry,
        dims: [usize; 2],
    ) -> Result<Tensor<B, 2>, CheckpointError> {
        use crate::quant::Quantize;
        let name = format!("{name}.weight");
        let bad = |reason: String| CheckpointError::TensorData {
            name: name.clone(),
            reason,
        };
        if entry.dims != dims {
            return Err(CheckpointError::ShapeMismatch(vec![ShapeMismatch {
                name: name.clone(),
                expected: vec![dims[1], dims[0]],
                found: vec![entry.dims[1], entry.dims[0]],
            }]));
        }
        let read =
            |snap: &burn_store::TensorSnapshot| snap.to_data().map_err(|e| bad(format!("{e:?}")));
        // The file's bytes: values in order along `out` (q4: two a byte, the first in the low
        // nibble), which is also how a GPU backend packs them into u32 words.
        let packed: Vec<u8> = read(&entry.values)?.as_bytes().to_vec();
        let scales = read(&entry.scales)?
            .to_vec::<f32>()
            .map_err(|e| bad(format!("{e:?}")))?;
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(bad(format!(
                "a scale of {s}: scales must be finite and positive"
            )));
        }
        let scheme = entry.quantize.scheme().expect("a quantized entry");
        let data = if crate::kernels::is_cpu::<B>() {
            // The CPU backend holds one i8 a value and f32 scales.
            let values: Vec<i8> = match entry.quantize {
                Quantize::Q4 => packed
                    .iter()
                    // Two's-complement nibbles.
                    .flat_map(|&b| [((b << 4) as i8) >> 4, (b as i8) >> 4])
                    .collect(),
                _ => packed.iter().map(|&b| b as i8).collect(),
            };
            let scheme = scheme
                .with_store(QuantStore::Native)
                .with_param(QuantParam::F32);
            TensorData::quantized(values, dims.to_vec(), scheme, &scales)
        } else {
            // GPU backends: the packed words, then the scales in the scheme's f16.
            let mut bytes = packed;
            bytes.extend(
                scales
                    .iter()
                    .flat_map(|&s| burn::tensor::f16::from_f32(s).to_le_bytes()),
            );
            TensorData::from_bytes_vec(bytes, dims.to_vec(), DType::QFloat(scheme))
        };
        Ok(Tensor::from_data(data, self.device))
    }

    /// `nn.Conv2d(c_in, c_out, k, stride, padding)` with bias (same layout in burn).
    pub fn conv2d(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d<B>, CheckpointError> {
        let weight = self.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel])?;
        let bias = self.tensor(&format!("{name}.bias"), [c_out])?;
        Ok(Conv2d {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
            stride: [stride, stride],
            kernel_size: [kernel, kernel],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
        })
    }

    /// `nn.GroupNorm(groups, channels, eps, affine=True)`.
    pub fn group_norm(
        &self,
        name: &str,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Result<GroupNorm<B>, CheckpointError> {
        Ok(GroupNorm {
            gamma: Some(Param::from_tensor(
                self.tensor(&format!("{name}.weight"), [channels])?,
            )),
            beta: Some(Param::from_tensor(
                self.tensor(&format!("{name}.bias"), [channels])?,
            )),
            num_groups: groups,
            num_channels: channels,
            epsilon: eps,
            affine: true,
        })
    }

    /// `nn.Embedding(n, d)`.
    pub fn embedding(
        &self,
        name: &str,
        n: usize,
        d: usize,
    ) -> Result<Embedding<B>, CheckpointError> {
        Ok(Embedding {
            weight: Param::from_tensor(self.matrix(&format!("{name}.weight"), [n, d])?),
        })
    }
}
