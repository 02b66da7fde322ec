//! The PatchGAN discriminator of the tokenizer's adversarial loss (official
//! `tokenizer/tokenizer_image/discriminator_patchgan.py` `NLayerDiscriminator`, taming-transformers
//! style, BatchNorm, no actnorm) and the GAN losses of `vq_loss.py`.
//!
//! Layer layout (the official `nn.Sequential`, whose indices are the state-dict names `main.{i}`):
//!
//! ```text
//! main.0   Conv(input_nc → ndf, k4 s2 p1, bias)       main.1  LeakyReLU(0.2)
//! for n in 1..n_layers:  Conv(k4 s2 p1, no bias) + BatchNorm + LeakyReLU(0.2)
//!          Conv(k4 s1 p1, no bias) + BatchNorm + LeakyReLU(0.2)
//! last     Conv(→ 1, k4 s1 p1, bias)
//! ```
//!
//! with channel multiplier `min(2^n, 8)`. Here the convolutions are `convs[0..=n_layers+1]` and
//! the BatchNorms `norms[0..n_layers]` (belonging to `convs[1..=n_layers]`); [`official_name`]
//! maps those module paths to `main.{i}`.
//!
//! BatchNorm follows PyTorch exactly: in training mode it normalises with the batch mean and the
//! *biased* batch variance and updates the running statistics with momentum 0.1 using the
//! *unbiased* variance; in evaluation mode it uses the running statistics. As everywhere in burn,
//! training mode means "the backend has autodiff enabled" ([`PatchGan::forward`]); the explicit
//! [`PatchGan::forward_train`] / [`PatchGan::forward_eval`] choose the mode regardless of backend.

use burn::module::{Param, RunningState};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::TensorData;
use burn::tensor::activation::{leaky_relu, relu};

use crate::checkpoint::{StateDict, Weights};
use crate::config::{EntryKind, TensorSpec};
use crate::error::{CheckpointError, ConfigError};

/// Negative slope of every LeakyReLU of the discriminator.
pub const LEAKY_SLOPE: f64 = 0.2;
/// PyTorch `BatchNorm2d` defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
const KERNEL: usize = 4;
const PAD: usize = 1;

/// Constructor arguments of the official `NLayerDiscriminator` (`use_actnorm=False`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatchGanConfig {
    pub input_nc: usize,
    pub ndf: usize,
    pub n_layers: usize,
}

impl Default for PatchGanConfig {
    /// The values `vq_loss.py` builds the discriminator with: 3 input channels, 64 filters,
    /// 3 layers.
    fn default() -> Self {
        Self {
            input_nc: 3,
            ndf: 64,
            n_layers: 3,
        }
    }
}

/// One convolution of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    /// Index in the official `nn.Sequential` (`main.{index}`).
    pub index: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub stride: usize,
    pub bias: bool,
    /// Index of its BatchNorm in the Sequential, when followed by one.
    pub norm_index: Option<usize>,
}

