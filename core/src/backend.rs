//! Which burn backend runs the models. Code elsewhere is generic over `B: Backend`; this module
//! names the concrete backends the features enable.

/// Pure-CPU backend (burn-flex: SIMD kernels, the `gemm` crate for matrix products).
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::Flex;

/// Cross-vendor GPU backend (Vulkan / Metal / DX12 through wgpu).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// NVIDIA GPUs through CUDA.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Which backend a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Wgpu,
    Cpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Whether a wgpu adapter can be created here. burn's wgpu runtime panics (on its own thread)
/// when there is none, so the probe runs a tiny operation with panics caught and silenced.
#[cfg(feature = "wgpu")]
pub fn wgpu_available() -> bool {
    use burn::prelude::*;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(|| {
        let device = burn::backend::wgpu::WgpuDevice::default();
        let t = Tensor::<Wgpu, 1>::ones([4], &device);
        t.sum().into_scalar() == 4.0
    })
    .unwrap_or(false);
    std::panic::set_hook(hook);
    ok
}

#[cfg(not(feature = "wgpu"))]
pub fn wgpu_available() -> bool {
    false
}
