//! The tokenizer's "same" convolutions (k×k, stride 1, padding k/2, with bias) for training on
//! the CPU backend, with a backward pass of their own.
//!
//! burn-flex computes a convolution's gradients through a transposed convolution (for the input)
//! and a convolution with batch and channels swapped (for the weights), whose layout conversions
//! and serial scatter loops cost about five times the forward pass. Here the forward pass is the
//! inference path's convolution (`kernels::conv`: Winograd F(4×4, 3×3) or im2col, by shape) and
//! both gradients one matrix product per image over the image's column matrix (the same im2col),
//! in the `gemm` crate that burn-flex itself uses:
//!
//! - output:          `Y = conv(X)`                        (`kernels::conv::conv2d_raw`)
//! - weight gradient: `dW = Σ_b dY[b] · cols(X[b])ᵀ`
//! - input gradient:  `dX[b] = col2im(Wᵀ · dY[b])`
//!
//! The arithmetic is the convolution's own; only the order of summation differs from burn's
//! (the tests compare both to 1e-5). [`try_conv2d`] applies it only where it is exact for the
//! module and the backend is `Autodiff<Flex>`; everywhere else the module's own forward runs.
//!
//! Measured (`cargo bench -p llamagen --features train --bench train_conv`): forward + backward
//! of the demo tokenizer's convolution shapes about 1.6× faster than burn-flex's; `train-vq` at
//! the demo settings 0.93–1.06 steps/s against 0.68 (release builds).

use std::any::Any;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};

use crate::kernels::conv::{ConvShape, conv2d_raw, im2col_rows};

type Ad = burn::backend::Autodiff<Flex>;

/// Geometry of one convolution: `[batch, channels, h, w]` in, `[out, channels, k, k]` weights.
#[derive(Clone, Copy, Debug)]
struct Geom {
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
}

impl Geom {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the column matrix: `C·k²`.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }
}

impl Geom {
    /// The same convolution as `kernels::conv` describes it: stride 1, padding k/2 all round.
    fn shape(&self) -> ConvShape {
        ConvShape {
            batch: self.batch,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            k: self.k,
            stride: 1,
            pad: [self.k / 2; 4],
        }
    }
}

/// `cols[(c·k + ky)·k + kx][y·w + x] = x[c][y + ky − p][x + kx − p]`, zero outside the image:
/// the inference path's column matrix, over all rows.
fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    im2col_rows(x, &g.shape(), 0, g.h, cols);
}

/// The adjoint of [`im2col`]: adds each column-matrix entry back to the pixel it was read from.
fn col2im_add(cols: &[f32], g: &Geom, x: &mut [f32]) {
    let (h, w, k, p) = (g.h, g.w, g.k, (g.k / 2) as isize);
    for ci in 0..g.c {
        let plane = &mut x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * h * w..][..h * w];
                let off = kx as isize - p;
                let x0 = (-off).max(0) as usize;
                let x1 = (w as isize - off).min(w as isize).max(x0 as isize) as usize;
                for y in 0..h {
                    let sy = y as isize + ky as isize - p;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    let s0 = (x0 as isize + off) as usize;
                    let dst = &mut plane[sy as usize * w + s0..][..x1 - x0];
                    let src = &row[y * w + x0..y * w + x1];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// A row-major matrix view: `rows × cols` with element `(i, j)` at `i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst[m×n] (row-major, contiguous) = (accumulate ? dst : 0) + a[m×k] · b[k×n]`.
fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, a: Mat, b: Mat, accumulate: bool) {
    assert!(dst.len() >= m * n);
    let parallelism = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the callers pass views whose every (i, j) with i < m / k and j < k / n lies in a
    // live slice of the stated shape; dst holds m·n elements (asserted above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn row_major(s: &[f32], cols: usize) -> Mat {
    Mat {
        ptr: s.as_ptr(),
        rs: cols as isize,
        cs: 1,
    }
}

/// The transpose of a row-major `rows × cols` slice, as a `cols × rows` view.
fn transposed(s: &[f32], cols: usize) -> Mat {
    Mat {
        ptr: s.as_ptr(),
        rs: 1,
        cs: cols as isize,
    }
}

/// The column matrix of image `b` (`k = 1`: the image itself).
fn cols_of<'a>(x: &'a [f32], g: &Geom, b: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let img = &x[b * g.c * g.hw()..(b + 1) * g.c * g.hw()];
    if g.k == 1 {
        return img;
    }
    buf.resize(g.kk() * g.hw(), 0.0);
    im2col(img, g, buf);
    buf
}

