//! Fused GPU kernels of the decode step (CubeCL): RMSNorm (alone and with the residual add),
//! 2-D RoPE with the KV-cache write, single-query attention over the cache, SwiGLU's gate, and
//! the sampler (CFG, temperature, top-k, top-p, the draw).
//!
//! Each function here takes and returns burn tensors of any backend. On burn's CubeCL backends
//! (wgpu, cuda), with tensors in f32, f16 or bf16, it launches one kernel; elsewhere (the CPU
//! backend, burn's fusion backend) it runs the same arithmetic with burn's own operations, which
//! is also the reference the kernels are tested against ([`mod@reference`]).
//!
//! Half-precision tensors keep what the official model keeps in f32 in f32 here too: the norms'
//! statistics, the rotary embedding's products, the attention scores and their softmax. The
//! rotary table and the attention's key bias are always f32.

#[cfg(feature = "cpu")]
pub mod conv;
#[cfg(feature = "cpu")]
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "cpu")]
mod matmul;

use burn::prelude::*;
use burn::tensor::{Bool, DType};

/// The arithmetic of the kernels with burn's operations: the fallback, and the tests' reference.
pub mod reference {
    use burn::prelude::*;
    use burn::tensor::DType;
    use burn::tensor::activation::silu;

    /// RMSNorm with f32 statistics: `x` and `w` in the same float type, the result in it too.
    pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f32) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_sq = x.clone().powi_scalar(2).mean_dim(1);
        (x / (mean_sq + eps as f64).sqrt()).cast(dtype) * w.unsqueeze()
    }

    pub fn add_rms_norm<B: Backend>(
        x: Tensor<B, 2>,
        y: Tensor<B, 2>,
        w: Tensor<B, 1>,
        eps: f32,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let sum = x + y;
        (sum.clone(), rms_norm(sum, w, eps))
    }

    pub fn swiglu<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
        silu(a) * b
    }

    /// Rotates queries and keys of one position and writes keys and values into the caches.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_cache<B: Backend>(
        qkv: Tensor<B, 2>,
        freqs: Tensor<B, 3>,
        cache_k: &mut Tensor<B, 4>,
        cache_v: &mut Tensor<B, 4>,
        pos: usize,
        dim: usize,
        kv_dim: usize,
        head_dim: usize,
    ) -> Tensor<B, 2> {
        let [rows, _] = qkv.dims();
        let (nh, nkv) = (dim / head_dim, kv_dim / head_dim);
        let f = freqs.narrow(0, pos, 1);
        let q = qkv
            .clone()
            .narrow(1, 0, dim)
            .reshape([rows, 1, nh, head_dim]);
        let k = qkv
            .clone()
            .narrow(1, dim, kv_dim)
            .reshape([rows, 1, nkv, head_dim]);
        let v = qkv
            .narrow(1, dim + kv_dim, kv_dim)
            .reshape([rows, 1, nkv, head_dim]);
        let dtype = q.dtype();
        let rotate =
            |x: Tensor<B, 4>| crate::gpt::rope::apply_rotary_emb(x.cast(DType::F32), f.clone());
        let q = rotate(q).cast(dtype).reshape([rows, dim]);
        let k = rotate(k).cast(dtype).swap_dims(1, 2);
        let v = v.swap_dims(1, 2);
        let at = [0..rows, 0..nkv, pos..pos + 1, 0..head_dim];
        *cache_k = cache_k.clone().slice_assign(at.clone(), k);
        *cache_v = cache_v.clone().slice_assign(at, v);
        q
    }

    /// One query per row over the cached keys `[0, len)`; `bias` `[rows, max_len]`. Computed in
    /// f32, the result in the queries' float type.
    pub fn decode_attention<B: Backend>(
        q: Tensor<B, 2>,
        cache_k: &Tensor<B, 4>,
        cache_v: &Tensor<B, 4>,
        bias: &Tensor<B, 2>,
        len: usize,
        n_head: usize,
        head_dim: usize,
    ) -> Tensor<B, 2> {
        let [rows, dim] = q.dims();
        let nkv = cache_k.dims()[1];
        let rep = n_head / nkv;
        let dtype = q.dtype();
        let expand = |t: &Tensor<B, 4>| {
            let t = t.clone().narrow(2, 0, len).cast(DType::F32);
            t.unsqueeze_dim::<5>(2)
                .expand([rows, nkv, rep, len, head_dim])
                .reshape([rows, n_head, len, head_dim])
        };
        let q = q.cast(DType::F32).reshape([rows, n_head, 1, head_dim]);
        let scores = q.matmul(expand(cache_k).swap_dims(2, 3)) / (head_dim as f64).sqrt()
            + bias.clone().narrow(1, 0, len).reshape([rows, 1, 1, len]);
        let w = burn::tensor::activation::softmax(scores, 3);
        w.matmul(expand(cache_v)).reshape([rows, dim]).cast(dtype)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod dispatch {
    use std::any::{Any, TypeId};

    use burn::prelude::*;
    use burn::tensor::{DType, TensorPrimitive};
    use burn_cubecl::CubeRuntime;
    use burn_cubecl::tensor::CubeTensor;

    /// Moves a value into the type it is known (by `TypeId`) to be.
    fn cast<T: 'static, U: 'static>(t: T) -> U {
        *(Box::new(t) as Box<dyn Any>)
            .downcast::<U>()
            .expect("types checked by TypeId")
    }

    pub fn is<B: Backend, R: CubeRuntime>() -> bool {
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<CubeTensor<R>>()
            && TypeId::of::<B::IntTensorPrimitive>() == TypeId::of::<CubeTensor<R>>()
    }

    pub fn float_in<B: Backend, R: CubeRuntime, const D: usize>(t: Tensor<B, D>) -> CubeTensor<R> {
        cast(t.into_primitive().tensor())
    }

    pub fn float_out<B: Backend, R: CubeRuntime, const D: usize>(t: CubeTensor<R>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(cast(t)))
    }

    pub fn int_in<B: Backend, R: CubeRuntime, const D: usize>(
        t: Tensor<B, D, Int>,
    ) -> CubeTensor<R> {
        cast(t.into_primitive())
    }

    pub fn int_out<B: Backend, R: CubeRuntime, const D: usize>(
        t: CubeTensor<R>,
    ) -> Tensor<B, D, Int> {
        Tensor::from_primitive(cast(t))
    }

    /// Whether `t` is an f32 tensor of runtime `R` (the sampler's and the reads' type).
    pub fn f32_of<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D>) -> bool {
        is::<B, R>() && t.dtype() == DType::F32
    }

    /// Whether `t` is a tensor of runtime `R` in a float type the kernels take (f32, f16,
    /// bf16), and every tensor of `same` has that type too.
    pub fn float_of<B: Backend, R: CubeRuntime, const D: usize>(
        t: &Tensor<B, D>,
        same: &[DType],
    ) -> bool {
        let dtype = t.dtype();
        is::<B, R>()
            && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
            && same.iter().all(|d| *d == dtype)
    }
}

