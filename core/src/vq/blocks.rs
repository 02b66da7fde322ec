use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{silu, softmax};

use super::NORM_EPS;
use crate::checkpoint::Weights;
use crate::config::VqConfig;
use crate::error::CheckpointError;

pub(crate) fn norm_init<B: Backend>(c: usize, cfg: &VqConfig, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(cfg.norm_groups, c)
        .with_epsilon(NORM_EPS)
        .init(device)
}

pub(crate) fn norm_load<B: Backend>(
    w: &Weights<B>,
    name: &str,
    c: usize,
    cfg: &VqConfig,
) -> Result<GroupNorm<B>, CheckpointError> {
    w.group_norm(name, cfg.norm_groups, c, NORM_EPS)
}

/// GroupNorm of `[batch, channels, h, w]` with the module's groups, ε and affine parameters:
/// the same arithmetic as `burn::nn::GroupNorm::forward`, arranged so that every broadcast
/// is one value per contiguous row (`[batch·channels, h·w]` against `[batch·channels, 1]`),
/// which the CPU backend runs vectorised forward and backward; a `[1, channels, 1, 1]`
/// scale broadcast over the batch takes its element-by-element path, several times slower.
pub(crate) fn group_norm<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if let Some(y) = crate::kernels::conv::group_norm_silu(norm, &x, false) {
        return y;
    }
    // In half precision the statistics, the normalisation and the affine scale are f32 (as
    // under the official code's autocast); the result returns to the input's type.
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    let grouped = x.reshape([b, g, (c / g) * h * w]);
    let centred = grouped.clone() - grouped.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let normed = (centred / (var + norm.epsilon).sqrt()).reshape([b, c, h * w]);
    let per_row = |p: &Option<burn::module::Param<Tensor<B, 1>>>| {
        p.as_ref()
            .map(|p| p.val().cast(DType::F32).reshape([1, c, 1]).repeat_dim(0, b))
    };
    let out = match (per_row(&norm.gamma), per_row(&norm.beta)) {
        (Some(gamma), Some(beta)) => normed * gamma + beta,
        _ => normed,
    };
    out.reshape([b, c, h, w]).cast(dtype)
}

/// `silu(group_norm(x))`, in one pass over the values on the CPU backend.
pub(crate) fn norm_silu<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if let Some(y) = crate::kernels::conv::group_norm_silu(norm, &x, true) {
        return y;
    }
    silu(group_norm(norm, x))
}

/// `conv(x)`. On the CPU backend (inference) through `kernels::conv` (Winograd for 3×3, im2col
/// + one product per band of rows otherwise); while the tokenizer trains on the CPU backend,
/// "same" convolutions run through `train::cpu_conv`; the result is the same convolution.
pub(crate) fn conv<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    conv_add(conv, x, None)
}

/// `conv(x) + add`, the sum taken where the convolution writes its output on the CPU backend.
pub(crate) fn conv_add<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    add: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if let Some(pad) = crate::kernels::conv::explicit_padding(conv)
        && let Some(y) = crate::kernels::conv::conv2d(conv, &x, pad, add.as_ref())
    {
        return y;
    }
    #[cfg(all(feature = "train", feature = "cpu"))]
    let y = match crate::train::cpu_conv::try_conv2d(conv, &x) {
        Some(y) => y,
        None => conv.forward(x),
    };
    #[cfg(not(all(feature = "train", feature = "cpu")))]
    let y = conv.forward(x);
    match add {
        Some(a) => y + a,
        None => y,
    }
}

