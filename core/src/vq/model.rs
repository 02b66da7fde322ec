use burn::module::{ModuleMapper, Param};
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;

use super::blocks::{conv, conv_init};
use super::decoder::Decoder;
use super::encoder::Encoder;
use super::quantizer::{QuantizerLosses, VectorQuantizer};
use crate::checkpoint::{StateDict, Weights};
use crate::config::VqConfig;
use crate::error::{CheckpointError, ConfigError};
use crate::precision::Precision;

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
    /// Decode in tiles of this many codes a side ([`VqModel::set_decode_tile`]); `None`
    /// decodes whole grids.
    #[module(skip)]
    pub decode_tile: Option<usize>,
}

/// Casts every float parameter to one type.
struct CastParams(DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// Where the tiles of one axis of `n` codes start: tiles of `tile` codes overlapping by
/// `overlap`, the last one flush with the edge (every tile the same size, so a GPU backend
/// compiles one set of shapes).
fn tile_starts(n: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if n <= tile {
        return vec![0];
    }
    let step = (tile - overlap).max(1);
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * step)
        .take_while(|&s| s + tile < n)
        .collect();
    starts.push(n - tile);
    starts
}

/// Blending weights along one axis of a tile of `len` pixels: a ramp over the first and last
/// `ramp` pixels where another tile overlaps, 1 elsewhere (and at the image's edges).
fn tile_ramp(len: usize, ramp: usize, before: bool, after: bool) -> Vec<f32> {
    let ramp = ramp.max(1) as f32;
    (0..len)
        .map(|i| {
            let mut w = 1.0f32;
            if before {
                w = w.min((i as f32 + 0.5) / ramp);
            }
            if after {
                w = w.min(((len - i) as f32 - 0.5) / ramp);
            }
            w
        })
        .collect()
}