/// Runs `$cube` with `R` bound to the runtime of backend `$B` when `$B` is a CubeCL backend
/// whose tensors pass `$check`; otherwise falls through.
macro_rules! on_cube {
    ($B:ty, $check:expr, |$R:ident| $cube:expr) => {
        #[cfg(feature = "wgpu")]
        {
            type $R = burn::backend::wgpu::WgpuRuntime;
            if dispatch::is::<$B, $R>() && $check {
                return $cube;
            }
        }
        #[cfg(feature = "cuda")]
        {
            type $R = cubecl::cuda::CudaRuntime;
            if dispatch::is::<$B, $R>() && $check {
                return $cube;
            }
        }
    };
}

/// Whether the fused kernels run on backend `B` (a CubeCL backend, f32 tensors).
pub fn fused<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if dispatch::is::<B, burn::backend::wgpu::WgpuRuntime>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if dispatch::is::<B, cubecl::cuda::CudaRuntime>() {
        return true;
    }
    false
}

/// Whether `B` is the CPU backend (burn-flex), which keeps its own KV-cache layout and the
/// host sampler.
pub fn is_cpu<B: Backend>() -> bool {
    std::any::type_name::<B>().contains("Flex")
}

/// `x / sqrt(mean(x²) + eps) · w` per row of `x` `[rows, dim]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f32) -> Tensor<B, 2> {
    on_cube!(B, dispatch::float_of::<B, R, 2>(&x, &[w.dtype()]), |R| {
        dispatch::float_out::<B, R, 2>(cube::rms_norm::<R>(
            dispatch::float_in::<B, R, 2>(x),
            dispatch::float_in::<B, R, 1>(w),
            eps,
        ))
    });
    reference::rms_norm(x, w, eps)
}

