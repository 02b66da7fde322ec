//! The image tokenizer's layers on the CPU, on f32 `[batch, channels, h, w]` slices:
//! convolutions, GroupNorm fused with SiLU, and nearest ×2 upsampling.
//!
//! - **3×3, stride 1, padding 1** (most of the tokenizer's arithmetic), on images of at least
//!   8×8 and 32×32 outputs a batch: Winograd's F(4×4, 3×3) (Lavin & Gray 2016, points 0, ±1,
//!   ±2, ∞). Each 6×6 input tile and each 3×3 kernel are transformed once; the 36 products of
//!   transformed values are 36 matrix products `[out, in] · [in, tiles]`, 4× fewer
//!   multiplications than the direct convolution, then each 6×6 result is folded back into a
//!   4×4 output. The transforms' constants are small (¼ … 8), so the result stays within a few
//!   f32 roundings of the convolution's (the parity suite: 8e-6 on the reference tokenizers).
//! - **Every other shape** (1×1, the encoder's stride-2 3×3 with its one-sided padding, and small
//!   images where the transforms do not pay): the column matrix of a band of output rows (im2col)
//!   times the weights, `[out, in·k²] · [in·k², pixels]`.
//!
//! The products are those of `kernels/matmul.rs` (AVX-512, AVX2 + FMA or the `gemm` crate,
//! chosen at run time); the Winograd path is in `kernels/winograd.rs`. Work is split into bands
//! of output rows of one image, spread over the current rayon pool, each band's products on its
//! own thread; a band's buffers stay within a few MB, so the working set does not grow with the
//! image. Bias and an optional residual are added where the output is written.
//!
//! [`group_norm_raw`] normalises each (image, group) in two passes and applies the affine scale and,
//! optionally, SiLU in a third, with an exponential written to vectorise.
//!
//! The tensor-level entry points ([`conv2d`], [`group_norm_silu`], [`upsample_nearest_2x`])
//! take burn tensors and answer `None` unless the backend is the CPU's (burn-flex, without
//! autodiff) and the tensors are f32; the caller then runs burn's own operations.

use std::any::{Any, TypeId};

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::{Bytes, DType, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::matmul::gemm_acc;

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    /// Input channels.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel side.
    pub k: usize,
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub pad: [usize; 4],
}

impl ConvShape {
    pub fn out_h(&self) -> usize {
        (self.h + self.pad[0] + self.pad[2] - self.k) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + self.pad[1] + self.pad[3] - self.k) / self.stride + 1
    }

    fn valid(&self) -> bool {
        self.k >= 1
            && self.stride >= 1
            && self.h + self.pad[0] + self.pad[2] >= self.k
            && self.w + self.pad[1] + self.pad[3] >= self.k
    }

    fn winograd(&self) -> bool {
        self.k == 3
            && self.stride == 1
            && self.pad == [1; 4]
            && self.h >= 8
            && self.w >= 8
            // Few input channels (an RGB image): the transformed tiles cost more than the
            // products they save.
            && self.c >= 16
            // Below 32×32 outputs the transforms of the weights cost more than they save.
            && self.batch * self.h * self.w >= 1024
    }
}

/// A pointer the bands of one output share; each band writes rows no other band writes.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own output rows), and the buffer
// outlives the parallel loop that uses it.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so that closures capture the whole `Out`, which is `Sync`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// A new buffer of `len` floats, written by `fill` through the pointer it is given, without
/// zeroing it first (a layer's output is tens of MB; zeroing it cost about a tenth of a VQ-16
/// decode once freed memory was reused).
///
/// # Safety
/// `fill` must write every one of the `len` elements, and read none it has not written.
unsafe fn filled(len: usize, fill: impl FnOnce(Out)) -> Vec<f32> {
    let mut buf: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity is `len`.
    unsafe { buf.set_len(len) };
    fill(Out(buf.as_mut_ptr().cast()));
    let mut buf = std::mem::ManuallyDrop::new(buf);
    // SAFETY: every element was written (the caller's contract); the same allocation, length
    // and capacity, and `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast(), buf.len(), buf.capacity()) }
}

