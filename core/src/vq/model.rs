use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::blocks::{conv, conv_init};
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::quantizer::{QuantizerLosses, VectorQuantizer};
use crate::checkpoint::{StateDict, Weights};
use crate::config::VqConfig;
use crate::error::{CheckpointError, ConfigError};

/// Output of a training-mode pass.
#[derive(Debug, Clone)]
pub struct VqTrainOutput<B: Backend> {
    pub reconstruction: Tensor<B, 4>,
    pub losses: QuantizerLosses<B>,
    /// Fraction of the codebook in the usage FIFO after this pass.
    pub codebook_usage: f64,
    pub indices: Tensor<B, 1, Int>,
}

/// The VQ tokenizer (official `VQModel`).
#[derive(Module, Debug)]
pub struct VqModel<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    pub quantize: VectorQuantizer<B>,
    pub quant_conv: Conv2d<B>,
    pub post_quant_conv: Conv2d<B>,
    #[module(skip)]
    pub config: VqConfig,
}

impl<B: Backend> VqModel<B> {
    pub fn init(cfg: &VqConfig, device: &B::Device) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            encoder: Encoder::init(cfg, device),
            decoder: Decoder::init(cfg, device),
            quantize: VectorQuantizer::init(cfg, device),
            quant_conv: conv_init(cfg.z_channels, cfg.codebook_embed_dim, 1, 1, 0, device),
            post_quant_conv: conv_init(cfg.codebook_embed_dim, cfg.z_channels, 1, 1, 0, device),
            config: cfg.clone(),
        })
    }

    /// Builds the tokenizer from an official state dict, after checking every tensor.
    pub fn load(
        sd: &StateDict,
        cfg: &VqConfig,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        cfg.validate()?;
        sd.check(&cfg.state_dict_specs()).into_result()?;
        let w = Weights::<B>::new(sd, device);
        Ok(Self {
            encoder: Encoder::load(&w, "encoder", cfg)?,
            decoder: Decoder::load(&w, "decoder", cfg)?,
            quantize: VectorQuantizer::load(&w, "quantize", cfg)?,
            quant_conv: w.conv2d(
                "quant_conv",
                cfg.z_channels,
                cfg.codebook_embed_dim,
                1,
                1,
                0,
            )?,
            post_quant_conv: w.conv2d(
                "post_quant_conv",
                cfg.codebook_embed_dim,
                cfg.z_channels,
                1,
                1,
                0,
            )?,
            config: cfg.clone(),
        })
    }

    pub fn downsample(&self) -> usize {
        self.config.downsample()
    }

    /// Pre-quantization latent `[batch, embed_dim, h, w]` (encoder then quant_conv).
    pub fn encode_latent(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        conv(&self.quant_conv, self.encoder.forward(images))
    }

    /// Images in [−1, 1] `[batch, 3, H, W]` → (quantized latent, code indices `[batch, h·w]`).
    pub fn encode(&self, images: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 2, Int>) {
        let q = self.quantize.quantize(self.encode_latent(images));
        let [b, _, h, w] = q.z_q.dims();
        (q.z_q, q.indices.reshape([b, h * w]))
    }

    /// Quantized latent → images `[batch, 3, H, W]` (roughly in [−1, 1]).
    pub fn decode(&self, z_q: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder.forward(conv(&self.post_quant_conv, z_q))
    }

    /// Code indices `[batch, h·w]` on an `h × w` grid → images.
    pub fn decode_code(&self, indices: Tensor<B, 2, Int>, h: usize, w: usize) -> Tensor<B, 4> {
        self.decode(self.quantize.codebook_entry(indices, h, w))
    }

    /// Reconstruction in eval mode.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let (z_q, _) = self.encode(images);
        self.decode(z_q)
    }

    /// Training-mode pass: reconstruction, quantizer losses, and the usage FIFO update.
    pub fn forward_train(&mut self, images: Tensor<B, 4>) -> VqTrainOutput<B> {
        let q = self.quantize.quantize(self.encode_latent(images));
        let losses = self.quantize.losses(&q);
        let codebook_usage = self.quantize.update_usage(&q.indices);
        let reconstruction = self.decode(q.z_q);
        VqTrainOutput {
            reconstruction,
            losses,
            codebook_usage,
            indices: q.indices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn every_group_norm_takes_the_configured_group_count() {
        let cfg = VqConfig {
            ch: 32,
            encoder_ch_mult: vec![1, 2],
            decoder_ch_mult: vec![1, 2],
            z_channels: 16,
            num_res_blocks: 1,
            codebook_size: 16,
            norm_groups: 8,
            ..VqConfig::default()
        };
        let m = VqModel::<Cpu>::init(&cfg, &Default::default()).unwrap();
        let mut groups = vec![m.encoder.norm_out.num_groups, m.decoder.norm_out.num_groups];
        groups.push(m.encoder.mid.attn.norm.num_groups);
        let res = m.encoder.conv_blocks.iter().map(|l| &l.res);
        let res = res.chain(m.decoder.conv_blocks.iter().map(|l| &l.res));
        groups.extend(
            res.flatten()
                .flat_map(|r| [r.norm1.num_groups, r.norm2.num_groups]),
        );
        assert!(groups.len() > 6);
        assert!(groups.iter().all(|&g| g == 8), "{groups:?}");
    }

    #[test]
    fn group_norm_matches_burns_group_norm() {
        use burn::module::Param;
        use burn::tensor::{Distribution, Tolerance};
        let device = Default::default();
        let mut norm = burn::nn::GroupNormConfig::new(4, 16)
            .with_epsilon(1e-6)
            .init::<Cpu>(&device);
        norm.gamma = Some(Param::from_tensor(Tensor::random(
            [16],
            Distribution::Normal(1.0, 0.5),
            &device,
        )));
        norm.beta = Some(Param::from_tensor(Tensor::random(
            [16],
            Distribution::Normal(0.0, 0.5),
            &device,
        )));
        let x = Tensor::<Cpu, 4>::random([3, 16, 5, 7], Distribution::Normal(0.3, 2.0), &device);
        let ours = super::super::blocks::group_norm(&norm, x.clone());
        ours.into_data()
            .assert_approx_eq::<f32>(&norm.forward(x).into_data(), Tolerance::absolute(1e-4));
    }
}
