//! A small convolutional classifier of the procedural shapes, trained on freshly drawn images;
//! it measures whether generated images show the class they were asked for.

use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use image::imageops::{FilterType, blur, resize};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::TrainError;
use super::checkpoint::{load_record, save_record};
use super::data::images_to_tensor;
use crate::dataset::{SHAPE_CLASSES, render};
use crate::gpt::cross_entropy;

/// Four stride-2 3×3 convolutions (32, 64, 128, 128 channels) with ReLU, global max and mean
/// pooling side by side, a linear head over the shape classes. Input: 64×64 RGB in [−1, 1].
#[derive(Module, Debug)]
pub struct ShapeClassifier<B: Backend> {
    convs: Vec<Conv2d<B>>,
    head: Linear<B>,
}

impl<B: Backend> ShapeClassifier<B> {
    pub fn init(device: &B::Device) -> Self {
        let widths = [3, 32, 64, 128, 128];
        let convs = widths
            .windows(2)
            .map(|w| {
                Conv2dConfig::new([w[0], w[1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        Self {
            convs,
            head: LinearConfig::new(256, SHAPE_CLASSES.len()).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut h = x;
        for c in &self.convs {
            h = relu(c.forward(h));
        }
        self.head.forward(mean_max_pool(h))
    }

    /// Predicted class (index into [`SHAPE_CLASSES`]) of each image (resized to 64×64).
    pub fn classify(&self, images: &[RgbImage]) -> Vec<usize> {
        classify_with(self, images, &self.head.weight.device())
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        save_record(self.clone().into_record(), path)
    }

    pub fn load(path: &Path, device: &B::Device) -> Result<Self, TrainError> {
        Ok(Self::init(device).load_record(load_record(path, device)?))
    }
}

/// Global mean and max pooling side by side: `[batch, c, h, w]` → `[batch, 2c]`.
pub fn mean_max_pool<B: Backend>(h: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, hh, ww] = h.dims();
    let flat = h.reshape([b, c, hh * ww]);
    Tensor::cat(
        vec![
            flat.clone().mean_dim(2).reshape([b, c]),
            flat.max_dim(2).reshape([b, c]),
        ],
        1,
    )
}

/// A network that maps 64×64 RGB images in [−1, 1] `[batch, 3, 64, 64]` to logits over the
/// shape classes `[batch, classes]`: the classifier that scores generations, and the perceptual
/// backbone ([`super::perceptual::PerceptualNet`]) that is trained the same way.
pub trait ShapeNet<B: Backend>: Module<B> {
    fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2>;
}

impl<B: Backend> ShapeNet<B> for ShapeClassifier<B> {
    fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(x)
    }
}

/// Predicted class of each image (resized to 64×64) by `model`.
pub fn classify_with<B: Backend, M: ShapeNet<B>>(
    model: &M,
    images: &[RgbImage],
    device: &B::Device,
) -> Vec<usize> {
    let resized: Vec<RgbImage> = images
        .iter()
        .map(|im| {
            if im.dimensions() == (64, 64) {
                im.clone()
            } else {
                resize(im, 64, 64, FilterType::Triangle)
            }
        })
        .collect();
    let mut out = Vec::with_capacity(images.len());
    for chunk in resized.chunks(64) {
        let logits = model.logits(images_to_tensor::<B>(chunk, device));
        let idx = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("ints");
        out.extend(idx.into_iter().map(|i| i as usize));
    }
    out
}

/// The degradations a generated image may carry and a person looks past, each drawn from `rng`:
/// a Gaussian blur (half the time, σ 0.4–1.6 px), a coarser resampling (a quarter of the time,
/// through 24–47 px), a shift of contrast (×0.75–1.25) and of each channel's brightness (±20),
/// and uniform pixel noise (up to ±8). Training on them teaches the classifier the shape rather
/// than the rasteriser's exact edges, so a blurred but plain star still counts as a star.
pub fn degrade(im: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = im.dimensions();
    let mut out = im.clone();
    if rng.random_bool(0.5) {
        out = blur(&out, rng.random_range(0.4..1.6));
    }
    if rng.random_bool(0.25) {
        let s = rng.random_range(24..48);
        out = resize(
            &resize(&out, s, s, FilterType::Triangle),
            w,
            h,
            FilterType::Triangle,
        );
    }
    let contrast: f32 = rng.random_range(0.75..1.25);
    let shift: [f32; 3] = std::array::from_fn(|_| rng.random_range(-20.0..20.0));
    let noise: f32 = rng.random_range(0.0..8.0);
    for p in out.pixels_mut() {
        for (c, v) in p.0.iter_mut().enumerate() {
            let n = if noise > 0.0 {
                rng.random_range(-noise..noise)
            } else {
                0.0
            };
            let x = (*v as f32 - 128.0) * contrast + 128.0 + shift[c] + n;
            *v = x.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn draw_batch(seed: u64, first: u64, n: usize) -> (Vec<RgbImage>, Vec<i64>) {
    let k = SHAPE_CLASSES.len() as u64;
    (0..n as u64)
        .map(|i| {
            let j = first + i;
            let class = (j % k) as usize;
            (render(seed, class, j / k, 64).to_image(), class as i64)
        })
        .unzip()
}

/// Accuracy on `per_class` images of every class drawn from `seed` (a seed training never saw),
/// as drawn or, with `degraded`, passed through [`degrade`].
pub fn held_out_accuracy<B: Backend, M: ShapeNet<B>>(
    model: &M,
    device: &B::Device,
    seed: u64,
    per_class: usize,
    degraded: bool,
) -> f64 {
    let (mut images, labels) = draw_batch(seed, 0, per_class * SHAPE_CLASSES.len());
    if degraded {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xdeca_f000);
        images = images.iter().map(|im| degrade(im, &mut rng)).collect();
    }
    let pred = classify_with(model, &images, device);
    let right = pred
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    right as f64 / labels.len() as f64
}

/// The 95% Wilson score interval `(low, high)` of an accuracy of `right` out of `n`: how far
/// a score measured on `n` samples may sit from the rate behind it. Unlike the textbook
/// `p ± 1.96·√(p(1−p)/n)`, it stays inside [0, 1] and is not empty at 0 or `n` right.
pub fn accuracy_interval(right: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, right as f64 / n as f64);
    let z2n = z * z / n;
    let centre = (p + z2n / 2.0) / (1.0 + z2n);
    let half = z / (1.0 + z2n) * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Trains `model` (Adam, cross-entropy) on `steps` batches of freshly drawn images (seed
/// `seed`), each image passed through [`degrade`] when `augment`; `on_step(step, loss)`.
#[allow(clippy::too_many_arguments)]
pub fn train_net<B: AutodiffBackend, M: ShapeNet<B> + AutodiffModule<B>>(
    mut model: M,
    steps: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    augment: bool,
    device: &B::Device,
    mut on_step: impl FnMut(usize, f32),
) -> M {
    let mut opt = AdamConfig::new().init::<B, M>();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xa46_0e47);
    for step in 0..steps {
        let (mut images, labels) = draw_batch(seed, (step * batch) as u64, batch);
        if augment {
            images = images.iter().map(|im| degrade(im, &mut rng)).collect();
        }
        let x = images_to_tensor::<B>(&images, device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), device);
        let loss = cross_entropy(model.logits(x), y).mean();
        on_step(step, loss.clone().into_scalar().elem());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(lr, model, grads);
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_intervals_narrow_with_samples_and_stay_in_range() {
        // 331 of 500 (66.2%): Wilson's interval is 61.9–70.2%.
        let (lo, hi) = accuracy_interval(331, 500);
        assert!(
            (lo - 0.6194).abs() < 5e-4 && (hi - 0.7021).abs() < 5e-4,
            "{lo} {hi}"
        );
        // Half the samples: wider, around the same rate.
        let (lo2, hi2) = accuracy_interval(165, 250);
        assert!(lo2 < lo && hi2 > hi);
        // All right or none: inside [0, 1], and not a single point.
        let (lo, hi) = accuracy_interval(50, 50);
        assert!(hi == 1.0 && lo > 0.9 && lo < 1.0, "{lo}");
        let (lo, hi) = accuracy_interval(0, 50);
        assert!(lo == 0.0 && hi > 0.0 && hi < 0.1, "{hi}");
        assert_eq!(accuracy_interval(0, 0), (0.0, 1.0));
    }

    #[test]
    fn degrading_keeps_the_size_changes_the_pixels_and_repeats_from_its_seed() {
        let im = render(3, 0, 0, 64).to_image();
        let a = degrade(&im, &mut ChaCha8Rng::seed_from_u64(1));
        let b = degrade(&im, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a.dimensions(), (64, 64));
        assert_eq!(a, b);
        let changed = (0..8u64)
            .map(|s| degrade(&im, &mut ChaCha8Rng::seed_from_u64(s)))
            .filter(|d| d != &im)
            .count();
        assert_eq!(changed, 8, "every draw shifts contrast or brightness");
        // Still the same picture: the mean absolute change stays small against 255.
        let diff: f64 = a
            .as_raw()
            .iter()
            .zip(im.as_raw())
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .sum::<f64>()
            / im.as_raw().len() as f64;
        assert!(diff < 60.0, "mean change {diff}");
    }
}
