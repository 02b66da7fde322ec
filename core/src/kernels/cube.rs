//! The CubeCL kernels of the decode step and their launchers on `CubeTensor`s.
//!
//! Every kernel reduces within one cube through shared memory only (no plane/subgroup
//! operations), so it runs on software adapters such as Mesa's lavapipe too. Positions and
//! lengths are runtime arguments: a kernel is compiled once per model shape and never again
//! during a run.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

/// Threads of a cube in the row kernels (norms, attention, sampler). Shared-memory reductions
/// are written for exactly this many.
pub const CUBE: usize = 256;

/// Longest key sequence the attention kernel holds in shared memory (f32 scores: 16 KiB, the
/// guaranteed minimum of a wgpu workgroup's storage, less the reduction scratch).
pub const MAX_KEYS: usize = 3072;

/// A large negative stand-in for −∞ (WGSL has no infinite literal).
const NEG_BIG: f32 = -1.0e30;

/// Sum of `v` over the cube; every unit gets the total. `scratch` has `CUBE` slots.
#[cube]
fn cube_sum<N: Numeric>(v: N, scratch: &mut SharedMemory<N>) -> N {
    let unit = UNIT_POS as usize;
    scratch[unit] = v;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            scratch[unit] = scratch[unit] + scratch[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = scratch[0];
    sync_cube();
    total
}

/// Maximum of `v` over the cube; every unit gets it.
#[cube]
fn cube_max<F: Float>(v: F, scratch: &mut SharedMemory<F>) -> F {
    let unit = UNIT_POS as usize;
    scratch[unit] = v;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            scratch[unit] = max(scratch[unit], scratch[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = scratch[0];
    sync_cube();
    total
}

/// RMSNorm of one row per cube: `x / sqrt(mean(x²) + eps) · w`. The statistics are taken in
/// f32 whatever `F` is, as the official RMSNorm does (`x.float()`).
#[cube(launch)]
fn rms_norm_kernel<F: Float>(x: &Tensor<F>, w: &Tensor<F>, out: &mut Tensor<F>, eps: f32) {
    let dim = w.len();
    let base = CUBE_POS_X as usize * dim;
    let mut scratch = SharedMemory::<f32>::new(CUBE);
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < dim {
        let v = f32::cast_from(x[base + i]);
        acc += v * v;
        i += CUBE;
    }
    let total = cube_sum::<f32>(acc, &mut scratch);
    let denom = (total / f32::cast_from(dim as u32) + eps).sqrt();
    let mut i = UNIT_POS as usize;
    while i < dim {
        out[base + i] = F::cast_from(f32::cast_from(x[base + i]) / denom) * w[i];
        i += CUBE;
    }
}

/// The residual add and the next RMSNorm in one pass: `sum = x + y` (in `F`, as the model adds
/// its residuals), `out = rms_norm(sum)` with f32 statistics.
#[cube(launch)]
fn add_rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    y: &Tensor<F>,
    w: &Tensor<F>,
    sum: &mut Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
) {
    let dim = w.len();
    let base = CUBE_POS_X as usize * dim;
    let mut scratch = SharedMemory::<f32>::new(CUBE);
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < dim {
        let v = x[base + i] + y[base + i];
        sum[base + i] = v;
        let vf = f32::cast_from(v);
        acc += vf * vf;
        i += CUBE;
    }
    let total = cube_sum::<f32>(acc, &mut scratch);
    let denom = (total / f32::cast_from(dim as u32) + eps).sqrt();
    let mut i = UNIT_POS as usize;
    while i < dim {
        let v = f32::cast_from(x[base + i] + y[base + i]);
        out[base + i] = F::cast_from(v / denom) * w[i];
        i += CUBE;
    }
}

/// Rotary embedding of one decode position, and the cache write: `qkv` is `[rows, dim + 2·kv]`
/// (queries, keys, values of one token per row); queries are rotated into `q`, keys rotated and
/// values copied into the caches `[rows, n_kv_head, max_len, head_dim]` at `pos`. One unit per
/// element of `qkv`.
#[cube(launch)]
fn rope_cache_kernel<F: Float>(
    qkv: &Tensor<F>,
    freqs: &Tensor<f32>,
    q: &mut Tensor<F>,
    cache_k: &mut Tensor<F>,
    cache_v: &mut Tensor<F>,
    pos: u32,
    dim: u32,
    kv_dim: u32,
    head_dim: u32,
) {
    let at = ABSOLUTE_POS;
    let width = (dim + 2 * kv_dim) as usize;
    if at >= qkv.len() {
        terminate!();
    }
    let row = at / width;
    let col = at % width;
    let dim = dim as usize;
    let kv_dim = kv_dim as usize;
    let hd = head_dim as usize;
    let pos = pos as usize;
    let n_kv = kv_dim / hd;
    let max_len = cache_k.shape(2);
    let half = hd / 2;
    if col < dim + kv_dim {
        // Rotate the pair this element belongs to: (x0·cos − x1·sin, x1·cos + x0·sin).
        let d = col % hd;
        let pair = d / 2;
        let first = col - (d % 2);
        // In f32, as the official apply_rotary_emb (`x.float()`), rounded to F once.
        let x0 = f32::cast_from(qkv[row * width + first]);
        let x1 = f32::cast_from(qkv[row * width + first + 1]);
        let c = freqs[(pos * half + pair) * 2];
        let s = freqs[(pos * half + pair) * 2 + 1];
        let mut v = x1 * c + x0 * s;
        if d % 2 == 0 {
            v = x0 * c - x1 * s;
        }
        if col < dim {
            q[row * dim + col] = F::cast_from(v);
        } else {
            let kc = col - dim;
            let head = kc / hd;
            cache_k[((row * n_kv + head) * max_len + pos) * hd + d] = F::cast_from(v);
        }
    } else {
        let vc = col - dim - kv_dim;
        let head = vc / hd;
        let d = vc % hd;
        cache_v[((row * n_kv + head) * max_len + pos) * hd + d] = qkv[row * width + col];
    }
}

/// Attention of one query per (row, head) over the cached keys `[0, len)`: scaled scores plus
/// the row's key bias (0 or a large negative number for masked caption columns), softmax,
/// weighted sum of the values. Grouped-query heads read their key/value head. Cube
/// (head, row); the output row is `[n_head · head_dim]`. Scores, softmax and the weighted sum
/// are f32 whatever `F` is.
#[cube(launch)]
fn decode_attention_kernel<F: Float>(
    q: &Tensor<F>,
    cache_k: &Tensor<F>,
    cache_v: &Tensor<F>,
    bias: &Tensor<f32>,
    out: &mut Tensor<F>,
    len: u32,
    head_dim: u32,
    scale: f32,
    #[comptime] max_keys: usize,
) {
    let head = CUBE_POS_X as usize;
    let row = CUBE_POS_Y as usize;
    let n_head = CUBE_COUNT_X as usize;
    let unit = UNIT_POS as usize;
    let hd = head_dim as usize;
    let len = len as usize;
    let n_kv = cache_k.shape(1);
    let max_len = cache_k.shape(2);
    let kv_head = head / (n_head / n_kv);
    let kv_base = (row * n_kv + kv_head) * max_len * hd;
    let q_base = (row * n_head + head) * hd;

    let mut scores = SharedMemory::<f32>::new(max_keys);
    let mut scratch = SharedMemory::<f32>::new(CUBE);

    let mut local_max = f32::new(NEG_BIG);
    let mut j = unit;
    while j < len {
        let mut dot = 0.0f32;
        for d in 0..hd {
            dot += f32::cast_from(q[q_base + d]) * f32::cast_from(cache_k[kv_base + j * hd + d]);
        }
        let s = dot * scale + bias[row * max_len + j];
        scores[j] = s;
        local_max = max(local_max, s);
        j += CUBE;
    }
    let top = cube_max::<f32>(local_max, &mut scratch);
    let mut local_sum = 0.0f32;
    let mut j = unit;
    while j < len {
        let e = (scores[j] - top).exp();
        scores[j] = e;
        local_sum += e;
        j += CUBE;
    }
    let total = cube_sum::<f32>(local_sum, &mut scratch);

    // Values: unit (group g, element d) sums the keys j ≡ g (mod groups).
    let groups = CUBE / hd;
    let g = unit / hd;
    let d = unit % hd;
    let mut acc = 0.0f32;
    if g < groups {
        let mut j = g;
        while j < len {
            acc += scores[j] * f32::cast_from(cache_v[kv_base + j * hd + d]);
            j += groups;
        }
    }
    scratch[unit] = acc;
    sync_cube();
    if unit < hd {
        let mut sum = 0.0f32;
        for k in 0..groups {
            sum += scratch[k * hd + unit];
        }
        out[q_base + unit] = F::cast_from(sum / total);
    }
}

/// SwiGLU's gate: `silu(a) · b`, element-wise, computed in f32.
#[cube(launch)]
fn swiglu_kernel<F: Float>(a: &Tensor<F>, b: &Tensor<F>, out: &mut Tensor<F>) {
    let at = ABSOLUTE_POS;
    if at < out.len() {
        let x = f32::cast_from(a[at]);
        out[at] = F::cast_from(x / (1.0 + (0.0 - x).exp()) * f32::cast_from(b[at]));
    }
}

/// Token `j`'s logit as the sampler sees it: guided (`u + (c − u) · scale`) when guidance is
/// active, then divided by the temperature.
#[cube]
fn scaled_logit<F: Float>(
    logits: &Tensor<F>,
    cond_base: usize,
    uncond_base: usize,
    j: usize,
    active: bool,
    cfg_scale: F,
    temperature: F,
) -> F {
    let mut l = logits[cond_base + j];
    if active {
        let u = logits[uncond_base + j];
        l = u + (l - u) * cfg_scale;
    }
    l / temperature
}

/// A 32-bit integer hash (xor-shift-multiply rounds), the counter-based random source of the
/// device sampler.
#[cube]
fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h *= 0x7feb_352du32;
    h ^= h >> 15;
    h *= 0x846c_a68bu32;
    h ^= h >> 16;
    h
}

/// Key of a float whose unsigned order is the float order (`a < b` ⇔ `key(a) < key(b)`).
#[cube]
fn order_key<F: Float>(v: F) -> u32 {
    let bits = u32::reinterpret(f32::cast_from(v));
    let mut key = bits | 0x8000_0000u32;
    if bits >= 0x8000_0000u32 {
        key = !bits;
    }
    key
}

/// One token per sample, on the device. Cube `i` samples request `i` from `logits`
/// `[rows, vocab]` (rows `i` and `b + i` are its conditional and unconditional rows when
/// guidance is on): CFG combine, temperature, top-k (the k-th largest value found by bisection
/// on its order key, so ties with it stay, as in the official filter), softmax, top-p (the
/// smallest key whose higher-valued mass is ≤ p, found the same way), then the Gumbel-max draw
/// with a counter-based hash of (seed, step, token) as its uniform numbers. Greedy (top-k 1)
/// takes the first maximum without noise. Writes the token to `ids[i]` (and `ids[b + i]`), its
/// probability and the entropy of the filtered distribution.
///
/// `params` is `[b, 5]`: cfg scale, cfg interval, temperature, top-k, top-p; `seeds` `[b, 2]`
/// holds each seed's low and high 32 bits.
#[cube(launch)]
fn sample_kernel<F: Float>(
    logits: &Tensor<F>,
    params: &Tensor<F>,
    seeds: &Tensor<u32>,
    ids: &mut Tensor<i32>,
    info: &mut Tensor<F>,
    step: u32,
    use_cfg: u32,
) {
    let i = CUBE_POS_X as usize;
    let b = CUBE_COUNT_X as usize;
    let unit = UNIT_POS as usize;
    let vocab = logits.shape(1);
    let cfg_scale = params[i * 5];
    let cfg_interval = params[i * 5 + 1];
    let temperature = max(params[i * 5 + 2], F::new(1.0e-5));
    let top_k = u32::cast_from(params[i * 5 + 3]);
    let top_p = params[i * 5 + 4];
    let step_f = F::cast_from(step);
    // Guidance on this token: the rule of SamplerParams::cfg_active.
    let active = use_cfg == 1
        && cfg_scale > F::new(1.0)
        && (step == 0 || cfg_interval < F::new(0.0) || step_f - F::new(1.0) <= cfg_interval);
    let cond_base = i * vocab;
    let uncond_base = (b + i) * vocab;

    let mut fscratch = SharedMemory::<F>::new(CUBE);
    let mut uscratch = SharedMemory::<u32>::new(CUBE);

    // The scaled logit of a token is recomputed in every pass: the row is read from global
    // memory, with no shared copy.
    let mut local_max = F::new(NEG_BIG);
    let mut j = unit;
    while j < vocab {
        let l = scaled_logit::<F>(
            logits,
            cond_base,
            uncond_base,
            j,
            active,
            cfg_scale,
            temperature,
        );
        local_max = max(local_max, l);
        j += CUBE;
    }
    let top = cube_max::<F>(local_max, &mut fscratch);

    // Top-k: the largest key K with count(key ≥ K) ≥ k.
    let mut k_key = 0u32;
    if top_k > 0 && (top_k as usize) < vocab {
        let mut lo = 0u32;
        let mut hi = 0xffff_ffffu32;
        // Invariant: count(key ≥ lo) ≥ k; the answer is in [lo, hi].
        while lo < hi {
            let mid = lo + (hi - lo) / 2 + (hi - lo) % 2;
            let mut c = 0u32;
            let mut j = unit;
            while j < vocab {
                let l = scaled_logit::<F>(
                    logits,
                    cond_base,
                    uncond_base,
                    j,
                    active,
                    cfg_scale,
                    temperature,
                );
                if order_key::<F>(l) >= mid {
                    c += 1;
                }
                j += CUBE;
            }
            let count = cube_sum::<u32>(c, &mut uscratch);
            if count >= top_k {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        k_key = lo;
    }

    // Softmax mass of the tokens kept by top-k.
    let mut local_sum = F::new(0.0);
    let mut j = unit;
    while j < vocab {
        let l = scaled_logit::<F>(
            logits,
            cond_base,
            uncond_base,
            j,
            active,
            cfg_scale,
            temperature,
        );
        if order_key::<F>(l) >= k_key {
            local_sum += (l - top).exp();
        }
        j += CUBE;
    }
    let z_k = cube_sum::<F>(local_sum, &mut fscratch);

    // Top-p: the smallest key P with mass(key > P) ≤ p · Z; tokens with key ≥ P stay.
    let mut p_key = 0u32;
    if top_p < F::new(1.0) {
        let limit = top_p * z_k;
        let mut lo = 0u32;
        let mut hi = 0xffff_ffffu32;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut m = F::new(0.0);
            let mut j = unit;
            while j < vocab {
                let l = scaled_logit::<F>(
                    logits,
                    cond_base,
                    uncond_base,
                    j,
                    active,
                    cfg_scale,
                    temperature,
                );
                let key = order_key::<F>(l);
                if key >= k_key && key > mid {
                    m += (l - top).exp();
                }
                j += CUBE;
            }
            let mass = cube_sum::<F>(m, &mut fscratch);
            if mass <= limit {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        p_key = lo;
    }
    let keep_key = max(k_key, p_key);

    // Final mass, entropy terms and the draw.
    let seed_lo = seeds[i * 2];
    let seed_hi = seeds[i * 2 + 1];
    let stream = mix32(seed_lo ^ mix32(seed_hi ^ mix32(step ^ 0x9e37_79b9u32)));
    let greedy = top_k == 1;
    let mut z = F::new(0.0);
    let mut zl = F::new(0.0);
    let mut best = F::new(NEG_BIG);
    let mut best_j = vocab;
    let mut j = unit;
    while j < vocab {
        let l = scaled_logit::<F>(
            logits,
            cond_base,
            uncond_base,
            j,
            active,
            cfg_scale,
            temperature,
        );
        if order_key::<F>(l) >= keep_key {
            let e = (l - top).exp();
            z += e;
            zl += e * (l - top);
            let mut score = l;
            if !greedy {
                let h = mix32(stream ^ mix32(j as u32));
                let u = (F::cast_from(h >> 8) + F::new(0.5)) * F::new(5.960_464_5e-8);
                score = l - (F::new(0.0) - u.ln()).ln();
            }
            if score > best {
                best = score;
                best_j = j;
            }
        }
        j += CUBE;
    }
    let z = cube_sum::<F>(z, &mut fscratch);
    let zl = cube_sum::<F>(zl, &mut fscratch);
    // Argmax over the cube: the best score, the smallest index on ties.
    fscratch[unit] = best;
    uscratch[unit] = best_j as u32;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            let a = fscratch[unit];
            let ia = uscratch[unit];
            let o = fscratch[unit + stride];
            let io = uscratch[unit + stride];
            if o > a || (o == a && io < ia) {
                fscratch[unit] = o;
                uscratch[unit] = io;
            }
        }
        sync_cube();
        stride /= 2;
    }
    if unit == 0 {
        let token = uscratch[0] as usize;
        let l = scaled_logit::<F>(
            logits,
            cond_base,
            uncond_base,
            token,
            active,
            cfg_scale,
            temperature,
        );
        ids[i] = i32::cast_from(token as u32);
        if use_cfg == 1 {
            ids[b + i] = i32::cast_from(token as u32);
        }
        info[i * 3] = F::cast_from(token as u32);
        info[i * 3 + 1] = (l - top).exp() / z;
        info[i * 3 + 2] = z.ln() - zl / z;
    }
}

/// Launches the kernel `$kernel` with its float type chosen by `$dtype` (f32, f16 or bf16).
macro_rules! launch_float {
    ($kernel:ident, $dtype:expr, $($arg:expr),* $(,)?) => {
        match $dtype {
            DType::F16 => $kernel::launch::<burn::tensor::f16, R>($($arg),*),
            DType::BF16 => $kernel::launch::<burn::tensor::bf16, R>($($arg),*),
            DType::F32 => $kernel::launch::<f32, R>($($arg),*),
            other => unreachable!("the kernels' callers check the float type ({other:?})"),
        }
    };
}

fn client_of<R: CubeRuntime>(t: &CubeTensor<R>) -> ComputeClient<R> {
    t.client.clone()
}

fn empty_like<R: CubeRuntime>(t: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, t.dtype)
}

/// `rms_norm(x)`, `x` `[rows, dim]`.
pub fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>, eps: f32) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let w = into_contiguous(w);
    let shape = x.meta.shape().clone();
    let rows = shape[0];
    let out = empty_like(&x, shape);
    let dtype = out.dtype;
    launch_float!(
        rms_norm_kernel,
        dtype,
        &client_of(&x),
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(CUBE as u32),
        x.into_tensor_arg(),
        w.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        eps,
    );
    out
}