/// `y = conv(x) + bias (+ add)`: `x` `[batch, c, h, w]`, `w` `[o, c, k, k]` (PyTorch's layout),
/// `bias` `[o]`, `add` shaped as the output.
pub fn conv2d_raw(
    x: &[f32],
    s: &ConvShape,
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
) -> Vec<f32> {
    assert!(s.valid(), "convolution shape {s:?}");
    assert_eq!(x.len(), s.batch * s.c * s.h * s.w);
    assert_eq!(w.len(), s.o * s.c * s.k * s.k);
    let (oh, ow) = (s.out_h(), s.out_w());
    let len = s.batch * s.o * oh * ow;
    if let Some(a) = add {
        assert_eq!(a.len(), len);
    }
    // Both paths write every output element (Winograd's output transform, or the bias and
    // shortcut before the products accumulate), so the buffer is not zeroed first.
    // SAFETY: as said.
    unsafe {
        filled(len, |out| {
            if s.winograd() {
                winograd(x, s, w, bias, add, out);
            } else {
                direct(x, s, w, bias, add, out);
            }
        })
    }
}

/// Fills rows `[r0, r1)` of every output channel of image `b` with bias + add.
#[allow(clippy::too_many_arguments)]
fn prefill(
    y: Out,
    b: usize,
    o: usize,
    plane: usize,
    span: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
) {
    for oc in 0..o {
        let at = (b * o + oc) * plane;
        // SAFETY: `span` lies within one plane of the output; this task owns those rows.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(y.ptr().add(at + span.start), span.len()) };
        let base = bias.map_or(0.0, |bs| bs[oc]);
        match add {
            Some(a) => {
                for (d, a) in dst.iter_mut().zip(&a[at + span.start..at + span.end]) {
                    *d = base + a;
                }
            }
            None => dst.fill(base),
        }
    }
}

/// Output rows per band so that a band's column matrix stays near `budget` floats.
fn band_rows(per_row: usize, rows: usize, budget: usize) -> usize {
    (budget / per_row.max(1)).clamp(1, rows.max(1))
}

/// im2col + one product per band of output rows.
fn direct(
    x: &[f32],
    s: &ConvShape,
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    out: Out,
) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let plane = oh * ow;
    let kk = s.c * s.k * s.k;
    let one_by_one = s.k == 1 && s.stride == 1 && s.pad == [0; 4];
    // Few bands: let the product split itself over the cores instead.
    let rows = band_rows(kk * ow, oh, 1 << 18);
    let bands = oh.div_ceil(rows);
    let parallel_inside = s.batch * bands < 2 * rayon::current_num_threads();
    let rows = if parallel_inside { oh } else { rows };
    let bands = oh.div_ceil(rows);
    let task = |(b, band): (usize, usize), cols: &mut Vec<f32>| {
        let r0 = band * rows;
        let r1 = (r0 + rows).min(oh);
        let span = r0 * ow..r1 * ow;
        prefill(out, b, s.o, plane, span.clone(), bias, add);
        let img = &x[b * s.c * s.h * s.w..(b + 1) * s.c * s.h * s.w];
        let (src, src_rs) = if one_by_one {
            (img[span.start..].as_ptr(), s.h * s.w)
        } else {
            cols.resize(kk * span.len(), 0.0);
            im2col_rows(img, s, r0, r1, cols);
            (cols.as_ptr(), span.len())
        };
        // SAFETY: the destination is rows r0..r1 of every output channel of image b (row stride
        // one plane); the source is `kk` rows of `span.len()` values at stride `src_rs`.
        unsafe {
            gemm_acc(
                out.ptr().add(b * s.o * plane + span.start),
                plane,
                w,
                src,
                src_rs,
                s.o,
                span.len(),
                kk,
                parallel_inside,
            );
        }
    };
    let jobs: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|b| (0..bands).map(move |band| (b, band)))
        .collect();
    if parallel_inside {
        let mut cols = Vec::new();
        for j in jobs {
            task(j, &mut cols);
        }
    } else {
        jobs.into_par_iter()
            .for_each_init(Vec::new, |cols, j| task(j, cols));
    }
}

