//! LPIPS, the learned perceptual distance the tokenizer is trained with (official
//! `tokenizer/tokenizer_image/lpips.py`, a stripped copy of richzhang/PerceptualSimilarity with
//! the VGG16 backbone).
//!
//! `d(x, y) = Σ_k mean_hw( lin_k( (n(φ_k(s(x))) − n(φ_k(s(y))))² ) )`, where
//! - `s` is the ScalingLayer `(x − shift) / scale` (inputs are images in [−1, 1]),
//! - `φ_k` are the five VGG16 taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of torchvision's
//!   `vgg16().features` (3×3 convolutions with ReLU, 2×2 max-pools between the stages),
//! - `n` normalises every position to unit length over the channels, `x / (‖x‖₂ + 1e-10)`,
//! - `lin_k` is a 1×1 convolution to one channel without bias (its dropout is inactive: the
//!   official `VQLoss` holds `LPIPS().eval()`).
//!
//! Weights come from two files, read under their official names: torchvision's
//! `vgg16-397923af.pth` (`features.{i}.weight` / `.bias`; the classifier is ignored) and LPIPS's
//! `vgg.pth` (`lin{k}.model.1.weight`). Both may also be given as `.safetensors`.
//!
//! **Frozen.** As in the official code (`param.requires_grad = False`), LPIPS is never trained:
//! [`Lpips::load`] returns the module with [`Module::no_grad`] applied, so on an autodiff backend
//! none of its parameters is tracked; gradients still flow *through* it to the images, which is
//! what the perceptual loss needs. Keep it out of every optimiser (it is not part of the
//! tokenizer or discriminator modules, so it is not, unless put there).

use std::path::Path;

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;

use crate::checkpoint::{StateDict, Weights, WeightsChoice};
use crate::config::{EntryKind, TensorSpec};
use crate::error::CheckpointError;

/// ScalingLayer constants of LPIPS.
pub const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
pub const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Widths of the five taps.
pub const TAP_CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];
/// Indices of the convolutions in torchvision's `vgg16().features` (each followed by a ReLU)
/// that LPIPS uses (everything up to relu5_3, index 29).
pub const VGG_CONV_INDICES: [usize; 13] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
/// Convolutions per stage; a 2×2 max-pool precedes every stage but the first, and each stage
/// ends in one tap.
const STAGE_CONVS: [usize; 5] = [2, 2, 3, 3, 3];
const EPS: f64 = 1e-10;

/// `(c_in, c_out)` of every VGG16 convolution used, in order.
fn vgg_widths() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut c_in = 3;
    for (stage, &n) in STAGE_CONVS.iter().enumerate() {
        for _ in 0..n {
            v.push((c_in, TAP_CHANNELS[stage]));
            c_in = TAP_CHANNELS[stage];
        }
    }
    v
}

/// The VGG16 entries LPIPS needs from torchvision's checkpoint (`features.{i}.weight/bias`).
pub fn vgg_specs() -> Vec<TensorSpec> {
    let mut v = Vec::new();
    for (&i, (c_in, c_out)) in VGG_CONV_INDICES.iter().zip(vgg_widths()) {
        v.push(TensorSpec {
            name: format!("features.{i}.weight"),
            shape: vec![c_out, c_in, 3, 3],
            kind: EntryKind::Parameter,
        });
        v.push(TensorSpec {
            name: format!("features.{i}.bias"),
            shape: vec![c_out],
            kind: EntryKind::Parameter,
        });
    }
    v
}

/// The entries of LPIPS's `vgg.pth`: `lin{k}.model.1.weight` `[1, C_k, 1, 1]`.
pub fn lin_specs() -> Vec<TensorSpec> {
    TAP_CHANNELS
        .iter()
        .enumerate()
        .map(|(k, &c)| TensorSpec {
            name: format!("lin{k}.model.1.weight"),
            shape: vec![1, c, 1, 1],
            kind: EntryKind::Parameter,
        })
        .collect()
}

/// The LPIPS (VGG) perceptual distance. Frozen; see the module documentation.
#[derive(Module, Debug)]
pub struct Lpips<B: Backend> {
    /// The 13 VGG16 convolutions (3×3, padding 1), in order.
    pub features: Vec<Conv2d<B>>,
    /// The 1×1 heads, one per tap.
    pub lins: Vec<Conv2d<B>>,
    /// Convolutions per stage (VGG16: 2, 2, 3, 3, 3); a 2×2 max-pool precedes every stage but
    /// the first, and each stage ends in one tap.
    #[module(skip)]
    pub stage_convs: Vec<usize>,
    /// Whether the inputs pass through LPIPS's ScalingLayer first (VGG16 expects
    /// ImageNet-normalised inputs; a network trained on [−1, 1] images does not).
    #[module(skip)]
    pub scaling: bool,
}

/// Checks `specs`, tolerating entries the official loader ignores too (torchvision's classifier,
/// anything else in a `strict=False` load).
fn check_present(sd: &StateDict, specs: &[TensorSpec]) -> Result<(), CheckpointError> {
    let mut report = sd.check(specs);
    report.unexpected.clear();
    report.into_result()
}