/// `(x + y, rms_norm(x + y))`, `x` and `y` `[rows, dim]`.
pub fn add_rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    y: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let x = into_contiguous(x);
    let y = into_contiguous(y);
    let w = into_contiguous(w);
    let shape = x.meta.shape().clone();
    let rows = shape[0];
    let sum = empty_like(&x, shape.clone());
    let out = empty_like(&x, shape);
    let dtype = out.dtype;
    launch_float!(
        add_rms_norm_kernel,
        dtype,
        &client_of(&x),
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(CUBE as u32),
        x.into_tensor_arg(),
        y.into_tensor_arg(),
        w.into_tensor_arg(),
        sum.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        eps,
    );
    (sum, out)
}

/// Rotates the queries of `qkv` `[rows, dim + 2·kv]` at position `pos` and writes the rotated
/// keys and the values into the caches at `pos`; returns the queries `[rows, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn rope_cache<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    freqs: CubeTensor<R>,
    cache_k: &CubeTensor<R>,
    cache_v: &CubeTensor<R>,
    pos: usize,
    dim: usize,
    kv_dim: usize,
    head_dim: usize,
) -> CubeTensor<R> {
    let qkv = into_contiguous(qkv);
    let freqs = into_contiguous(freqs);
    let rows = qkv.meta.shape()[0];
    let q = empty_like(&qkv, Shape::new([rows, dim]));
    let client = client_of(&qkv);
    let n = rows * (dim + 2 * kv_dim);
    let cube_dim = CubeDim::new_1d(CUBE as u32);
    let cubes = n.div_ceil(CUBE) as u32;
    let dtype = q.dtype;
    launch_float!(
        rope_cache_kernel,
        dtype,
        &client,
        CubeCount::Static(cubes, 1, 1),
        cube_dim,
        qkv.into_tensor_arg(),
        freqs.into_tensor_arg(),
        q.clone().into_tensor_arg(),
        cache_k.clone().into_tensor_arg(),
        cache_v.clone().into_tensor_arg(),
        pos as u32,
        dim as u32,
        kv_dim as u32,
        head_dim as u32,
    );
    q
}

