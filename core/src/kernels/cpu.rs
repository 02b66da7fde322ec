//! The CPU's half-precision matrix product: f32 activations times weights stored in f16 or
//! bf16, widened to f32 inside the product and accumulated in f32.
//!
//! A decode step multiplies a few rows by every weight matrix once, so on the CPU it is bound by
//! the bytes of weights read. Weights in half precision halve those bytes; the arithmetic stays
//! f32. The weights are read as PyTorch stores a linear layer (`[out, in]`, one output's inputs
//! contiguous), which is how [`crate::checkpoint::Weights::linear`] leaves them under burn's
//! `[in, out]` view, so every output is a contiguous dot product per row.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::{Bytes, DType, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

/// The two half formats a weight can be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Half {
    F16,
    Bf16,
}

fn cast<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .expect("types checked by TypeId")
}

/// `x` `[m, k]` (f32) times `w` `[k, n]` (f16 or bf16, in the layout of a loaded linear
/// layer) as f32 `[m, n]`, on the CPU backend. `None` when the backend, the float types or the
/// weight's layout do not fit; the caller then multiplies with burn's operations.
pub fn half_weight_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B::FloatTensorPrimitive>() != TypeId::of::<FlexTensor>() {
        return None;
    }
    let half = match w.dtype() {
        DType::F16 => Half::F16,
        DType::BF16 => Half::Bf16,
        _ => return None,
    };
    if x.dtype() != DType::F32 {
        return None;
    }
    let [m, k] = x.dims();
    let [k2, n] = w.dims();
    if k != k2 {
        return None;
    }
    let w: FlexTensor = cast(w.into_primitive().tensor());
    // Output j's weights at `start + j·k + i`: burn's transposed view of `[n, k]` storage.
    let layout = w.layout();
    if layout.strides() != [1, k as isize] {
        return None;
    }
    let start = layout.start_offset();
    let bits: &[u16] = match half {
        Half::F16 => bits_of(w.storage::<burn::tensor::f16>()),
        Half::Bf16 => bits_of(w.storage::<burn::tensor::bf16>()),
    };
    let weights = bits.get(start..start + n * k)?;
    let out = with_rows(x, |xs| matmul(xs, weights, m, k, n, half))?;
    Some(tensor_of(out, m, n))
}

/// `x` `[m, k]` times `w` `[k, n]`, both f32, with `w` in the layout of a loaded linear layer
/// (each output's inputs contiguous): every weight is read once, whatever `m`, and each output
/// is a dot product per row. For the few rows of a decode step or a speculative pass, where
/// a general product would pack (copy) the whole weight on every call. `None` when the backend,
/// the types or the layout do not fit.
pub fn f32_weight_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B::FloatTensorPrimitive>() != TypeId::of::<FlexTensor>()
        || w.dtype() != DType::F32
        || x.dtype() != DType::F32
    {
        return None;
    }
    let [m, k] = x.dims();
    let [k2, n] = w.dims();
    if k != k2 {
        return None;
    }
    let w: FlexTensor = cast(w.into_primitive().tensor());
    let layout = w.layout();
    if layout.strides() != [1, k as isize] {
        return None;
    }
    let start = layout.start_offset();
    let weights = w.storage::<f32>().get(start..start + n * k)?;
    let out = with_rows(x, |xs| matmul_f32(xs, weights, m, k, n))?;
    Some(tensor_of(out, m, n))
}

/// Columns of the f32 product per register tile (with four rows: twelve sums in registers,
/// seven loads for twelve fused multiply-adds).
const F32_TILE_COLUMNS: usize = 3;

/// `[m, n]` = `x` `[m, k]` · `wᵀ`, `w` `[n, k]` f32.
fn matmul_f32(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out_t = vec![0f32; n * m];
    let per_task = COLUMNS_PER_TASK / F32_TILE_COLUMNS * F32_TILE_COLUMNS;
    out_t
        .par_chunks_mut(per_task * m)
        .enumerate()
        .for_each(|(task, cols)| {
            let first = task * per_task;
            let mut c = 0;
            #[cfg(target_arch = "x86_64")]
            if simd::available() {
                while (c + F32_TILE_COLUMNS) * m <= cols.len() {
                    let j = first + c;
                    let ws = &w[j * k..(j + F32_TILE_COLUMNS) * k];
                    let out = &mut cols[c * m..(c + F32_TILE_COLUMNS) * m];
                    // SAFETY: the CPU has the features `simd::columns_f32` is compiled for.
                    unsafe { simd::columns_f32(x, ws, k, out) };
                    c += F32_TILE_COLUMNS;
                }
            }
            for (cc, col) in cols.chunks_mut(m).enumerate().skip(c) {
                let j = first + cc;
                dot_rows_f32(x, &w[j * k..(j + 1) * k], k, col);
            }
        });
    row_major(&out_t, m, n)
}

