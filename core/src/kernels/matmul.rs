//! Row-major f32 matrix products for the CPU kernels ([`super::conv`]), on raw pointers with row
//! strides so that operands can be bands of larger buffers.
//!
//! - With AVX-512 (x86-64): the project's own product, output tiles of 12 rows × 32 columns with
//!   their 24 accumulators in registers over the whole inner dimension; the last columns of a
//!   product go through masked loads and stores, so nothing is copied.
//! - With AVX2 + FMA: the same with tiles of 6 × 16 (12 accumulators), for the Winograd products;
//!   the im2col products there go through the `gemm` crate (packed operands, its own threads).
//! - Elsewhere: the `gemm` crate.
//!
//! Neither own kernel packs its operands: `b`'s panel of 32 (16) columns is read in place, one
//! row a step, and reused by every row tile while it sits in cache, which suits the shapes here
//! (a few hundred rows and an inner dimension of at most a few thousand).

use rayon::prelude::*;

/// A pointer that may cross threads: each task writes its own part of the buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: only used where every task writes a disjoint part of the buffer.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// `dst (m×n, row stride dst_rs) += a (m×k, row-major) · b (k×n, row stride b_rs)`; with
/// `parallel`, the product itself is split over the rayon pool.
///
/// # Safety
/// `dst` must be valid for reads and writes at `i·dst_rs + j`, `b` for reads at `i·b_rs + j`,
/// for every `i, j` in range.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_acc(
    dst: *mut f32,
    dst_rs: usize,
    a: &[f32],
    b: *const f32,
    b_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    debug_assert!(a.len() >= m * k);
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let (dst, b) = (Shared(dst), Shared(b as *mut f32));
        let columns = |j0: usize, j1: usize| {
            let (dst, b) = (dst, b);
            // SAFETY: columns j0..j1 of the caller's operands; the CPU has AVX-512 (checked).
            unsafe {
                avx512::gemm::<true>(
                    dst.0.add(j0),
                    dst_rs,
                    a.as_ptr(),
                    k,
                    b.0.add(j0),
                    b_rs,
                    m,
                    j1 - j0,
                    k,
                )
            }
        };
        let chunks = if parallel {
            rayon::current_num_threads().max(1)
        } else {
            1
        };
        // Column blocks of whole 32-column panels, one per thread.
        let per = n.div_ceil(chunks).div_ceil(32) * 32;
        if chunks == 1 || per >= n {
            columns(0, n);
        } else {
            (0..n.div_ceil(per))
                .into_par_iter()
                .for_each(|c| columns(c * per, ((c + 1) * per).min(n)));
        }
        return;
    }
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller; `a` is a live m×k row-major slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b,
            1,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `dst (m×n, row stride dst_rs) = a (m×k, row stride a_rs) · b (k×n, row stride b_rs)` on the
/// calling thread: the project's own product with AVX-512 or AVX2 + FMA, else the `gemm` crate's.
///
/// # Safety
/// `dst` must be valid for writes at `i·dst_rs + j`, `a` for reads at `i·a_rs + l`, `b` for
/// reads at `l·b_rs + j`, for every `i < m`, `j < n`, `l < k`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            // SAFETY: forwarded from the caller; the CPU has AVX-512 (checked).
            unsafe { avx512::gemm::<false>(dst, dst_rs, a, a_rs, b, b_rs, m, n, k) };
            return;
        }
        if avx2::available() {
            // SAFETY: forwarded from the caller; the CPU has AVX2 and FMA (checked).
            unsafe { avx2::gemm(dst, dst_rs, a, a_rs, b, b_rs, m, n, k) };
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { gemm_portable(dst, dst_rs, a, a_rs, b, b_rs, m, n, k) }
}