/// The forward pass is the inference path's convolution (Winograd or im2col, by shape).
fn forward_raw(x: &[f32], w: &[f32], bias: &[f32], g: &Geom) -> Vec<f32> {
    conv2d_raw(x, &g.shape(), w, Some(bias), None)
}

/// Gradients of input, weight and bias for the output gradient `dy`.
fn backward_raw(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Geom,
    want_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (hw, kk) = (g.hw(), g.kk());
    let mut dw = vec![0.0f32; g.o * kk];
    let mut db = vec![0.0f32; g.o];
    let mut dx = want_x.then(|| vec![0.0f32; g.batch * g.c * hw]);
    let mut buf = Vec::new();
    let mut dcols = Vec::new();
    for b in 0..g.batch {
        let dyb = &dy[b * g.o * hw..(b + 1) * g.o * hw];
        for (o, row) in dyb.chunks(hw).enumerate() {
            db[o] += row.iter().sum::<f32>();
        }
        let cols = cols_of(x, g, b, &mut buf);
        matmul(
            &mut dw,
            g.o,
            kk,
            hw,
            row_major(dyb, hw),
            transposed(cols, hw),
            b > 0,
        );
        if let Some(dx) = dx.as_mut() {
            let dxb = &mut dx[b * g.c * hw..(b + 1) * g.c * hw];
            // With k = 1 the column matrix is the image itself: its gradient is the input's.
            let dcols_b: &mut [f32] = if g.k == 1 {
                &mut *dxb
            } else {
                dcols.resize(kk * hw, 0.0);
                &mut dcols
            };
            matmul(
                dcols_b,
                kk,
                hw,
                g.o,
                transposed(w, kk),
                row_major(dyb, hw),
                false,
            );
            if g.k > 1 {
                col2im_add(&dcols, g, dxb);
            }
        }
    }
    (dx, dw, db)
}

/// The values of a tensor made contiguous (`to_contiguous` copies only strided views), read in
/// place.
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor (the CPU backend's float type)")
}

fn from_vec(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape.to_vec()))
}

#[derive(Debug)]
struct SameConvBackward;

impl Backward<Flex, 3> for SameConvBackward {
    /// Input and weight (contiguous), geometry.
    type State = (FlexTensor, FlexTensor, Geom);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w, g) = ops.state;
        let dy = dy.to_contiguous();
        let (dx, dw, db) = backward_raw(f32s(&x), f32s(&w), f32s(&dy), &g, node_x.is_some());
        let register = |grads: &mut Gradients, id: NodeId, v: Vec<f32>, shape: &[usize]| {
            grads.register::<Flex>(id, from_vec(v, shape));
        };
        if let (Some(node), Some(dx)) = (node_x, dx) {
            register(grads, node.id, dx, &[g.batch, g.c, g.h, g.w]);
        }
        if let Some(node) = node_w {
            register(grads, node.id, dw, &[g.o, g.c, g.k, g.k]);
        }
        if let Some(node) = node_b {
            register(grads, node.id, db, &[g.o]);
        }
    }
}

/// The convolution on `Autodiff<Flex>` tensors.
fn same_conv(x: Tensor<Ad, 4>, w: Tensor<Ad, 4>, bias: Tensor<Ad, 1>) -> Tensor<Ad, 4> {
    let [batch, c, h, wd] = x.dims();
    let [o, _, k, _] = w.dims();
    let g = Geom {
        batch,
        c,
        h,
        w: wd,
        o,
        k,
    };
    let (x, w, bias) = (
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    let xs = x.primitive.to_contiguous();
    let ws = w.primitive.to_contiguous();
    let bs = bias.primitive.to_contiguous();
    let y = forward_raw(f32s(&xs), f32s(&ws), f32s(&bs), &g);
    let y = from_vec(y, &[batch, o, h, wd]);
    let out = match SameConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xs, ws, g), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Whether `conv` is a "same" convolution this module computes exactly.
fn is_same_conv<B: Backend>(conv: &Conv2d<B>) -> bool {
    let [k0, k1] = conv.kernel_size;
    let p = k0 / 2;
    let padded = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r] == [p; 4],
        PaddingConfig2d::Valid => p == 0,
        PaddingConfig2d::Same => true,
    };
    k0 == k1
        && k0 % 2 == 1
        && padded
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.bias.is_some()
}