/// `out[r] = x[r] · w` for every row `r` of `x` `[out.len(), k]`, all f32.
fn dot_rows_f32(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features `simd::dot_rows_f32` is compiled for.
        unsafe { simd::dot_rows_f32(x, w, k, out) };
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        let row = &x[r * k..(r + 1) * k];
        *o = row.iter().zip(w).map(|(a, b)| a * b).sum();
    }
}

/// `f` applied to the f32 values of `x` (CPU backend) in row-major order, borrowed where they
/// are contiguous.
fn with_rows<B: Backend, R>(x: Tensor<B, 2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let x: FlexTensor = cast(x.into_primitive().tensor());
    Some(match x.layout().contiguous_offsets() {
        Some((a, b)) => f(&x.storage::<f32>()[a..b]),
        None => f(&x.into_data().to_vec::<f32>().ok()?),
    })
}

/// `[m, n]` f32 values as a tensor of the CPU backend.
fn tensor_of<B: Backend>(out: Vec<f32>, m: usize, n: usize) -> Tensor<B, 2> {
    let out = FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous([m, n].into()),
        DType::F32,
    );
    Tensor::from_primitive(TensorPrimitive::Float(cast(out)))
}

/// The products are computed column by column (`[n, m]`); the result is `[m, n]`.
fn row_major(out_t: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            out[r * n + j] = out_t[j * m + r];
        }
    }
    out
}

fn bits_of<T: bytemuck::Pod>(v: &[T]) -> &[u16] {
    bytemuck::cast_slice(v)
}

/// Columns of the output per task.
const COLUMNS_PER_TASK: usize = 64;

/// `[m, n]` = `x` `[m, k]` · `wᵀ`, `w` `[n, k]` half bits.
fn matmul(x: &[f32], w: &[u16], m: usize, k: usize, n: usize, half: Half) -> Vec<f32> {
    // Column-major first (each task owns whole columns), row-major at the end.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(COLUMNS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, cols)| {
            let first = task * COLUMNS_PER_TASK;
            for (c, col) in cols.chunks_mut(m).enumerate() {
                let j = first + c;
                dot_rows(x, &w[j * k..(j + 1) * k], k, half, col);
            }
        });
    row_major(&out_t, m, n)
}

/// `out[r] = x[r] · w` for every row `r` of `x` `[out.len(), k]`.
fn dot_rows(x: &[f32], w: &[u16], k: usize, half: Half, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features `simd::dot_rows` is compiled for.
        unsafe { simd::dot_rows(x, w, k, half, out) };
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        let row = &x[r * k..(r + 1) * k];
        *o = row.iter().zip(w).map(|(a, b)| a * widen(*b, half)).sum();
    }
}

/// One half value as f32.
fn widen(bits: u16, half: Half) -> f32 {
    match half {
        Half::F16 => burn::tensor::f16::from_bits(bits).to_f32(),
        Half::Bf16 => f32::from_bits(u32::from(bits) << 16),
    }
}

/// `x` `[m, k]` (f32) times `w` `[k, n]` quantized by [`crate::quant`] (the CPU backend's
/// contiguous `i8` values, one f32 scale per 32 consecutive values along `n`) as f32 `[m, n]`.
/// `None` when the backend, the types or the layout do not fit; the caller then uses burn's
/// product, which dequantizes the whole weight first.
pub fn quant_weight_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    use burn::tensor::quantization::QuantLevel;
    use burn_flex::FlexQTensor;
    if TypeId::of::<B::QuantizedTensorPrimitive>() != TypeId::of::<FlexQTensor>() {
        return None;
    }
    let DType::QFloat(scheme) = w.dtype() else {
        return None;
    };
    if scheme.level != QuantLevel::block([QBLOCK as u8]) || x.dtype() != DType::F32 {
        return None;
    }
    let [m, k] = x.dims();
    let [k2, n] = w.dims();
    if k != k2 || n % QBLOCK != 0 {
        return None;
    }
    let TensorPrimitive::QFloat(q) = w.into_primitive() else {
        return None;
    };
    let q: FlexQTensor = cast(q);
    let (a, b) = q.tensor().layout().contiguous_offsets()?;
    let values: &[i8] = q.tensor().storage::<i8>().get(a..b)?;
    let scales = q.scales();
    if values.len() != k * n || scales.len() != k * n / QBLOCK {
        return None;
    }
    let out = with_rows(x, |xs| qmatmul(xs, values, scales, m, k, n))?;
    Some(tensor_of(out, m, n))
}