/// [`gemm_into`] through the `gemm` crate, whatever the CPU.
///
/// # Safety
/// As [`gemm_into`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_portable(
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a,
            1,
            a_rs as isize,
            b,
            1,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// `dst = a · b` for row-major operands with the given row strides (see `gemm_into`): the
    /// output in tiles of 6 rows × 16 columns, each tile's 12 accumulators in registers over
    /// the whole inner dimension; `b`'s 16-column panel (read in place, one row of 64 bytes a
    /// step) is reused by every row tile while it sits in L1. Columns past the last full panel
    /// go through a zero-padded copy of their panel.
    ///
    /// # Safety
    /// As `gemm_into`; the CPU must have AVX2 and FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm(
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        b_rs: usize,
        m: usize,
        n: usize,
        k: usize,
    ) {
        let full = n / 16 * 16;
        // SAFETY (every block below): indices stay within i < m, j < n, l < k, as the caller
        // guarantees valid.
        unsafe {
            for j0 in (0..full).step_by(16) {
                let mut i0 = 0;
                while i0 + 6 <= m {
                    tile::<6>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k);
                    i0 += 6;
                }
                match m - i0 {
                    0 => {}
                    1 => tile::<1>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k),
                    2 => tile::<2>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k),
                    3 => tile::<3>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k),
                    4 => tile::<4>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k),
                    _ => tile::<5>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k),
                }
            }
            if full < n {
                // The last columns: through a zero-padded copy of b's panel and of the output.
                let rest = n - full;
                let mut panel = vec![0.0f32; k * 16];
                for l in 0..k {
                    std::ptr::copy_nonoverlapping(
                        b.add(l * b_rs + full),
                        panel.as_mut_ptr().add(l * 16),
                        rest,
                    );
                }
                let mut out = [0.0f32; 6 * 16];
                let mut i0 = 0;
                while i0 < m {
                    let r = (m - i0).min(6);
                    let o = out.as_mut_ptr();
                    let p = panel.as_ptr();
                    let a0 = a.add(i0 * a_rs);
                    match r {
                        1 => tile::<1>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                        2 => tile::<2>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                        3 => tile::<3>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                        4 => tile::<4>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                        5 => tile::<5>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                        _ => tile::<6>(o, 16, a0, a_rs, p, 16, 0, 0, k),
                    }
                    for i in 0..r {
                        std::ptr::copy_nonoverlapping(
                            out.as_ptr().add(i * 16),
                            dst.add((i0 + i) * dst_rs + full),
                            rest,
                        );
                    }
                    i0 += r;
                }
            }
        }
    }

    /// Rows `i0..i0 + R`, columns `j0..j0 + 16` of `dst = a · b`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        b_rs: usize,
        i0: usize,
        j0: usize,
        k: usize,
    ) {
        // SAFETY: the caller's bounds (see `gemm`).
        unsafe {
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            let a = a.add(i0 * a_rs);
            let b = b.add(j0);
            for l in 0..k {
                let bp = b.add(l * b_rs);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for i in 0..R {
                    let av = _mm256_broadcast_ss(&*a.add(i * a_rs + l));
                    lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
                }
            }
            for i in 0..R {
                let d = dst.add((i0 + i) * dst_rs + j0);
                _mm256_storeu_ps(d, lo[i]);
                _mm256_storeu_ps(d.add(8), hi[i]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var_os("LLAMAGEN_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        })
    }

    /// `dst = a · b`, or `dst += a · b` when `ACC`, for row-major operands with the given row
    /// strides (see `gemm_into`): tiles of 12 rows × 32 columns, the last columns of the product
    /// under a lane mask.
    ///
    /// # Safety
    /// As `gemm_into` (with reads of `dst` too when `ACC`); the CPU must have AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gemm<const ACC: bool>(
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        b_rs: usize,
        m: usize,
        n: usize,
        k: usize,
    ) {
        let mask = |w: usize| -> __mmask16 {
            if w >= 16 {
                0xFFFF
            } else {
                ((1u32 << w) - 1) as __mmask16
            }
        };
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(32);
            let (m0, m1) = (mask(w), mask(w.saturating_sub(16)));
            let mut i0 = 0;
            // SAFETY (every call): rows i0.. of m, columns j0..j0 + w of n, as the caller
            // guarantees valid; lanes past w are masked off.
            unsafe {
                while i0 + 12 <= m {
                    tile::<12, ACC>(dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k, m0, m1);
                    i0 += 12;
                }
                let t = (dst, dst_rs, a, a_rs, b, b_rs, i0, j0, k, m0, m1);
                match m - i0 {
                    0 => {}
                    1 => tile::<1, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    2 => tile::<2, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    3 => tile::<3, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    4 => tile::<4, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    5 => tile::<5, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    6 => tile::<6, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    7 => tile::<7, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    8 => tile::<8, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    9 => tile::<9, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    10 => tile::<10, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                    _ => tile::<11, ACC>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10),
                }
            }
            j0 += 32;
        }
    }

    /// Rows `i0..i0 + R`, columns `j0..j0 + 32` (lanes under `m0`, `m1`) of `dst (+)= a · b`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile<const R: usize, const ACC: bool>(
        dst: *mut f32,
        dst_rs: usize,
        a: *const f32,
        a_rs: usize,
        b: *const f32,
        b_rs: usize,
        i0: usize,
        j0: usize,
        k: usize,
        m0: __mmask16,
        m1: __mmask16,
    ) {
        // SAFETY: the caller's bounds (see `gemm`); masked-off lanes are neither read nor
        // written.
        unsafe {
            let mut lo = [_mm512_setzero_ps(); R];
            let mut hi = [_mm512_setzero_ps(); R];
            if ACC {
                for i in 0..R {
                    let d = dst.add((i0 + i) * dst_rs + j0);
                    lo[i] = _mm512_maskz_loadu_ps(m0, d);
                    hi[i] = _mm512_maskz_loadu_ps(m1, d.add(16));
                }
            }
            let a = a.add(i0 * a_rs);
            let b = b.add(j0);
            for l in 0..k {
                let bp = b.add(l * b_rs);
                let b0 = _mm512_maskz_loadu_ps(m0, bp);
                let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
                for i in 0..R {
                    let av = _mm512_set1_ps(*a.add(i * a_rs + l));
                    lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
                    hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
                }
            }
            for i in 0..R {
                let d = dst.add((i0 + i) * dst_rs + j0);
                _mm512_mask_storeu_ps(d, m0, lo[i]);
                _mm512_mask_storeu_ps(d.add(16), m1, hi[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    const SHAPES: [(usize, usize, usize); 7] = [
        (7, 37, 5),
        (6, 16, 3),
        (13, 50, 129),
        (1, 8, 1),
        (12, 64, 32),
        (25, 33, 17),
        (24, 95, 40),
    ];

    /// Runs `product` on strided operands of every shape and checks `dst` (which starts at
    /// `start` where `acc`) against the sum in f64.
    fn check(
        name: &str,
        acc: bool,
        product: impl Fn(*mut f32, usize, &[f32], usize, &[f32], usize, usize, usize, usize),
    ) {
        for &(m, n, k) in &SHAPES {
            let (a_rs, b_rs, d_rs) = (k + 3, n + 5, n + 2);
            let a = noise(m * a_rs, 11);
            let b = noise(k * b_rs, 12);
            let start = noise(m * d_rs, 13);
            let mut d = if acc {
                start.clone()
            } else {
                vec![f32::NAN; m * d_rs]
            };
            product(d.as_mut_ptr(), d_rs, &a, a_rs, &b, b_rs, m, n, k);
            for i in 0..m {
                for j in 0..n {
                    let base = if acc { start[i * d_rs + j] as f64 } else { 0.0 };
                    let want: f64 = base
                        + (0..k)
                            .map(|l| a[i * a_rs + l] as f64 * b[l * b_rs + j] as f64)
                            .sum::<f64>();
                    let got = d[i * d_rs + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{name} {m}×{n}×{k} at ({i}, {j}): {got} against {want}"
                    );
                }
                // The padding between rows is left alone.
                for j in n..d_rs {
                    let before = if acc { start[i * d_rs + j] } else { f32::NAN };
                    assert!(
                        d[i * d_rs + j].to_bits() == before.to_bits(),
                        "{name} {m}×{n}×{k}: wrote past column {n} of row {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_products_match_a_plain_loop_with_strides_and_edges() {
        // SAFETY (every closure): the operands are live buffers of the stated strides.
        check(
            "gemm_into",
            false,
            |d, d_rs, a, a_rs, b, b_rs, m, n, k| unsafe {
                gemm_into(d, d_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs, m, n, k)
            },
        );
        check(
            "gemm_portable",
            false,
            |d, d_rs, a, a_rs, b, b_rs, m, n, k| unsafe {
                gemm_portable(d, d_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs, m, n, k)
            },
        );
        for parallel in [false, true] {
            // gemm_acc takes `a` packed (row stride k).
            check("gemm_acc", true, |d, d_rs, a, a_rs, b, b_rs, m, n, k| {
                let packed: Vec<f32> = (0..m)
                    .flat_map(|i| a[i * a_rs..i * a_rs + k].to_vec())
                    .collect();
                // SAFETY: as above; `packed` is m×k.
                unsafe { gemm_acc(d, d_rs, &packed, b.as_ptr(), b_rs, m, n, k, parallel) }
            });
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_simd_product_matches_a_plain_loop_where_the_cpu_has_it() {
        let mut ran = Vec::new();
        if avx2::available() {
            check("avx2", false, |d, d_rs, a, a_rs, b, b_rs, m, n, k| unsafe {
                avx2::gemm(d, d_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs, m, n, k)
            });
            ran.push("avx2");
        }
        if avx512::available() {
            check(
                "avx512",
                false,
                |d, d_rs, a, a_rs, b, b_rs, m, n, k| unsafe {
                    avx512::gemm::<false>(d, d_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs, m, n, k)
                },
            );
            check(
                "avx512 acc",
                true,
                |d, d_rs, a, a_rs, b, b_rs, m, n, k| unsafe {
                    avx512::gemm::<true>(d, d_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs, m, n, k)
                },
            );
            ran.push("avx512");
        }
        eprintln!("SIMD products checked on this CPU: {ran:?}");
    }
}