impl PatchGanConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.input_nc == 0 || self.ndf == 0 || self.n_layers == 0 {
            return Err(ConfigError::Invalid(format!(
                "PatchGAN needs input_nc, ndf and n_layers ≥ 1 (got {self:?})"
            )));
        }
        Ok(())
    }

    /// The convolutions in order, with their Sequential indices and widths.
    pub fn layers(&self) -> Vec<ConvLayer> {
        let mult = |n: usize| 1usize << n.min(3); // min(2^n, 8)
        let mut v = vec![ConvLayer {
            index: 0,
            c_in: self.input_nc,
            c_out: self.ndf,
            stride: 2,
            bias: true,
            norm_index: None,
        }];
        let mut index = 2; // main.1 is the first LeakyReLU
        for n in 1..=self.n_layers {
            v.push(ConvLayer {
                index,
                c_in: self.ndf * mult(n - 1),
                c_out: self.ndf * mult(n),
                stride: if n < self.n_layers { 2 } else { 1 },
                bias: false,
                norm_index: Some(index + 1),
            });
            index += 3; // conv, norm, LeakyReLU
        }
        v.push(ConvLayer {
            index,
            c_in: self.ndf * mult(self.n_layers),
            c_out: 1,
            stride: 1,
            bias: true,
            norm_index: None,
        });
        v
    }

    /// Every entry of the official state dict, with its shape (`num_batches_tracked` included,
    /// as a 0-d buffer).
    pub fn state_dict_specs(&self) -> Vec<TensorSpec> {
        let spec = |name: String, shape: &[usize], kind| TensorSpec {
            name,
            shape: shape.to_vec(),
            kind,
        };
        let mut v = Vec::new();
        for l in self.layers() {
            let p = format!("main.{}", l.index);
            v.push(spec(
                format!("{p}.weight"),
                &[l.c_out, l.c_in, KERNEL, KERNEL],
                EntryKind::Parameter,
            ));
            if l.bias {
                v.push(spec(format!("{p}.bias"), &[l.c_out], EntryKind::Parameter));
            }
            if let Some(ni) = l.norm_index {
                let p = format!("main.{ni}");
                let c = [l.c_out];
                v.push(spec(format!("{p}.weight"), &c, EntryKind::Parameter));
                v.push(spec(format!("{p}.bias"), &c, EntryKind::Parameter));
                v.push(spec(format!("{p}.running_mean"), &c, EntryKind::Buffer));
                v.push(spec(format!("{p}.running_var"), &c, EntryKind::Buffer));
                v.push(spec(
                    format!("{p}.num_batches_tracked"),
                    &[],
                    EntryKind::Buffer,
                ));
            }
        }
        v
    }

    /// The entries [`PatchGan::load`] requires and [`PatchGan::state_dict`] writes: all but
    /// `num_batches_tracked`, which this port does not count (with momentum 0.1 it has no
    /// effect, and PyTorch's `BatchNorm` fills it in when a state dict without it is loaded).
    pub fn weight_specs(&self) -> Vec<TensorSpec> {
        self.state_dict_specs()
            .into_iter()
            .filter(|s| !s.name.ends_with(".num_batches_tracked"))
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.state_dict_specs()
            .iter()
            .filter(|s| s.kind == EntryKind::Parameter)
            .map(TensorSpec::numel)
            .sum()
    }
}

/// PyTorch `BatchNorm2d` (affine, tracked running statistics), with PyTorch's parameter names.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub epsilon: f64,
    pub momentum: f64,
}

impl<B: Backend> BatchNorm2d<B> {
    /// Official `weights_init`: weight N(1, 0.02), bias 0; running mean 0, var 1.
    pub fn init(c: usize, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::random(
                [c],
                Distribution::Normal(1.0, 0.02),
                device,
            )),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            epsilon: BN_EPS,
            momentum: BN_MOMENTUM,
        }
    }

    pub fn load(w: &Weights<B>, name: &str, c: usize) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: Param::from_tensor(w.tensor(&format!("{name}.weight"), [c])?),
            bias: Param::from_tensor(w.tensor(&format!("{name}.bias"), [c])?),
            running_mean: RunningState::new(w.tensor(&format!("{name}.running_mean"), [c])?),
            running_var: RunningState::new(w.tensor(&format!("{name}.running_var"), [c])?),
            epsilon: BN_EPS,
            momentum: BN_MOMENTUM,
        })
    }

    /// Training mode when the backend records gradients, evaluation mode otherwise.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if B::ad_enabled(&x.device()) {
            self.forward_train(x)
        } else {
            self.forward_eval(x)
        }
    }

    /// Normalises with the running statistics.
    pub fn forward_eval(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let c = x.dims()[1];
        let mean = self
            .running_mean
            .value_sync()
            .to_device(&device)
            .reshape([1, c, 1, 1]);
        let var = self
            .running_var
            .value_sync()
            .to_device(&device)
            .reshape([1, c, 1, 1]);
        self.normalise(x, mean, var)
    }

    /// Normalises with this batch's mean and biased variance, and updates the running
    /// statistics as PyTorch does (`(1 − m)·running + m·batch`, unbiased variance).
    pub fn forward_train(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let [b, c, h, w] = x.dims();
        let n = b * h * w;
        let mean = x.clone().mean_dims(&[0, 2, 3]); // [1, c, 1, 1]
        let var = (x.clone() - mean.clone()).square().mean_dims(&[0, 2, 3]);

        let unbiased = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let m = self.momentum;
        let batch_mean = mean.clone().detach().reshape([c]);
        let batch_var = var.clone().detach().reshape([c]) * unbiased;
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        self.running_mean
            .update((rm * (1.0 - m) + batch_mean * m).detach());
        self.running_var
            .update((rv * (1.0 - m) + batch_var * m).detach());

        self.normalise(x, mean, var)
    }

    /// Folds pending updates into the running statistics. burn's `RunningState` applies an
    /// update lazily (its plain `value()` and module visitors may see the value one update
    /// behind); [`PatchGan::state_dict`] calls this before reading them.
    pub fn sync_running_stats(&self) {
        let _ = self.running_mean.value_sync();
        let _ = self.running_var.value_sync();
    }

    fn normalise(&self, x: Tensor<B, 4>, mean: Tensor<B, 4>, var: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = x.dims()[1];
        let gamma = self.weight.val().reshape([1, c, 1, 1]);
        let beta = self.bias.val().reshape([1, c, 1, 1]);
        (x - mean) / (var + self.epsilon).sqrt() * gamma + beta
    }
}