/// One query per row `[rows, n_head · head_dim]` over the cached keys `[0, len)`.
pub fn decode_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    cache_k: &CubeTensor<R>,
    cache_v: &CubeTensor<R>,
    bias: &CubeTensor<R>,
    len: usize,
    n_head: usize,
    head_dim: usize,
) -> CubeTensor<R> {
    let q = into_contiguous(q);
    let rows = q.meta.shape()[0];
    let out = empty_like(&q, q.meta.shape().clone());
    let max_len = cache_k.meta.shape()[2];
    let client = client_of(&q);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dtype = out.dtype;
    launch_float!(
        decode_attention_kernel,
        dtype,
        &client,
        CubeCount::Static(n_head as u32, rows as u32, 1),
        CubeDim::new_1d(CUBE as u32),
        q.into_tensor_arg(),
        cache_k.clone().into_tensor_arg(),
        cache_v.clone().into_tensor_arg(),
        bias.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        head_dim as u32,
        scale,
        max_len.next_multiple_of(64).min(MAX_KEYS),
    );
    out
}

/// `silu(a) · b`.
pub fn swiglu<R: CubeRuntime>(a: CubeTensor<R>, b: CubeTensor<R>) -> CubeTensor<R> {
    let a = into_contiguous(a);
    let b = into_contiguous(b);
    let out = empty_like(&a, a.meta.shape().clone());
    let n = out.meta.shape().num_elements();
    let client = client_of(&a);
    let dtype = out.dtype;
    launch_float!(
        swiglu_kernel,
        dtype,
        &client,
        CubeCount::Static(n.div_ceil(CUBE) as u32, 1, 1),
        CubeDim::new_1d(CUBE as u32),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    out
}

/// The device sampler (see [`sample_kernel`]): returns (ids `[rows, 1]`, info `[b, 3]`:
/// token, probability, entropy).
pub fn sample<R: CubeRuntime>(
    logits: CubeTensor<R>,
    params: CubeTensor<R>,
    seeds: CubeTensor<R>,
    ids_like: &CubeTensor<R>,
    b: usize,
    step: usize,
    use_cfg: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let logits = into_contiguous(logits);
    let rows = logits.meta.shape()[0];
    let ids = empty_device_dtype(
        ids_like.client.clone(),
        ids_like.device.clone(),
        Shape::new([rows, 1]),
        ids_like.dtype,
    );
    let info = empty_like(&logits, Shape::new([b, 3]));
    let client = client_of(&logits);
    sample_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(b as u32, 1, 1),
        CubeDim::new_1d(CUBE as u32),
        logits.into_tensor_arg(),
        params.into_tensor_arg(),
        seeds.into_tensor_arg(),
        ids.clone().into_tensor_arg(),
        info.clone().into_tensor_arg(),
        step as u32,
        u32::from(use_cfg),
    );
    (ids, info)
}