/// The column matrix of output rows `r0..r1` of one image:
/// `cols[(c·k + ky)·k + kx][(r − r0)·ow + ox] = x[c][r·stride + ky − pt][ox·stride + kx − pl]`,
/// zero outside the image.
pub(crate) fn im2col_rows(img: &[f32], s: &ConvShape, r0: usize, r1: usize, cols: &mut [f32]) {
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let (pt, pl) = (s.pad[0] as isize, s.pad[1] as isize);
    let ow = s.out_w();
    let n = (r1 - r0) * ow;
    for ci in 0..s.c {
        let plane = &img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * n..][..n];
                // Output columns whose input column lies inside the image.
                let off = kx as isize - pl;
                let lo = if off >= 0 {
                    0
                } else {
                    ((-off) as usize).div_ceil(st)
                };
                let hi = if (w as isize) <= off {
                    0
                } else {
                    (((w as isize - off) as usize).div_ceil(st)).min(ow)
                };
                let hi = hi.max(lo);
                for r in r0..r1 {
                    let dst = &mut row[(r - r0) * ow..(r - r0 + 1) * ow];
                    let sy = (r * st) as isize + ky as isize - pt;
                    if sy < 0 || sy >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[sy as usize * w..][..w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if st == 1 {
                        let s0 = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (ox, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[(((lo + ox) * st) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// Defines `$name`, which runs `$inner` (an `#[inline(always)]` function, so that it is compiled
/// into each caller) built for the widest SIMD extension the CPU has: AVX-512F, else AVX2 + FMA,
/// else the baseline.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) => $inner:ident) => {
        $(#[$m])*
        fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn wide($($a: $t),*) {
                    $inner($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn narrow($($a: $t),*) {
                    $inner($($a),*)
                }
                if $crate::kernels::matmul::avx512::available() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked).
                    return unsafe { wide($($a),*) };
                }
                if $crate::kernels::matmul::avx2::available() {
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    return unsafe { narrow($($a),*) };
                }
            }
            $inner($($a),*)
        }
    };
}

#[path = "winograd.rs"]
mod winograd;
use winograd::winograd;

/// GroupNorm of `x` `[batch, c, hw]` with `groups` groups, ε, per-channel scale and shift,
/// then SiLU when `silu`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_raw(
    x: &[f32],
    batch: usize,
    c: usize,
    hw: usize,
    groups: usize,
    eps: f64,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    silu: bool,
) -> Vec<f32> {
    assert!(groups > 0 && c % groups == 0);
    assert_eq!(x.len(), batch * c * hw);
    let per = c / groups;
    let len = per * hw;
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .for_each(|(bg, (dst, src))| {
            let g = bg % groups;
            let mean = src.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = src
                .iter()
                .map(|&v| {
                    let d = v as f64 - mean;
                    d * d
                })
                .sum::<f64>()
                / len as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for ci in 0..per {
                let ch = g * per + ci;
                let scale = gamma.map_or(1.0, |gm| gm[ch] as f64) * inv;
                let shift = beta.map_or(0.0, |bt| bt[ch] as f64) - mean * scale;
                let (d, s) = (
                    &mut dst[ci * hw..(ci + 1) * hw],
                    &src[ci * hw..(ci + 1) * hw],
                );
                affine(d, s, scale as f32, shift as f32, silu);
            }
        });
    y
}

simd_fn!(
    /// `d = s · scale + shift`, then SiLU when `silu`, for the CPU's SIMD.
    fn affine(d: &mut [f32], s: &[f32], scale: f32, shift: f32, silu: bool) => affine_body
);

#[inline(always)]
fn affine_body(d: &mut [f32], s: &[f32], scale: f32, shift: f32, silu: bool) {
    if silu {
        for (d, &s) in d.iter_mut().zip(s) {
            let v = s * scale + shift;
            *d = v / (1.0 + exp(-v));
        }
    } else {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = s * scale + shift;
        }
    }
}

/// `e^x` to about 2 ulp, branch-free so that loops over it vectorise (Cody–Waite reduction to
/// `r ∈ [−ln2/2, ln2/2]`, a degree-6 polynomial, the exponent built in the bits).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    // n = round(x / ln 2) by the 1.5·2²³ trick: the low bits of `t` then hold n itself, so
    // 2ⁿ's exponent field is built from them with integer operations (no float → int
    // conversion, whose saturation would keep the loop scalar).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// Nearest ×2 upsampling of `[planes, h, w]`.
pub fn upsample_nearest_2x_raw(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w);
    let mut y = vec![0.0f32; planes * 4 * h * w];
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (r, row) in src.chunks_exact(w).enumerate() {
                let top = &mut dst[2 * r * 2 * w..(2 * r + 1) * 2 * w];
                for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                let (a, b) = dst[2 * r * 2 * w..(2 * r + 2) * 2 * w].split_at_mut(2 * w);
                b.copy_from_slice(a);
            }
        });
    y
}

// ---- burn tensors ----------------------------------------------------------------------------

fn cast<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .expect("types checked by TypeId")
}

fn on_cpu<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

/// The f32 values of a tensor of the CPU backend, contiguous (copied only if they are not).
fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let t: FlexTensor = cast(t.into_primitive().tensor());
    let t = if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    };
    t.as_slice::<f32>()?;
    Some(t)
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("checked by values()")
}