/// `conv(x)` through `same_conv` when `B` is `Autodiff<Flex>` and `conv` a "same"
/// convolution with bias; `None` otherwise (the caller runs the module's own forward).
pub fn try_conv2d<B: Backend>(conv: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Ad>() || !is_same_conv(conv) {
        return None;
    }
    let x = (x as &dyn Any).downcast_ref::<Tensor<Ad, 4>>()?.clone();
    let w = conv.weight.val();
    let w = (&w as &dyn Any).downcast_ref::<Tensor<Ad, 4>>()?.clone();
    let bias = conv.bias.as_ref()?.val();
    let bias = (&bias as &dyn Any).downcast_ref::<Tensor<Ad, 1>>()?.clone();
    let y: Box<dyn Any> = Box::new(same_conv(x, w, bias));
    y.downcast::<Tensor<B, 4>>().ok().map(|y| *y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    fn max_rel(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar().max(1e-6);
        (a - b).abs().max().into_scalar() / scale
    }

    /// Output and all three gradients agree with burn's own convolution, for 3×3 and 1×1
    /// kernels, narrow and odd-sized images and a batch of more than one.
    #[test]
    fn same_conv_matches_burns_convolution_and_its_gradients() {
        let dev = Default::default();
        for &(batch, c, o, h, w, k) in &[
            (2, 3, 5, 7, 6, 3),
            (3, 4, 4, 5, 9, 1),
            (2, 8, 6, 4, 4, 3),
            (1, 2, 3, 1, 5, 3),
            // Large enough for the forward pass to take Winograd's path.
            (2, 16, 5, 24, 24, 3),
        ] {
            let conv = Conv2dConfig::new([c, o], [k, k])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .init::<Ad>(&dev);
            assert!(is_same_conv(&conv));
            let x = Tensor::<Ad, 4>::random([batch, c, h, w], Distribution::Normal(0.0, 1.0), &dev)
                .require_grad();
            // A weighting that makes every output element's gradient different.
            let r = Tensor::<Ad, 4>::random([batch, o, h, w], Distribution::Normal(0.0, 1.0), &dev);

            let want = conv.forward(x.clone());
            let g_want = (want.clone() * r.clone()).sum().backward();
            let got = try_conv2d(&conv, &x).expect("Autodiff<Flex> and a same conv");
            let g_got = (got.clone() * r).sum().backward();

            assert!(
                max_rel(got.inner(), want.inner()) < 1e-5,
                "output {batch} {c} {o} {h} {w} {k}"
            );
            let dx = max_rel(x.grad(&g_got).unwrap(), x.grad(&g_want).unwrap());
            let dw = max_rel(
                conv.weight.grad(&g_got).unwrap(),
                conv.weight.grad(&g_want).unwrap(),
            );
            let b = conv.bias.as_ref().unwrap();
            let (db_got, db_want) = (b.grad(&g_got).unwrap(), b.grad(&g_want).unwrap());
            let db = (db_got - db_want.clone()).abs().max().into_scalar()
                / db_want.abs().max().into_scalar().max(1e-6);
            assert!(
                dx < 1e-5 && dw < 1e-5 && db < 1e-5,
                "grads {dx} {dw} {db} for {batch} {c} {o} {h} {w} {k}"
            );
        }
    }

    /// Strided, unpadded and bias-free convolutions, and other backends, are left to burn.
    #[test]
    fn only_same_convolutions_on_the_cpu_autodiff_backend_take_this_path() {
        let dev = Default::default();
        let x = Tensor::<Ad, 4>::zeros([1, 2, 4, 4], &dev);
        let strided = Conv2dConfig::new([2, 2], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<Ad>(&dev);
        let unpadded = Conv2dConfig::new([2, 2], [3, 3]).init::<Ad>(&dev);
        let no_bias = Conv2dConfig::new([2, 2], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init::<Ad>(&dev);
        assert!(try_conv2d(&strided, &x).is_none());
        assert!(try_conv2d(&unpadded, &x).is_none());
        assert!(try_conv2d(&no_bias, &x).is_none());
        let plain = Conv2dConfig::new([2, 2], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<Flex>(&dev);
        assert!(try_conv2d(&plain, &Tensor::<Flex, 4>::zeros([1, 2, 4, 4], &dev)).is_none());
    }
}