/// `(x + y, rms_norm(x + y))`: the residual add and the next norm in one pass.
pub fn add_rms_norm<B: Backend>(
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
    w: Tensor<B, 1>,
    eps: f32,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    on_cube!(
        B,
        dispatch::float_of::<B, R, 2>(&x, &[y.dtype(), w.dtype()]),
        |R| {
            let (s, n) = cube::add_rms_norm::<R>(
                dispatch::float_in::<B, R, 2>(x),
                dispatch::float_in::<B, R, 2>(y),
                dispatch::float_in::<B, R, 1>(w),
                eps,
            );
            (
                dispatch::float_out::<B, R, 2>(s),
                dispatch::float_out::<B, R, 2>(n),
            )
        }
    );
    reference::add_rms_norm(x, y, w, eps)
}

/// `silu(a) · b`, element-wise.
pub fn swiglu<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    on_cube!(B, dispatch::float_of::<B, R, 2>(&a, &[b.dtype()]), |R| {
        dispatch::float_out::<B, R, 2>(cube::swiglu::<R>(
            dispatch::float_in::<B, R, 2>(a),
            dispatch::float_in::<B, R, 2>(b),
        ))
    });
    reference::swiglu(a, b)
}

/// The rotary embedding of position `pos` on `qkv` `[rows, dim + 2·kv_dim]` (one token per
/// row): returns the rotated queries `[rows, dim]` and writes the rotated keys and the values
/// into the caches `[rows, n_kv_head, max_len, head_dim]` at `pos`, in place on the GPU.
#[allow(clippy::too_many_arguments)]
pub fn rope_cache<B: Backend>(
    qkv: Tensor<B, 2>,
    freqs: Tensor<B, 3>,
    cache_k: &mut Tensor<B, 4>,
    cache_v: &mut Tensor<B, 4>,
    pos: usize,
    dim: usize,
    kv_dim: usize,
    head_dim: usize,
) -> Tensor<B, 2> {
    let types = [cache_k.dtype(), cache_v.dtype()];
    on_cube!(
        B,
        freqs.dtype() == DType::F32 && dispatch::float_of::<B, R, 2>(&qkv, &types),
        |R| {
            let k = dispatch::float_in::<B, R, 4>(cache_k.clone());
            let v = dispatch::float_in::<B, R, 4>(cache_v.clone());
            dispatch::float_out::<B, R, 2>(cube::rope_cache::<R>(
                dispatch::float_in::<B, R, 2>(qkv),
                dispatch::float_in::<B, R, 3>(freqs),
                &k,
                &v,
                pos,
                dim,
                kv_dim,
                head_dim,
            ))
        }
    );
    let _ = types;
    reference::rope_cache(qkv, freqs, cache_k, cache_v, pos, dim, kv_dim, head_dim)
}

/// Attention of one query per row `q` `[rows, n_head · head_dim]` over the cached positions
/// `[0, len)`, with `bias` `[rows, max_len]` added to the scores (0, or a large negative
/// number for masked caption columns).
pub fn decode_attention<B: Backend>(
    q: Tensor<B, 2>,
    cache_k: &Tensor<B, 4>,
    cache_v: &Tensor<B, 4>,
    bias: &Tensor<B, 2>,
    len: usize,
    n_head: usize,
    head_dim: usize,
) -> Tensor<B, 2> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let fits = cache_k.dims()[2] <= cube::MAX_KEYS && head_dim <= cube::CUBE;
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let fits = false;
    let types = [cache_k.dtype(), cache_v.dtype()];
    let fits = fits && bias.dtype() == DType::F32;
    on_cube!(B, fits && dispatch::float_of::<B, R, 2>(&q, &types), |R| {
        dispatch::float_out::<B, R, 2>(cube::decode_attention::<R>(
            dispatch::float_in::<B, R, 2>(q),
            &dispatch::float_in::<B, R, 4>(cache_k.clone()),
            &dispatch::float_in::<B, R, 4>(cache_v.clone()),
            &dispatch::float_in::<B, R, 2>(bias.clone()),
            len,
            n_head,
            head_dim,
        ))
    });
    let _ = (fits, types);
    reference::decode_attention(q, cache_k, cache_v, bias, len, n_head, head_dim)
}