fn tensor<B: Backend, const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let t = FlexTensor::new(
        Bytes::from_elems(v),
        Layout::contiguous(shape.into()),
        DType::F32,
    );
    Tensor::from_primitive(TensorPrimitive::Float(cast(t)))
}

/// `conv(x) (+ add)` with the module's weights and bias and the given zero padding (top, left,
/// bottom, right), on the CPU backend in f32; `None` elsewhere, or for dilated or grouped
/// convolutions.
pub fn conv2d<B: Backend>(
    conv: &Conv2d<B>,
    x: &Tensor<B, 4>,
    pad: [usize; 4],
    add: Option<&Tensor<B, 4>>,
) -> Option<Tensor<B, 4>> {
    if !on_cpu::<B>() || conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    let [k0, k1] = conv.kernel_size;
    if k0 != k1 || conv.stride[0] != conv.stride[1] {
        return None;
    }
    let [batch, c, h, w] = x.dims();
    let [o, ci, _, _] = conv.weight.dims();
    let s = ConvShape {
        batch,
        c,
        h,
        w,
        o,
        k: k0,
        stride: conv.stride[0],
        pad,
    };
    if ci != c || !s.valid() {
        return None;
    }
    let xs = values(x.clone())?;
    let ws = values(conv.weight.val())?;
    let bs = match &conv.bias {
        Some(b) => Some(values(b.val())?),
        None => None,
    };
    let adds = match add {
        Some(a) => {
            if a.dims() != [batch, o, s.out_h(), s.out_w()] {
                return None;
            }
            Some(values(a.clone())?)
        }
        None => None,
    };
    let y = conv2d_raw(
        slice(&xs),
        &s,
        slice(&ws),
        bs.as_ref().map(slice),
        adds.as_ref().map(slice),
    );
    Some(tensor(y, [batch, o, s.out_h(), s.out_w()]))
}

/// The module's own padding as (top, left, bottom, right), where it is explicit.
pub fn explicit_padding<B: Backend>(conv: &Conv2d<B>) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => Some([t, l, b, r]),
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Same => None,
    }
}

/// GroupNorm (then SiLU when `silu`) on the CPU backend in f32; `None` elsewhere.
pub fn group_norm_silu<B: Backend>(
    norm: &GroupNorm<B>,
    x: &Tensor<B, 4>,
    silu: bool,
) -> Option<Tensor<B, 4>> {
    if !on_cpu::<B>() {
        return None;
    }
    let [b, c, h, w] = x.dims();
    if norm.num_channels != c || c % norm.num_groups != 0 {
        return None;
    }
    let xs = values(x.clone())?;
    let gamma = match &norm.gamma {
        Some(p) => Some(values(p.val())?),
        None => None,
    };
    let beta = match &norm.beta {
        Some(p) => Some(values(p.val())?),
        None => None,
    };
    let y = group_norm_raw(
        slice(&xs),
        b,
        c,
        h * w,
        norm.num_groups,
        norm.epsilon,
        gamma.as_ref().map(slice),
        beta.as_ref().map(slice),
        silu,
    );
    Some(tensor(y, [b, c, h, w]))
}