/// The official `NLayerDiscriminator`: image → patch logits `[B, 1, h, w]`.
#[derive(Module, Debug)]
pub struct PatchGan<B: Backend> {
    /// `n_layers + 2` convolutions, in order.
    pub convs: Vec<Conv2d<B>>,
    /// The BatchNorms after `convs[1..=n_layers]`.
    pub norms: Vec<BatchNorm2d<B>>,
    #[module(skip)]
    pub config: PatchGanConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    Train,
    Eval,
}

impl<B: Backend> PatchGan<B> {
    /// Fresh weights as the official `weights_init`: conv weights N(0, 0.02), conv biases
    /// PyTorch's default U(±1/√fan_in), BatchNorm weight N(1, 0.02) and bias 0.
    pub fn init(cfg: &PatchGanConfig, device: &B::Device) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let layers = cfg.layers();
        let convs = layers
            .iter()
            .map(|l| {
                let mut conv = Conv2dConfig::new([l.c_in, l.c_out], [KERNEL, KERNEL])
                    .with_stride([l.stride, l.stride])
                    .with_padding(PaddingConfig2d::Explicit(PAD, PAD, PAD, PAD))
                    .with_bias(l.bias)
                    .init(device);
                conv.weight = Param::from_tensor(Tensor::random(
                    [l.c_out, l.c_in, KERNEL, KERNEL],
                    Distribution::Normal(0.0, 0.02),
                    device,
                ));
                conv
            })
            .collect();
        let norms = layers
            .iter()
            .filter(|l| l.norm_index.is_some())
            .map(|l| BatchNorm2d::init(l.c_out, device))
            .collect();
        Ok(Self {
            convs,
            norms,
            config: cfg.clone(),
        })
    }

    /// Builds the discriminator from an official state dict after checking every entry
    /// (`num_batches_tracked`, present in official checkpoints, is accepted and ignored).
    pub fn load(
        sd: &StateDict,
        cfg: &PatchGanConfig,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        cfg.validate()?;
        let mut report = sd.check(&cfg.weight_specs());
        report
            .unexpected
            .retain(|k| !k.ends_with(".num_batches_tracked"));
        report.into_result()?;
        let w = Weights::<B>::new(sd, device);
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for l in cfg.layers() {
            let p = format!("main.{}", l.index);
            let weight = w.tensor(&format!("{p}.weight"), [l.c_out, l.c_in, KERNEL, KERNEL])?;
            let bias = if l.bias {
                Some(Param::from_tensor(
                    w.tensor(&format!("{p}.bias"), [l.c_out])?,
                ))
            } else {
                None
            };
            convs.push(Conv2d {
                weight: Param::from_tensor(weight),
                bias,
                stride: [l.stride, l.stride],
                kernel_size: [KERNEL, KERNEL],
                dilation: [1, 1],
                groups: 1,
                padding: PaddingConfig2d::Explicit(PAD, PAD, PAD, PAD),
            });
            if let Some(ni) = l.norm_index {
                norms.push(BatchNorm2d::load(&w, &format!("main.{ni}"), l.c_out)?);
            }
        }
        Ok(Self {
            convs,
            norms,
            config: cfg.clone(),
        })
    }

    /// Patch logits; BatchNorm in training mode when the backend has autodiff enabled (as
    /// `vq_train.py` runs it), with running statistics otherwise.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.run(x, Mode::Auto)
    }

    /// Patch logits with BatchNorm in training mode (batch statistics; updates the running
    /// statistics), on any backend.
    pub fn forward_train(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.run(x, Mode::Train)
    }

    /// Patch logits with BatchNorm in evaluation mode (running statistics), on any backend.
    pub fn forward_eval(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.run(x, Mode::Eval)
    }

    fn run(&self, x: Tensor<B, 4>, mode: Mode) -> Tensor<B, 4> {
        let last = self.convs.len() - 1;
        let mut h = x;
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(h);
            if i == last {
                break;
            }
            if i >= 1 {
                let norm = &self.norms[i - 1];
                h = match mode {
                    Mode::Auto => norm.forward(h),
                    Mode::Train => norm.forward_train(h),
                    Mode::Eval => norm.forward_eval(h),
                };
            }
            h = leaky_relu(h, LEAKY_SLOPE);
        }
        h
    }

    /// The weights under their official names (`main.{i}.…`), ready for
    /// [`crate::checkpoint::write_safetensors`]; see [`PatchGanConfig::weight_specs`].
    pub fn state_dict(&self) -> Result<Vec<(String, TensorData)>, CheckpointError> {
        let cfg = &self.config;
        for norm in &self.norms {
            norm.sync_running_stats();
        }
        crate::checkpoint::state_dict_renamed(self, &cfg.weight_specs(), |path| {
            official_name(cfg, path)
        })
    }
}