impl<B: Backend> Lpips<B> {
    /// Reads torchvision's VGG16 checkpoint (`vgg16-397923af.pth`) and LPIPS's head weights
    /// (`vgg.pth`), `.pt` or `.safetensors`. The result is frozen ([`Module::no_grad`]).
    pub fn load(
        vgg_path: impl AsRef<Path>,
        lin_path: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let vgg = StateDict::open(vgg_path, WeightsChoice::Model)?;
        let lin = StateDict::open(lin_path, WeightsChoice::Model)?;
        Self::from_state_dicts(&vgg, &lin, device)
    }

    /// [`Lpips::load`] from state dicts already read.
    pub fn from_state_dicts(
        vgg: &StateDict,
        lin: &StateDict,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        check_present(vgg, &vgg_specs())?;
        check_present(lin, &lin_specs())?;
        let wv = Weights::<B>::new(vgg, device);
        let features = VGG_CONV_INDICES
            .iter()
            .zip(vgg_widths())
            .map(|(&i, (c_in, c_out))| wv.conv2d(&format!("features.{i}"), c_in, c_out, 3, 1, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let wl = Weights::<B>::new(lin, device);
        let lins = TAP_CHANNELS
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                Ok(head(
                    wl.tensor(&format!("lin{k}.model.1.weight"), [1, c, 1, 1])?,
                ))
            })
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        Ok(Self {
            features,
            lins,
            stage_convs: STAGE_CONVS.to_vec(),
            scaling: true,
        }
        .no_grad())
    }

    /// The same distance over another VGG-style backbone (3×3 convolutions with ReLU, stages
    /// separated by 2×2 max-pools, one tap at the end of each stage), with every channel weighted
    /// one (LPIPS's uncalibrated `lpips=False` variant) and no ScalingLayer: the backbone takes
    /// images in [−1, 1]. Frozen like [`Lpips::load`]'s result.
    pub fn from_backbone(features: Vec<Conv2d<B>>, stage_convs: Vec<usize>) -> Self {
        assert_eq!(
            features.len(),
            stage_convs.iter().sum::<usize>(),
            "one convolution per stage slot"
        );
        let mut ends = Vec::new();
        let mut i = 0;
        for &n in &stage_convs {
            i += n;
            ends.push(&features[i - 1]);
        }
        let lins = ends
            .into_iter()
            .map(|conv| {
                let c = conv.weight.dims()[0];
                head(Tensor::ones([1, c, 1, 1], &conv.weight.device()))
            })
            .collect();
        Self {
            features,
            lins,
            stage_convs,
            scaling: false,
        }
        .no_grad()
    }

    /// The taps of the (scaled) images: for VGG16, relu1_2 … relu5_3.
    pub fn taps(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let device = x.device();
        let mut h = if self.scaling {
            let shift = Tensor::<B, 1>::from_floats(SHIFT, &device).reshape([1, 3, 1, 1]);
            let scale = Tensor::<B, 1>::from_floats(SCALE, &device).reshape([1, 3, 1, 1]);
            (x - shift) / scale
        } else {
            x
        };
        let mut convs = self.features.iter();
        let mut taps = Vec::with_capacity(self.stage_convs.len());
        for (stage, &n) in self.stage_convs.iter().enumerate() {
            if stage > 0 {
                h = max_pool2d(h, [2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            for conv in convs.by_ref().take(n) {
                h = relu(crate::vq::blocks::conv(conv, h));
            }
            taps.push(h.clone());
        }
        taps
    }

    /// Per-sample distance `[B]` between two image batches `[B, 3, H, W]` in [−1, 1] (the
    /// official module returns it as `[B, 1, 1, 1]`; `vq_loss.py` then takes the mean).
    pub fn forward(&self, input: Tensor<B, 4>, target: Tensor<B, 4>) -> Tensor<B, 1> {
        let b = input.dims()[0];
        // One pass for both batches: the network has no batch-dependent layers.
        let taps = self.taps(Tensor::cat(vec![input, target], 0));
        let mut total: Option<Tensor<B, 1>> = None;
        for (tap, lin) in taps.into_iter().zip(&self.lins) {
            let n = unit_normalise(tap);
            let [_, c, h, w] = n.dims();
            let f0 = n.clone().slice([0..b, 0..c, 0..h, 0..w]);
            let f1 = n.slice([b..2 * b, 0..c, 0..h, 0..w]);
            let d = lin
                .forward((f0 - f1).square())
                .mean_dims(&[2, 3])
                .reshape([b]);
            total = Some(match total {
                Some(t) => t + d,
                None => d,
            });
        }
        total.expect("at least one tap")
    }
}

/// A 1×1 convolution to one channel without bias: LPIPS's per-tap head, weight `[1, C, 1, 1]`.
fn head<B: Backend>(weight: Tensor<B, 4>) -> Conv2d<B> {
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: None,
        stride: [1, 1],
        kernel_size: [1, 1],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Valid,
    }
}

/// `x / (sqrt(Σ_c x²) + 1e-10)` at every position (official `normalize_tensor`).
fn unit_normalise<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / (norm + EPS)
}