/// Values per scale of a quantized weight ([`crate::quant::BLOCK`]).
const QBLOCK: usize = crate::quant::BLOCK;

/// `[m, n]` = `x` `[m, k]` · (`q` `[k, n]` × its block scales). Each task owns `QBLOCK`
/// columns (one scale per input), reads them for every input and keeps the sums of every
/// row in registers.
fn qmatmul(x: &[f32], q: &[i8], scales: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let blocks = n / QBLOCK;
    let tiles: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .with_min_len(2)
        .map(|t| {
            let mut tile = vec![0f32; m * QBLOCK];
            qtile(x, q, scales, m, k, n, t, &mut tile);
            tile
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (t, tile) in tiles.iter().enumerate() {
        for r in 0..m {
            out[r * n + t * QBLOCK..r * n + (t + 1) * QBLOCK]
                .copy_from_slice(&tile[r * QBLOCK..(r + 1) * QBLOCK]);
        }
    }
    out
}

/// Columns `t·QBLOCK..(t+1)·QBLOCK` of the quantized product, `[m, QBLOCK]` into `tile`.
#[allow(clippy::too_many_arguments)]
fn qtile(
    x: &[f32],
    q: &[i8],
    scales: &[f32],
    m: usize,
    k: usize,
    n: usize,
    t: usize,
    tile: &mut [f32],
) {
    let blocks = n / QBLOCK;
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features `simd::qtile` is compiled for; the shapes were
        // checked by the caller.
        unsafe { simd::qtile(x, q, scales, m, k, n, t, tile) };
        return;
    }
    for i in 0..k {
        let s = scales[i * blocks + t];
        let col = &q[i * n + t * QBLOCK..i * n + (t + 1) * QBLOCK];
        for r in 0..m {
            let c = x[r * k + i] * s;
            for (o, &v) in tile[r * QBLOCK..(r + 1) * QBLOCK].iter_mut().zip(col) {
                *o += c * f32::from(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Half, widen};

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// Eight half values at `p` as f32 lanes (`BF16`: bf16, else f16).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const BF16: bool>(p: *const u16) -> __m256 {
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            if BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            } else {
                _mm256_cvtph_ps(h)
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum8(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `R` rows (at most four) against one weight vector: each 16 weights are widened once,
    /// and each row keeps two accumulators so that consecutive fused multiply-adds do not wait
    /// on each other. Every array here has a constant length, so it lives in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const R: usize, const BF16: bool>(
        x: *const f32,
        w: *const u16,
        k: usize,
        out: *mut f32,
    ) {
        unsafe {
            let body = k / 16 * 16;
            let mut a0 = [_mm256_setzero_ps(); R];
            let mut a1 = [_mm256_setzero_ps(); R];
            let mut i = 0;
            while i < body {
                let w0 = load8::<BF16>(w.add(i));
                let w1 = load8::<BF16>(w.add(i + 8));
                for r in 0..R {
                    let xr = x.add(r * k + i);
                    a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a0[r]);
                    a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a1[r]);
                }
                i += 16;
            }
            let half = if BF16 { Half::Bf16 } else { Half::F16 };
            for r in 0..R {
                let mut s = sum8(_mm256_add_ps(a0[r], a1[r]));
                for t in body..k {
                    s += *x.add(r * k + t) * widen(*w.add(t), half);
                }
                *out.add(r) = s;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_rows_as<const BF16: bool>(x: &[f32], w: &[u16], k: usize, out: &mut [f32]) {
        let m = out.len();
        assert!(
            x.len() >= m * k && w.len() >= k,
            "shapes checked by the caller"
        );
        let (x, w, o) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut r = 0;
        // SAFETY: rows r..r+n of `x` (k values each), `w` (k values) and out[r..r+n] are in
        // bounds by the assertion above.
        unsafe {
            while r + 4 <= m {
                rows::<4, BF16>(x.add(r * k), w, k, o.add(r));
                r += 4;
            }
            match m - r {
                3 => rows::<3, BF16>(x.add(r * k), w, k, o.add(r)),
                2 => rows::<2, BF16>(x.add(r * k), w, k, o.add(r)),
                1 => rows::<1, BF16>(x.add(r * k), w, k, o.add(r)),
                _ => {}
            }
        }
    }

    /// 32 quantized values at `p` as four vectors of f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load32_i8(p: *const i8) -> [__m256; 4] {
        unsafe {
            let v = |o: usize| {
                let b = _mm_loadl_epi64(p.add(o) as *const __m128i);
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
            };
            [v(0), v(8), v(16), v(24)]
        }
    }

    /// `R` rows (at most two) of one 32-column tile: the sums stay in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn qrows<const R: usize>(
        x: *const f32,
        q: *const i8,
        scales: *const f32,
        k: usize,
        n: usize,
        blocks: usize,
        out: *mut f32,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for i in 0..k {
                let s = _mm256_set1_ps(*scales.add(i * blocks));
                let w = load32_i8(q.add(i * n));
                for r in 0..R {
                    let c = _mm256_mul_ps(s, _mm256_set1_ps(*x.add(r * k + i)));
                    for v in 0..4 {
                        acc[r][v] = _mm256_fmadd_ps(c, w[v], acc[r][v]);
                    }
                }
            }
            for r in 0..R {
                for v in 0..4 {
                    _mm256_storeu_ps(out.add(r * 32 + v * 8), acc[r][v]);
                }
            }
        }
    }

    /// Columns `t·32..(t+1)·32` of the quantized product into `tile` `[m, 32]`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn qtile(
        x: &[f32],
        q: &[i8],
        scales: &[f32],
        m: usize,
        k: usize,
        n: usize,
        t: usize,
        tile: &mut [f32],
    ) {
        let blocks = n / 32;
        assert!(
            x.len() >= m * k
                && q.len() >= k * n
                && scales.len() >= k * blocks
                && tile.len() >= m * 32
                && t < blocks,
            "shapes checked by the caller"
        );
        // SAFETY: every offset read below is inside the bounds asserted above.
        unsafe {
            let (q, s) = (q.as_ptr().add(t * 32), scales.as_ptr().add(t));
            let mut r = 0;
            while r + 2 <= m {
                qrows::<2>(
                    x.as_ptr().add(r * k),
                    q,
                    s,
                    k,
                    n,
                    blocks,
                    tile.as_mut_ptr().add(r * 32),
                );
                r += 2;
            }
            if r < m {
                qrows::<1>(
                    x.as_ptr().add(r * k),
                    q,
                    s,
                    k,
                    n,
                    blocks,
                    tile.as_mut_ptr().add(r * 32),
                );
            }
        }
    }

    /// [`rows`] for f32 weights.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_f32<const R: usize>(x: *const f32, w: *const f32, k: usize, out: *mut f32) {
        unsafe {
            let body = k / 16 * 16;
            let mut a0 = [_mm256_setzero_ps(); R];
            let mut a1 = [_mm256_setzero_ps(); R];
            let mut i = 0;
            while i < body {
                let w0 = _mm256_loadu_ps(w.add(i));
                let w1 = _mm256_loadu_ps(w.add(i + 8));
                for r in 0..R {
                    let xr = x.add(r * k + i);
                    a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr), a0[r]);
                    a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.add(8)), a1[r]);
                }
                i += 16;
            }
            for r in 0..R {
                let mut s = sum8(_mm256_add_ps(a0[r], a1[r]));
                for t in body..k {
                    s += *x.add(r * k + t) * *w.add(t);
                }
                *out.add(r) = s;
            }
        }
    }

    /// `R` rows against three weight vectors: twelve sums at most, one per (row, column).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_f32<const R: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        m: usize,
        out: *mut f32,
    ) {
        unsafe {
            let body = k / 8 * 8;
            let mut acc = [[_mm256_setzero_ps(); 3]; R];
            let mut i = 0;
            while i < body {
                let w0 = _mm256_loadu_ps(w.add(i));
                let w1 = _mm256_loadu_ps(w.add(k + i));
                let w2 = _mm256_loadu_ps(w.add(2 * k + i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(r * k + i));
                    a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                    a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
                    a[2] = _mm256_fmadd_ps(w2, xv, a[2]);
                }
                i += 8;
            }
            for (r, a) in acc.iter().enumerate() {
                for (c, v) in a.iter().enumerate() {
                    let mut s = sum8(*v);
                    for t in body..k {
                        s += *x.add(r * k + t) * *w.add(c * k + t);
                    }
                    // Column-major output: column c's rows are `m` apart.
                    *out.add(c * m + r) = s;
                }
            }
        }
    }

    /// Three output columns (`w` holds their three weight vectors, `[3, k]`) for every row of
    /// `x` `[m, k]`, into `out` `[3, m]` (column-major).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn columns_f32(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        let m = out.len() / 3;
        assert!(
            out.len() == 3 * m && x.len() >= m * k && w.len() >= 3 * k,
            "shapes checked by the caller"
        );
        let (x, w, o) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut r = 0;
        // SAFETY: rows r..r+n of `x`, the three weight vectors and the output columns' rows
        // r..r+n are in bounds by the assertion above.
        unsafe {
            while r + 4 <= m {
                tile_f32::<4>(x.add(r * k), w, k, m, o.add(r));
                r += 4;
            }
            match m - r {
                3 => tile_f32::<3>(x.add(r * k), w, k, m, o.add(r)),
                2 => tile_f32::<2>(x.add(r * k), w, k, m, o.add(r)),
                1 => tile_f32::<1>(x.add(r * k), w, k, m, o.add(r)),
                _ => {}
            }
        }
    }

    /// `out[r] = x[r] · w` for every row of `x` `[out.len(), k]`, all f32.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows_f32(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        let m = out.len();
        assert!(
            x.len() >= m * k && w.len() >= k,
            "shapes checked by the caller"
        );
        let (x, w, o) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut r = 0;
        // SAFETY: rows r..r+n of `x` (k values each), `w` (k values) and out[r..r+n] are in
        // bounds by the assertion above.
        unsafe {
            while r + 4 <= m {
                rows_f32::<4>(x.add(r * k), w, k, o.add(r));
                r += 4;
            }
            match m - r {
                3 => rows_f32::<3>(x.add(r * k), w, k, o.add(r)),
                2 => rows_f32::<2>(x.add(r * k), w, k, o.add(r)),
                1 => rows_f32::<1>(x.add(r * k), w, k, o.add(r)),
                _ => {}
            }
        }
    }

    /// `out[r] = x[r] · w` for every row of `x` `[out.len(), k]`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    pub unsafe fn dot_rows(x: &[f32], w: &[u16], k: usize, half: Half, out: &mut [f32]) {
        unsafe {
            match half {
                Half::F16 => dot_rows_as::<false>(x, w, k, out),
                Half::Bf16 => dot_rows_as::<true>(x, w, k, out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[u16], m: usize, k: usize, n: usize, half: Half) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(widen(w[j * k + i], half)))
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn the_product_matches_a_plain_loop_in_every_shape() {
        let mut seed = 1u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for half in [Half::F16, Half::Bf16] {
            for (m, k, n) in [
                (1, 16, 3),
                (2, 768, 130),
                (5, 37, 70),
                (9, 64, 1),
                (4, 8, 200),
            ] {
                let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
                let w: Vec<u16> = (0..n * k)
                    .map(|_| match half {
                        Half::F16 => burn::tensor::f16::from_f32(next()).to_bits(),
                        Half::Bf16 => burn::tensor::bf16::from_f32(next()).to_bits(),
                    })
                    .collect();
                let got = matmul(&x, &w, m, k, n, half);
                let want = reference(&x, &w, m, k, n, half);
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-5 * (k as f32).sqrt(),
                        "{half:?} {m}×{k}×{n}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_f32_product_matches_a_plain_loop() {
        let mut seed = 3u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for (m, k, n) in [
            (1, 16, 3),
            (2, 768, 130),
            (5, 37, 70),
            (9, 64, 1),
            (34, 40, 65),
            (7, 13, 200),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let got = matmul_f32(&x, &w, m, k, n);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                        .sum();
                    let g = f64::from(got[r * n + j]);
                    assert!(
                        (g - want).abs() <= 1e-5 * (k as f64).sqrt(),
                        "({m},{k},{n}) [{r},{j}]"
                    );
                }
            }
        }
    }

    #[test]
    fn the_quantized_product_matches_a_plain_loop() {
        let mut seed = 7u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (m, k, n) in [(1, 16, 32), (2, 100, 64), (3, 37, 96), (5, 64, 160)] {
            let x: Vec<f32> = (0..m * k)
                .map(|_| next() as f32 / u32::MAX as f32 - 0.5)
                .collect();
            let q: Vec<i8> = (0..k * n).map(|_| (next() % 255) as i32 as i8).collect();
            let s: Vec<f32> = (0..k * n / QBLOCK)
                .map(|_| (next() % 1000) as f32 / 1e5)
                .collect();
            let got = qmatmul(&x, &q, &s, m, k, n);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            f64::from(x[r * k + i])
                                * f64::from(q[i * n + j])
                                * f64::from(s[i * (n / QBLOCK) + j / QBLOCK])
                        })
                        .sum();
                    let g = f64::from(got[r * n + j]);
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "({m},{k},{n}) [{r},{j}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