/// Maps a module path of [`PatchGan`] (`convs.{k}.weight`, `norms.{k}.running_var`) to its
/// official name (`main.{i}.weight`, …); other paths are returned unchanged.
pub fn official_name(cfg: &PatchGanConfig, path: &str) -> String {
    let layers = cfg.layers();
    let mut parts = path.splitn(3, '.');
    let (Some(list), Some(k), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return path.to_string();
    };
    let Ok(k) = k.parse::<usize>() else {
        return path.to_string();
    };
    let index = match list {
        "convs" => layers.get(k).map(|l| l.index),
        "norms" => layers.iter().filter_map(|l| l.norm_index).nth(k),
        _ => None,
    };
    match index {
        Some(i) => format!("main.{i}.{rest}"),
        None => path.to_string(),
    }
}

/// The adversarial loss kinds of the official `vq_loss.py` (`--disc-loss` / `--gen-loss`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum GanLoss {
    #[default]
    Hinge,
    Vanilla,
    NonSaturating,
}

impl GanLoss {
    /// Whether `vq_loss.py` accepts this kind as `gen_adv_loss` (hinge, non-saturating).
    pub fn is_official_generator_loss(self) -> bool {
        !matches!(self, GanLoss::Vanilla)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GanLoss::Hinge => "hinge",
            GanLoss::Vanilla => "vanilla",
            GanLoss::NonSaturating => "non-saturating",
        }
    }
}

/// `log(1 + exp(x))`, computed without overflow.
fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// Mean of PyTorch's `binary_cross_entropy_with_logits(input, target)`:
/// `softplus(input) − input·target`, elementwise.
fn bce_with_logits_mean<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    (softplus(input.clone()) - input * target).mean()
}

/// The discriminator loss `[1]` of `vq_loss.py`:
/// - hinge: `0.5·(mean(relu(1 − real)) + mean(relu(1 + fake)))`
/// - vanilla: `0.5·(mean(softplus(−real)) + mean(softplus(fake)))`
/// - non-saturating: `0.5·(mean(BCE(ones, real)) + mean(BCE(zeros, fake)))` with the official
///   argument order `binary_cross_entropy_with_logits(ones_like(x), x)`: the constant is the
///   *logit* and the discriminator output the *target* (reproduced as is).
pub fn discriminator_loss<B: Backend, const D: usize>(
    kind: GanLoss,
    logits_real: Tensor<B, D>,
    logits_fake: Tensor<B, D>,
) -> Tensor<B, 1> {
    let (real, fake) = match kind {
        GanLoss::Hinge => (
            relu(logits_real.neg() + 1.0).mean(),
            relu(logits_fake + 1.0).mean(),
        ),
        GanLoss::Vanilla => (
            softplus(logits_real.neg()).mean(),
            softplus(logits_fake).mean(),
        ),
        GanLoss::NonSaturating => (
            bce_with_logits_mean(logits_real.ones_like(), logits_real),
            bce_with_logits_mean(logits_fake.zeros_like(), logits_fake),
        ),
    };
    (real + fake) * 0.5
}