/// What the device sampler returns for one step.
#[derive(Debug, Clone)]
pub struct DeviceDraw<B: Backend> {
    /// The chosen tokens `[rows, 1]` (repeated for the unconditional rows): the next input.
    pub ids: Tensor<B, 2, Int>,
    /// Per sample: token (as a float), its probability, the entropy; `[b, 3]`.
    pub info: Tensor<B, 2>,
}

/// Per-sample sampler settings as device tensors: `params` `[b, 5]` (cfg scale, cfg interval,
/// temperature, top-k with 0 = off, top-p) and `seeds` `[b, 2]` (low and high 32 bits).
#[derive(Debug, Clone)]
pub struct DeviceSampler<B: Backend> {
    pub params: Tensor<B, 2>,
    pub seeds: Tensor<B, 2, Int>,
    pub batch: usize,
}

impl<B: Backend> DeviceSampler<B> {
    pub fn new(
        params: &[crate::sampling::SamplerParams],
        vocab: usize,
        device: &B::Device,
    ) -> Self {
        let b = params.len();
        let mut p = Vec::with_capacity(b * 5);
        let mut s = Vec::with_capacity(b * 2);
        for x in params {
            let top_k = if x.top_k >= vocab { 0 } else { x.top_k };
            p.extend([
                x.cfg_scale,
                x.cfg_interval as f32,
                x.temperature,
                top_k as f32,
                x.top_p,
            ]);
            // The seed's bits, carried in the backend's int type.
            s.push(x.seed as u32 as i32);
            s.push((x.seed >> 32) as u32 as i32);
        }
        Self {
            params: Tensor::from_data(burn::tensor::TensorData::new(p, [b, 5]), device),
            seeds: Tensor::from_data(burn::tensor::TensorData::new(s, [b, 2]), device),
            batch: b,
        }
    }

    /// Whether backend `B` can sample on the device.
    pub fn supported() -> bool {
        fused::<B>()
    }

    /// Samples token `step` of every request from `logits` `[rows, vocab]` (conditional rows,
    /// then unconditional ones when `use_cfg`). `None` when the backend has no device sampler.
    pub fn sample(
        &self,
        logits: Tensor<B, 2>,
        step: usize,
        use_cfg: bool,
    ) -> Option<DeviceDraw<B>> {
        let b = self.batch;
        on_cube!(
            B,
            dispatch::f32_of::<B, R, 2>(&logits) && self.seeds.dtype() == burn::tensor::DType::I32,
            |R| {
                let ids_like = dispatch::int_in::<B, R, 2>(self.seeds.clone());
                let (ids, info) = cube::sample::<R>(
                    dispatch::float_in::<B, R, 2>(logits),
                    dispatch::float_in::<B, R, 2>(self.params.clone()),
                    ids_like.clone(),
                    &ids_like,
                    b,
                    step,
                    use_cfg,
                );
                Some(DeviceDraw {
                    ids: dispatch::int_out::<B, R, 2>(ids),
                    info: dispatch::float_out::<B, R, 2>(info),
                })
            }
        );
        let _ = (logits, step, use_cfg, b);
        None
    }
}

/// The additive key bias of decode steps `[rows, max_len]` from a cache's `allowed` mask: 0
/// where the last query row may attend, a large negative number elsewhere (masked caption
/// columns).
pub fn key_bias<B: Backend>(allowed: &Tensor<B, 3, Bool>) -> Tensor<B, 2> {
    let [b, l, _] = allowed.dims();
    let last = allowed.clone().narrow(1, l - 1, 1).reshape([b, l]);
    Tensor::zeros([b, l], &allowed.device()).mask_fill(last.bool_not(), -1.0e30)
}

