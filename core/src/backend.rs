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

/// The adapter burn's default wgpu device runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuAdapter {
    /// The adapter's name, as the driver gives it.
    pub name: String,
    /// The graphics API (Vulkan, Metal, Dx12, …).
    pub api: String,
    /// A software rasteriser (Mesa's lavapipe, WARP, SwiftShader): it runs the models many
    /// times slower than the CPU backend does.
    pub software: bool,
}

/// Creates burn's default wgpu device once per process and returns its setup (instance,
/// adapter, device, queue), or `None` when no adapter can be created. Later calls return the
/// same setup; burn's `WgpuDevice::default()` then runs on it, so a caller can look at the
/// adapter before choosing a backend, and a window can draw with the same device.
///
/// burn's wgpu runtime panics when there is no adapter, so the setup runs with panics caught
/// and silenced.
#[cfg(feature = "wgpu")]
pub fn default_wgpu_setup() -> Option<&'static burn::backend::wgpu::WgpuSetup> {
    use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, graphics::AutoGraphicsApi, init_setup};
    static SETUP: std::sync::OnceLock<Option<burn::backend::wgpu::WgpuSetup>> =
        std::sync::OnceLock::new();
    SETUP
        .get_or_init(|| {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let setup = std::panic::catch_unwind(|| {
                init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, RuntimeOptions::default())
            })
            .ok();
            std::panic::set_hook(hook);
            setup
        })
        .as_ref()
}

/// The adapter of burn's default wgpu device (created by [`default_wgpu_setup`]), or `None`
/// when there is none.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter() -> Option<WgpuAdapter> {
    let info = default_wgpu_setup()?.adapter.get_info();
    Some(WgpuAdapter {
        name: info.name,
        api: format!("{:?}", info.backend),
        software: info.device_type == wgpu::DeviceType::Cpu,
    })
}

#[cfg(not(feature = "wgpu"))]
pub fn wgpu_adapter() -> Option<WgpuAdapter> {
    None
}

/// Lets the GPU probe run quietly on machines without a desktop session.
///
/// Keeps the memory a process frees for its own later allocations (glibc only; elsewhere nothing
/// changes). By default glibc maps every block of 32 MB and more afresh and returns it to the
/// system when freed, and trims the heap's free top: the image tokenizer's CPU layers allocate
/// and free outputs of that size layer after layer, and each one then comes back as new zeroed
/// pages, a page fault every 4 KB (about 6–9 % of a VQ-16 decode on the CPU, measured with
/// `bench --vq-only`). With this, large blocks come from the heap too and freed memory stays
/// there to be reused: the process's resident memory stays at its high-water mark instead of
/// falling back between steps.
///
/// # Safety
/// Call it at the start of `main`, before any thread is started or anything is allocated in
/// earnest.
pub unsafe fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; the caller runs it before other
    // threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Mesa's Vulkan layers (and winit, in the studio) ask libwayland for a display while a wgpu
/// instance starts, and libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment.` to stderr when that variable is missing, as on a server, in a container or over
/// ssh: a successful `generate` then looks as if it failed. When the variable is unset or not an
/// absolute path to a directory, this points it at a private empty directory
/// (`$TMPDIR/llamagen-runtime-UID`, mode 0700). No Wayland socket is there, so the lookup fails
/// without a word and the probe goes on as before (X11, or no display at all). A desktop
/// session's own value is left alone.
///
/// # Safety
/// It changes the process environment: call it at the start of `main`, before any thread is
/// started (see [`std::env::set_var`]).
pub unsafe fn quiet_display_probe() {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let current = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from);
        if current.is_some_and(|dir| dir.is_absolute() && dir.is_dir()) {
            return;
        }
        let Ok(me) = std::fs::metadata("/proc/self") else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("llamagen-runtime-{}", me.uid()));
        // Made now, or made by an earlier run of the same user (never another user's).
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let ours = std::fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == me.uid());
        if ours {
            // SAFETY: the caller guarantees no other thread runs yet.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}
