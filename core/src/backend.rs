//! Which burn backend runs the models. Code elsewhere is generic over `B: Backend`; this module
//! names the concrete backends the features enable.

/// Pure-CPU backend (burn-ndarray, SIMD).
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::NdArray<f32>;

/// Cross-vendor GPU backend (Vulkan / Metal / DX12 through wgpu).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// NVIDIA GPUs through CUDA.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