pub(crate) fn conv_init<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// norm → swish → 3×3 conv → norm → swish → dropout → 3×3 conv, plus a 1×1 shortcut when the
/// width changes.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub dropout: Dropout,
    pub conv2: Conv2d<B>,
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    pub fn init(cin: usize, cout: usize, cfg: &VqConfig, device: &B::Device) -> Self {
        Self {
            norm1: norm_init(cin, cfg, device),
            conv1: conv_init(cin, cout, 3, 1, 1, device),
            norm2: norm_init(cout, cfg, device),
            dropout: DropoutConfig::new(cfg.dropout_p).init(),
            conv2: conv_init(cout, cout, 3, 1, 1, device),
            nin_shortcut: (cin != cout).then(|| conv_init(cin, cout, 1, 1, 0, device)),
        }
    }

    pub fn load(
        w: &Weights<B>,
        p: &str,
        cin: usize,
        cout: usize,
        cfg: &VqConfig,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            norm1: norm_load(w, &format!("{p}.norm1"), cin, cfg)?,
            conv1: w.conv2d(&format!("{p}.conv1"), cin, cout, 3, 1, 1)?,
            norm2: norm_load(w, &format!("{p}.norm2"), cout, cfg)?,
            dropout: DropoutConfig::new(cfg.dropout_p).init(),
            conv2: w.conv2d(&format!("{p}.conv2"), cout, cout, 3, 1, 1)?,
            nin_shortcut: if cin != cout {
                Some(w.conv2d(&format!("{p}.nin_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = conv(&self.conv1, norm_silu(&self.norm1, x.clone()));
        let x = match &self.nin_shortcut {
            Some(shortcut) => conv(shortcut, x),
            None => x,
        };
        conv_add(
            &self.conv2,
            self.dropout.forward(norm_silu(&self.norm2, h)),
            Some(x),
        )
    }
}

/// Single-head spatial self-attention with 1×1-conv projections.
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    pub norm: GroupNorm<B>,
    pub q: Conv2d<B>,
    pub k: Conv2d<B>,
    pub v: Conv2d<B>,
    pub proj_out: Conv2d<B>,
}

impl<B: Backend> AttnBlock<B> {
    pub fn init(c: usize, cfg: &VqConfig, device: &B::Device) -> Self {
        let conv = || conv_init(c, c, 1, 1, 0, device);
        Self {
            norm: norm_init(c, cfg, device),
            q: conv(),
            k: conv(),
            v: conv(),
            proj_out: conv(),
        }
    }

    pub fn load(
        w: &Weights<B>,
        p: &str,
        c: usize,
        cfg: &VqConfig,
    ) -> Result<Self, CheckpointError> {
        let conv = |n: &str| w.conv2d(&format!("{p}.{n}"), c, c, 1, 1, 0);
        Ok(Self {
            norm: norm_load(w, &format!("{p}.norm"), c, cfg)?,
            q: conv("q")?,
            k: conv("k")?,
            v: conv("v")?,
            proj_out: conv("proj_out")?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = h * w;
        let hn = group_norm(&self.norm, x.clone());
        let q = conv(&self.q, hn.clone()).reshape([b, c, n]).swap_dims(1, 2);
        let k = conv(&self.k, hn.clone()).reshape([b, c, n]);
        let v = conv(&self.v, hn).reshape([b, c, n]);
        // Official scale: int(c) ** -0.5; softmax over the keys. In half precision the
        // queries are scaled before the product (its sums stay well inside f16's range) and the
        // softmax is taken in f32.
        let dtype = x.dtype();
        let scale = (c as f64).powf(-0.5);
        let attn = if dtype == DType::F32 {
            softmax(q.matmul(k) * scale, 2)
        } else {
            softmax((q * scale).matmul(k).cast(DType::F32), 2).cast(dtype)
        };
        let out = v.matmul(attn.swap_dims(1, 2)).reshape([b, c, h, w]);
        conv_add(&self.proj_out, out, Some(x))
    }
}

/// Zero-pad right and bottom by one, then a stride-2 3×3 conv without padding.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample<B> {
    pub fn init(c: usize, device: &B::Device) -> Self {
        Self {
            conv: conv_init(c, c, 3, 2, 0, device),
        }
    }

    pub fn load(w: &Weights<B>, p: &str, c: usize) -> Result<Self, CheckpointError> {
        Ok(Self {
            conv: w.conv2d(&format!("{p}.conv"), c, c, 3, 2, 0)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        #[cfg(feature = "cpu")]
        if let Some(y) = crate::kernels::conv::conv2d(&self.conv, &x, [0, 0, 1, 1], None) {
            return y;
        }
        // Zeros of the input's own float type: burn 0.21's `Tensor::pad` fills a tensor of the
        // default type (f32) and writes an f16 input's bits into it.
        let [b, c, h, w] = x.dims();
        let padded = Tensor::zeros([b, c, h + 1, w + 1], (&x.device(), x.dtype()))
            .slice_assign([0..b, 0..c, 0..h, 0..w], x);
        self.conv.forward(padded)
    }
}

/// Nearest-neighbour ×2 upsampling, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    pub fn init(c: usize, device: &B::Device) -> Self {
        Self {
            conv: conv_init(c, c, 3, 1, 1, device),
        }
    }

    pub fn load(w: &Weights<B>, p: &str, c: usize) -> Result<Self, CheckpointError> {
        Ok(Self {
            conv: w.conv2d(&format!("{p}.conv"), c, c, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv(&self.conv, upsample_nearest_2x(x))
    }
}

/// Exact nearest ×2: every pixel repeated into a 2×2 block.
pub fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if let Some(y) = crate::kernels::conv::upsample_nearest_2x(&x) {
        return y;
    }
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