/// Decodes latent `z` `[batch, e, h, w]` tile by tile with `decode` (a latent tile → its
/// `[batch, channels, th·ds, tw·ds]` f32 pixels), each tile's pixels read back and blended on
/// the host with [`tile_ramp`] weights. Every pixel's weights sum to more than zero, and a
/// `decode` that is local (each pixel a function of the latent under it) gives back its whole
/// output exactly.
fn decode_in_tiles<B: Backend>(
    z: Tensor<B, 4>,
    tile: usize,
    ds: usize,
    channels: usize,
    decode: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let device = z.device();
    let [b, e, h, w] = z.dims();
    let (th, tw) = (tile.min(h), tile.min(w));
    let overlap = (tile / 4).max(1);
    let (ys, xs) = (tile_starts(h, th, overlap), tile_starts(w, tw, overlap));
    let (ph, pw) = (h * ds, w * ds);
    let planes = b * channels;
    let mut sum = vec![0f32; planes * ph * pw];
    let mut weight = vec![0f32; ph * pw];
    for (iy, &y0) in ys.iter().enumerate() {
        let wy = tile_ramp(th * ds, overlap * ds, iy > 0, iy + 1 < ys.len());
        for (ix, &x0) in xs.iter().enumerate() {
            let wx = tile_ramp(tw * ds, overlap * ds, ix > 0, ix + 1 < xs.len());
            let part = z.clone().slice([0..b, 0..e, y0..y0 + th, x0..x0 + tw]);
            let pixels = decode(part).into_data().convert::<f32>();
            let pixels = pixels.as_slice::<f32>().expect("f32 pixels");
            let (tph, tpw) = (th * ds, tw * ds);
            let (oy, ox) = (y0 * ds, x0 * ds);
            for (y, &a) in wy.iter().enumerate() {
                for (x, &c) in wx.iter().enumerate() {
                    weight[(oy + y) * pw + ox + x] += a * c;
                }
            }
            for plane in 0..planes {
                for (y, &a) in wy.iter().enumerate() {
                    let src = &pixels[(plane * tph + y) * tpw..][..tpw];
                    let dst = &mut sum[(plane * ph + oy + y) * pw + ox..][..tpw];
                    for ((d, &v), &c) in dst.iter_mut().zip(src).zip(&wx) {
                        *d += a * c * v;
                    }
                }
            }
        }
    }
    for plane in sum.chunks_mut(ph * pw) {
        for (v, &wt) in plane.iter_mut().zip(&weight) {
            *v /= wt;
        }
    }
    Tensor::from_data(TensorData::new(sum, [b, channels, ph, pw]), &device)
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
            decode_tile: None,
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
            decode_tile: None,
        })
    }

    /// The tokenizer in `precision`. On GPU backends the encoder's and decoder's weights and
    /// activations take that type, with the group norms' statistics, the attention's softmax and
    /// the codebook (nearest-code search, lookup) kept in f32; images and latents enter and leave
    /// in f32. On the CPU the tokenizer stays f32: its kernels are f32's, and its time goes to
    /// arithmetic, not to reading weights.
    pub fn into_precision(mut self, precision: Precision) -> Self {
        if crate::kernels::is_cpu::<B>() {
            return self;
        }
        let mut cast = CastParams(precision.dtype().into());
        self.encoder = self.encoder.map(&mut cast);
        self.decoder = self.decoder.map(&mut cast);
        self.quant_conv = self.quant_conv.map(&mut cast);
        self.post_quant_conv = self.post_quant_conv.map(&mut cast);
        self
    }

    /// The float type the encoder and decoder compute in.
    pub fn precision(&self) -> Precision {
        Precision::of(self.compute_dtype()).unwrap_or_default()
    }

    fn compute_dtype(&self) -> DType {
        self.post_quant_conv.weight.val().dtype()
    }

    /// Decoding in tiles of `tile` × `tile` codes (`None`: whole grids). Tiles overlap by a
    /// quarter of their side and are blended linearly across the overlap, so the working set is
    /// one tile's whatever the image's size; each tile is normalised and attends within itself,
    /// so the result is close to the whole grid's decode, not equal to it. A grid no larger than
    /// the tile decodes whole.
    pub fn set_decode_tile(&mut self, tile: Option<usize>) {
        self.decode_tile = tile.filter(|&t| t > 0);
    }

    pub fn downsample(&self) -> usize {
        self.config.downsample()
    }

    /// Pre-quantization latent `[batch, embed_dim, h, w]` (encoder then quant_conv).
    pub fn encode_latent(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let images = images.cast(self.compute_dtype());
        conv(&self.quant_conv, self.encoder.forward(images)).cast(DType::F32)
    }

    /// Images in [−1, 1] `[batch, 3, H, W]` → (quantized latent, code indices `[batch, h·w]`).
    pub fn encode(&self, images: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 2, Int>) {
        let q = self.quantize.quantize(self.encode_latent(images));
        let [b, _, h, w] = q.z_q.dims();
        (q.z_q, q.indices.reshape([b, h * w]))
    }

    /// Quantized latent → images `[batch, 3, H, W]` (roughly in [−1, 1]).
    pub fn decode(&self, z_q: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = z_q.dims();
        match self.decode_tile {
            Some(tile) if h > tile || w > tile => self.decode_tiled(z_q, tile),
            _ => self.decode_whole(z_q),
        }
    }

    fn decode_whole(&self, z_q: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = z_q.cast(self.compute_dtype());
        self.decoder
            .forward(conv(&self.post_quant_conv, z))
            .cast(DType::F32)
    }

    /// [`VqModel::decode`] tile by tile.
    fn decode_tiled(&self, z_q: Tensor<B, 4>, tile: usize) -> Tensor<B, 4> {
        let (ds, channels) = (self.downsample(), self.config.out_channels);
        decode_in_tiles(z_q, tile, ds, channels, |part| self.decode_whole(part))
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
    fn tiles_cover_the_grid_with_one_size_and_their_overlap() {
        for (n, tile) in [
            (32, 16),
            (33, 16),
            (64, 16),
            (17, 16),
            (40, 8),
            (9, 8),
            (8, 8),
            (5, 8),
        ] {
            let overlap = (tile / 4).max(1);
            let starts = tile_starts(n, tile.min(n), overlap);
            let t = tile.min(n);
            assert_eq!(starts[0], 0);
            assert_eq!(starts.last().unwrap() + t, n, "{n} {tile}: {starts:?}");
            for pair in starts.windows(2) {
                assert!(pair[1] > pair[0], "{starts:?}");
                assert!(pair[0] + t >= pair[1] + overlap, "{n} {tile}: {starts:?}");
            }
        }
    }

    #[test]
    fn tiles_of_a_local_decoder_blend_back_into_its_whole_output() {
        use crate::vq::blocks::upsample_nearest_2x;
        let device = Default::default();
        // A local "decoder": each latent value spread over a 4×4 block, 3 of 5 channels kept.
        let local = |z: Tensor<Cpu, 4>| {
            let [b, _, _, _] = z.dims();
            let x = z.slice([0..b, 1..4]);
            upsample_nearest_2x(upsample_nearest_2x(x)) * 2.0 + 1.0
        };
        for (h, w, tile) in [(21, 13, 8), (16, 16, 4), (9, 30, 6), (5, 7, 16)] {
            let z = Tensor::<Cpu, 4>::random(
                [2, 5, h, w],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let whole = local(z.clone()).into_data();
            let tiled = decode_in_tiles(z, tile, 4, 3, local).into_data();
            tiled.assert_approx_eq::<f32>(&whole, burn::tensor::Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn tile_ramps_are_positive_and_flat_away_from_neighbours() {
        let w = tile_ramp(64, 16, true, true);
        assert!(w.iter().all(|&x| x > 0.0 && x <= 1.0));
        assert!(w[16..48].iter().all(|&x| x == 1.0));
        assert!(w[0] < w[8] && w[63] < w[55]);
        assert!(tile_ramp(64, 16, false, false).iter().all(|&x| x == 1.0));
        let left = tile_ramp(64, 16, false, true);
        assert_eq!(left[0], 1.0);
        assert!(left[63] < 1.0);
    }

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