/// Nearest ×2 upsampling on the CPU backend in f32; `None` elsewhere.
pub fn upsample_nearest_2x<B: Backend>(x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    if !on_cpu::<B>() {
        return None;
    }
    let [b, c, h, w] = x.dims();
    let xs = values(x.clone())?;
    let y = upsample_nearest_2x_raw(slice(&xs), b * c, h, w);
    Some(tensor(y, [b, c, 2 * h, 2 * w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, in f64.
    fn reference(
        x: &[f32],
        s: &ConvShape,
        w: &[f32],
        bias: &[f32],
        add: Option<&[f32]>,
    ) -> Vec<f32> {
        let (oh, ow) = (s.out_h(), s.out_w());
        let mut y = vec![0.0f32; s.batch * s.o * oh * ow];
        for b in 0..s.batch {
            for o in 0..s.o {
                for r in 0..oh {
                    for q in 0..ow {
                        let mut acc = bias[o] as f64;
                        for c in 0..s.c {
                            for ky in 0..s.k {
                                for kx in 0..s.k {
                                    let iy = (r * s.stride + ky) as isize - s.pad[0] as isize;
                                    let ix = (q * s.stride + kx) as isize - s.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * s.c + c) * s.h + iy as usize) * s.w + ix as usize];
                                    let wv = w[((o * s.c + c) * s.k + ky) * s.k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let i = ((b * s.o + o) * oh + r) * ow + q;
                        y[i] = (acc + add.map_or(0.0, |a| a[i] as f64)) as f32;
                    }
                }
            }
        }
        y
    }

    /// Deterministic values in [−1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_convolution_path_matches_the_definition() {
        let cases = [
            // Winograd: even, odd and narrow images, several bands, a residual.
            (1, 16, 5, 32, 32, 3, 1, [1; 4], true),
            (2, 17, 3, 33, 31, 3, 1, [1; 4], false),
            (3, 16, 2, 17, 40, 3, 1, [1; 4], true),
            // Rows of 16 tiles and more (the transforms' blocks of lanes), and a ragged edge.
            (1, 16, 5, 16, 70, 3, 1, [1; 4], true),
            (1, 17, 3, 20, 131, 3, 1, [1; 4], false),
            // Too few input channels for Winograd: im2col.
            (1, 3, 5, 32, 32, 3, 1, [1; 4], false),
            // Under 8 pixels a side: im2col.
            (40, 3, 4, 6, 7, 3, 1, [1; 4], true),
            // im2col: small 3×3, 1×1, the encoder's stride-2 with one-sided padding, stride 2
            // with symmetric padding.
            (1, 6, 4, 8, 8, 3, 1, [1; 4], true),
            (2, 5, 7, 9, 11, 1, 1, [0; 4], true),
            (2, 3, 4, 16, 16, 3, 2, [0, 0, 1, 1], false),
            (1, 3, 4, 15, 13, 3, 2, [1; 4], false),
            (1, 2, 3, 40, 40, 1, 1, [0; 4], false),
        ];
        for (i, &(batch, c, o, h, w, k, stride, pad, with_add)) in cases.iter().enumerate() {
            let s = ConvShape {
                batch,
                c,
                h,
                w,
                o,
                k,
                stride,
                pad,
            };
            let x = noise(batch * c * h * w, i as u64 + 1);
            let wt = noise(o * c * k * k, i as u64 + 100);
            let bias = noise(o, i as u64 + 200);
            let add = with_add.then(|| noise(batch * o * s.out_h() * s.out_w(), i as u64 + 300));
            let want = reference(&x, &s, &wt, &bias, add.as_deref());
            let got = conv2d_raw(&x, &s, &wt, Some(&bias), add.as_deref());
            assert_eq!(got.len(), want.len(), "case {i}");
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 1e-5 * (c * k * k) as f32,
                "case {i} {s:?}: max error {err}"
            );
        }
    }

    #[test]
    fn group_norm_and_silu_match_the_definition() {
        let (b, c, hw, groups) = (2, 6, 50, 3);
        let x: Vec<f32> = noise(b * c * hw, 7).iter().map(|v| 3.0 * v + 0.5).collect();
        let gamma = noise(c, 8);
        let beta = noise(c, 9);
        for silu in [false, true] {
            let y = group_norm_raw(&x, b, c, hw, groups, 1e-6, Some(&gamma), Some(&beta), silu);
            let per = c / groups;
            for bi in 0..b {
                for g in 0..groups {
                    let at = (bi * c + g * per) * hw;
                    let vals = &x[at..at + per * hw];
                    let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
                    let var = vals.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()
                        / vals.len() as f64;
                    for (j, &v) in vals.iter().enumerate() {
                        let ch = g * per + j / hw;
                        let n = (v as f64 - mean) / (var + 1e-6).sqrt() * gamma[ch] as f64
                            + beta[ch] as f64;
                        let want = if silu { n / (1.0 + (-n).exp()) } else { n };
                        let got = y[at + j] as f64;
                        assert!((got - want).abs() < 1e-5, "{got} vs {want} (silu {silu})");
                    }
                }
            }
        }
    }

    #[test]
    fn the_exponential_is_close_everywhere_it_is_used() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
    }

    #[test]
    fn upsampling_repeats_every_pixel_into_a_square() {
        let x: Vec<f32> = (0..2 * 3 * 5).map(|v| v as f32).collect();
        let y = upsample_nearest_2x_raw(&x, 2, 3, 5);
        for p in 0..2 {
            for r in 0..6 {
                for q in 0..10 {
                    assert_eq!(y[(p * 6 + r) * 10 + q], x[(p * 3 + r / 2) * 5 + q / 2]);
                }
            }
        }
    }
}
