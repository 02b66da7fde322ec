//! A small convolutional classifier of the procedural shapes, trained on freshly drawn images;
//! it measures whether generated images show the class they were asked for.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;

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
        let [b, c, hh, ww] = h.dims();
        let flat = h.reshape([b, c, hh * ww]);
        let pooled = Tensor::cat(
            vec![
                flat.clone().mean_dim(2).reshape([b, c]),
                flat.max_dim(2).reshape([b, c]),
            ],
            1,
        );
        self.head.forward(pooled)
    }

    /// Predicted class (index into [`SHAPE_CLASSES`]) of each image (resized to 64×64).
    pub fn classify(&self, images: &[RgbImage]) -> Vec<usize> {
        let device = self.head.weight.device();
        let resized: Vec<RgbImage> = images
            .iter()
            .map(|im| {
                if im.dimensions() == (64, 64) {
                    im.clone()
                } else {
                    image::imageops::resize(im, 64, 64, image::imageops::FilterType::Triangle)
                }
            })
            .collect();
        let mut out = Vec::with_capacity(images.len());
        for chunk in resized.chunks(64) {
            let logits = self.forward(images_to_tensor::<B>(chunk, &device));
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

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        save_record(self.clone().into_record(), path)
    }

    pub fn load(path: &Path, device: &B::Device) -> Result<Self, TrainError> {
        Ok(Self::init(device).load_record(load_record(path, device)?))
    }
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

/// Accuracy on `per_class` images of every class drawn from `seed` (a seed training never saw).
pub fn held_out_accuracy<B: Backend>(
    model: &ShapeClassifier<B>,
    seed: u64,
    per_class: usize,
) -> f64 {
    let (images, labels) = draw_batch(seed, 0, per_class * SHAPE_CLASSES.len());
    let pred = model.classify(&images);
    let right = pred
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    right as f64 / labels.len() as f64
}

/// Trains on `steps` batches of freshly drawn images (seed `seed`); `on_step(step, loss)`.
pub fn train<B: AutodiffBackend>(
    steps: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    device: &B::Device,
    mut on_step: impl FnMut(usize, f32),
) -> ShapeClassifier<B> {
    let mut model = ShapeClassifier::<B>::init(device);
    let mut opt = AdamConfig::new().init::<B, ShapeClassifier<B>>();
    for step in 0..steps {
        let (images, labels) = draw_batch(seed, (step * batch) as u64, batch);
        let x = images_to_tensor::<B>(&images, device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [batch]), device);
        let loss = cross_entropy(model.forward(x), y).mean();
        on_step(step, loss.clone().into_scalar().elem());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(lr, model, grads);
    }
    model
}