/// The generator's adversarial loss `[1]` of `vq_loss.py`:
/// - hinge: `−mean(fake)`
/// - non-saturating: `mean(BCE(ones, fake))`, arguments in the official (swapped) order
/// - vanilla: not an official generator loss (`VQLoss` accepts only hinge and non-saturating
///   for `gen_adv_loss`, see [`GanLoss::is_official_generator_loss`]); it is given the hinge form
///   `−mean(fake)`, which taming-transformers pairs with its vanilla discriminator loss.
pub fn generator_loss<B: Backend, const D: usize>(
    kind: GanLoss,
    logits_fake: Tensor<B, D>,
) -> Tensor<B, 1> {
    match kind {
        GanLoss::Hinge | GanLoss::Vanilla => logits_fake.mean().neg(),
        GanLoss::NonSaturating => bce_with_logits_mean(logits_fake.ones_like(), logits_fake),
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn sequential_indices_follow_the_official_layout() {
        let cfg = PatchGanConfig::default();
        let idx: Vec<(usize, Option<usize>, usize)> = cfg
            .layers()
            .iter()
            .map(|l| (l.index, l.norm_index, l.stride))
            .collect();
        assert_eq!(
            idx,
            vec![
                (0, None, 2),
                (2, Some(3), 2),
                (5, Some(6), 2),
                (8, Some(9), 1),
                (11, None, 1)
            ]
        );
        assert_eq!(official_name(&cfg, "convs.4.bias"), "main.11.bias");
        assert_eq!(
            official_name(&cfg, "norms.2.running_var"),
            "main.9.running_var"
        );
        assert_eq!(official_name(&cfg, "other.0.weight"), "other.0.weight");
    }

    #[test]
    fn gan_losses_follow_vq_loss_py() {
        let device = Default::default();
        let real = Tensor::<Cpu, 1>::from_floats([2.0, -0.5], &device);
        let fake = Tensor::<Cpu, 1>::from_floats([0.5, -3.0], &device);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let v = |t: Tensor<Cpu, 1>| t.into_scalar() as f64;
        let hinge = 0.5 * ((0.0 + 1.5) / 2.0 + (1.5 + 0.0) / 2.0);
        let vanilla = 0.5 * ((sp(-2.0) + sp(0.5)) / 2.0 + (sp(0.5) + sp(-3.0)) / 2.0);
        // BCE-with-logits(input = 1, target = x) = softplus(1) − x; input = 0 gives ln 2.
        let ns_d = 0.5 * ((sp(1.0) - 2.0 + sp(1.0) + 0.5) / 2.0 + 2f64.ln());
        let ns_g = (sp(1.0) - 0.5 + sp(1.0) + 3.0) / 2.0;
        let cases = [
            (
                discriminator_loss(GanLoss::Hinge, real.clone(), fake.clone()),
                hinge,
            ),
            (
                discriminator_loss(GanLoss::Vanilla, real.clone(), fake.clone()),
                vanilla,
            ),
            (
                discriminator_loss(GanLoss::NonSaturating, real, fake.clone()),
                ns_d,
            ),
            (generator_loss(GanLoss::Hinge, fake.clone()), 1.25),
            (generator_loss(GanLoss::NonSaturating, fake), ns_g),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert!(
                (v(got.clone()) - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                v(got)
            );
        }
        // softplus stays finite for large logits.
        let big = Tensor::<Cpu, 1>::from_floats([200.0], &device);
        assert!(
            (v(discriminator_loss(GanLoss::Vanilla, big.clone().neg(), big)) - 200.0).abs() < 1e-3
        );
    }
}