/// Counts of GPU work from CubeCL's own loggers: kernel launches (the profiling logger at level
/// `minimal`), kernel compilations (the compilation logger) and autotune runs (the autotune
/// logger), each written to its own file in a fresh temporary folder.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod counters {
    use std::path::PathBuf;

    use cubecl::config::{
        CubeClRuntimeConfig, autotune::AutotuneLogLevel, compilation::CompilationLogLevel,
        profiling::ProfilingLogLevel,
    };

    /// The loggers' files.
    #[derive(Debug)]
    pub struct KernelLog {
        dir: PathBuf,
    }

    /// Totals since the loggers were installed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Counts {
        pub launches: u64,
        pub compilations: u64,
        pub autotunes: u64,
    }

    impl Counts {
        pub fn since(self, earlier: Counts) -> Counts {
            Counts {
                launches: self.launches - earlier.launches,
                compilations: self.compilations - earlier.compilations,
                autotunes: self.autotunes - earlier.autotunes,
            }
        }
    }

    impl KernelLog {
        /// Turns the loggers on. It must run before the first use of a GPU in the process;
        /// `None` when CubeCL's configuration is already fixed (read from a `cubecl.toml`, or
        /// in use).
        pub fn install() -> Option<Self> {
            use cubecl::config::RuntimeConfig;
            let dir =
                std::env::temp_dir().join(format!("llamagen-kernel-log-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            let mut config = CubeClRuntimeConfig::default();
            config.profiling.logger.level = ProfilingLogLevel::Minimal;
            config.profiling.logger.file = Some(dir.join("launches.log"));
            config.compilation.logger.level = CompilationLogLevel::Basic;
            config.compilation.logger.file = Some(dir.join("compilations.log"));
            config.autotune.logger.level = AutotuneLogLevel::Minimal;
            config.autotune.logger.file = Some(dir.join("autotune.log"));
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let set = std::panic::catch_unwind(|| CubeClRuntimeConfig::set(config)).is_ok();
            std::panic::set_hook(hook);
            set.then_some(Self { dir })
        }

        fn count(&self, file: &str, marker: &str) -> u64 {
            std::fs::read_to_string(self.dir.join(file))
                .map(|t| t.matches(marker).count() as u64)
                .unwrap_or(0)
        }

        /// The totals so far. The loggers write from a background task, which a busy machine
        /// may not schedule for a while: this waits until five readings 100 ms apart agree
        /// (at most 20 s).
        pub fn counts(&self) -> Counts {
            let read = || Counts {
                launches: self.count("launches.log", "Executing "),
                compilations: self.count("compilations.log", "[Compiling kernel]"),
                autotunes: self.count("autotune.log", "Fastest result"),
            };
            let mut last = read();
            let mut same = 0;
            for _ in 0..200 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let now = read();
                if now == last {
                    same += 1;
                    if same == 4 {
                        break;
                    }
                } else {
                    same = 0;
                    last = now;
                }
            }
            last
        }
    }

    impl Drop for KernelLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A device-to-host read already requested: on CubeCL backends the copy is queued when the read
/// is started, so work queued after it overlaps with the wait; elsewhere the data is read at
/// once.
pub struct PendingRead {
    #[allow(clippy::type_complexity)]
    inner: Result<
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<burn::tensor::TensorData>> + Send>,
        >,
        burn::tensor::TensorData,
    >,
}

impl PendingRead {
    /// Starts reading `t` (f32).
    pub fn start<B: Backend>(t: Tensor<B, 2>) -> Self {
        on_cube!(B, dispatch::f32_of::<B, R, 2>(&t), |R| {
            let t = burn_cubecl::kernel::into_contiguous_aligned(dispatch::float_in::<B, R, 2>(t));
            let shape = t.meta.shape().clone();
            let descriptor = cubecl::server::CopyDescriptor::new(
                t.handle.clone().binding(),
                shape.clone(),
                t.meta.strides().clone(),
                t.elem_size(),
            );
            let dtype = t.dtype;
            let client = t.client.clone();
            let mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                Box::pin(async move {
                    let bytes = client.read_one_tensor_async(descriptor).await.ok()?;
                    Some(burn::tensor::TensorData::from_bytes(bytes, shape, dtype))
                });
            // The first poll makes the request (the copy is queued now); the wait comes later.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            PendingRead {
                inner: match fut.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(data) => Err(data.expect("device read")),
                    std::task::Poll::Pending => Ok(fut),
                },
            }
        });
        PendingRead {
            inner: Err(t.into_data()),
        }
    }

    /// Waits for the data.
    pub fn wait(self) -> Vec<f32> {
        let data = match self.inner {
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Ok(fut) => cubecl::future::block_on(fut).expect("device read"),
            #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
            Ok(_) => unreachable!("no device reads without a GPU backend"),
            Err(data) => data,
        };
        data.convert::<f32>().to_vec().expect("f32 values")
    }
}
