use burn::module::Param;
use burn::prelude::*;

use crate::checkpoint::Weights;
use crate::error::CheckpointError;

/// RMSNorm as the official code computes it: `x · rsqrt(mean(x²) + eps) · weight`, in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps,
        }
    }

    pub fn load(w: &Weights<B>, name: &str, dim: usize, eps: f64) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: Param::from_tensor(w.tensor(&format!("{name}.weight"), [dim])?),
            eps,
        })
    }

    /// The statistics in f32 whatever the type of `x`; the result in that type, as the
    /// official `self._norm(x.float()).type_as(x) * self.weight`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(burn::tensor::DType::F32);
        let mean_sq = x.clone().powi_scalar(2).mean_dim(D - 1);
        // A true division, not `recip()`: burn-ndarray's SIMD reciprocal is an approximation
        // (~12 bits) that would cost ~1e-4 of parity.
        let normed = (x / (mean_sq + self.eps).sqrt()).cast(dtype);
        normed * self.weight.val().unsqueeze()
    }
}
