//! The float type a model's weights are held in, and what each backend does with it.
//!
//! - GPU backends (wgpu, cuda): weights and activations in the chosen type. What the official
//!   code keeps in f32 stays f32: the norms' statistics, the rotary embedding, the attention
//!   scores and their softmax, and the logits handed to the sampler.
//! - CPU: the weight matrices (linear layers, embedding tables) in the chosen type, widened to
//!   f32 inside the matrix products; activations, norms and every sum in f32. A decode step on
//!   the CPU is bound by the bytes of weights it reads, and half the bytes is the gain.

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The float type of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

/// A precision the backend cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {backend} backend cannot compute in {precision}{hint}")]
pub struct PrecisionError {
    pub precision: &'static str,
    pub backend: &'static str,
    pub hint: &'static str,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes of one weight.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }

    /// The precision of weights held in `dtype`, if it is one of these.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Precision::F32),
            DType::F16 => Some(Precision::F16),
            DType::BF16 => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// An error unless backend `B` can run a model in this precision on `device`. burn's wgpu
    /// backend has f16 (where the adapter has `SHADER_F16`) but no bf16 arithmetic.
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<Self, PrecisionError> {
        let backend = backend_name::<B>();
        let supported = match self {
            Precision::F32 => true,
            _ => B::supports_dtype(device, self.dtype().into()),
        };
        if supported {
            Ok(self)
        } else {
            Err(PrecisionError {
                precision: self.name(),
                backend,
                hint: match (self, backend) {
                    (Precision::Bf16, "wgpu") => " (it has no bf16 arithmetic; try f16)",
                    (Precision::F16, "wgpu") => " (this adapter has no SHADER_F16; try f32)",
                    _ => "",
                },
            })
        }
    }

    /// The fastest precision backend `B` runs on `device`: bf16 on CUDA (the official
    /// sampler's default), f16 on a wgpu adapter with `SHADER_F16` that is real hardware, f16
    /// on a CPU whose vector unit converts half values (x86-64 with F16C), else f32.
    pub fn auto<B: Backend>(device: &B::Device) -> Self {
        let ok = |p: Precision| p.check::<B>(device).is_ok();
        match backend_name::<B>() {
            "cuda" if ok(Precision::Bf16) => Precision::Bf16,
            "wgpu" if ok(Precision::F16) && !software_adapter() => Precision::F16,
            "cpu" if ok(Precision::F16) && cpu_converts_half() => Precision::F16,
            _ => Precision::F32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// "cpu", "wgpu", "cuda" or "this" for backend `B`.
pub fn backend_name<B: Backend>() -> &'static str {
    let name = std::any::type_name::<B>();
    if crate::kernels::is_cpu::<B>() {
        "cpu"
    } else if name.contains("Wgpu") {
        "wgpu"
    } else if name.contains("Cuda") {
        "cuda"
    } else {
        "this"
    }
}

fn software_adapter() -> bool {
    crate::backend::wgpu_adapter().is_some_and(|a| a.software)
}

fn cpu_converts_half() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
