use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::blocks::{
    AttnBlock, Downsample, ResnetBlock, conv, conv_init, norm_init, norm_load, norm_silu,
};
use crate::checkpoint::Weights;
use crate::config::VqConfig;
use crate::error::CheckpointError;

/// One resolution level: residual blocks (each followed by attention at the deepest level),
/// then a downsample except after the last level.
#[derive(Module, Debug)]
pub struct EncoderLevel<B: Backend> {
    pub res: Vec<ResnetBlock<B>>,
    pub attn: Vec<AttnBlock<B>>,
    pub downsample: Option<Downsample<B>>,
}

/// The middle of encoder and decoder: residual, attention, residual (official `mid.0/1/2`).
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub res_a: ResnetBlock<B>,
    pub attn: AttnBlock<B>,
    pub res_b: ResnetBlock<B>,
}

impl<B: Backend> MidBlock<B> {
    pub fn init(c: usize, cfg: &VqConfig, device: &B::Device) -> Self {
        Self {
            res_a: ResnetBlock::init(c, c, cfg, device),
            attn: AttnBlock::init(c, cfg, device),
            res_b: ResnetBlock::init(c, c, cfg, device),
        }
    }

    pub fn load(
        w: &Weights<B>,
        p: &str,
        c: usize,
        cfg: &VqConfig,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            res_a: ResnetBlock::load(w, &format!("{p}.0"), c, c, cfg)?,
            attn: AttnBlock::load(w, &format!("{p}.1"), c, cfg)?,
            res_b: ResnetBlock::load(w, &format!("{p}.2"), c, c, cfg)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.res_b.forward(self.attn.forward(self.res_a.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub conv_blocks: Vec<EncoderLevel<B>>,
    pub mid: MidBlock<B>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

/// (block_in, block_out) of every residual block of every encoder level.
fn encoder_plan(cfg: &VqConfig) -> Vec<Vec<(usize, usize)>> {
    let mut block_in = cfg.ch;
    cfg.encoder_ch_mult
        .iter()
        .map(|m| {
            let out = cfg.ch * m;
            (0..cfg.num_res_blocks)
                .map(|_| {
                    let pair = (block_in, out);
                    block_in = out;
                    pair
                })
                .collect()
        })
        .collect()
}

impl<B: Backend> Encoder<B> {
    pub fn init(cfg: &VqConfig, device: &B::Device) -> Self {
        let plan = encoder_plan(cfg);
        let levels = plan.len();
        let conv_blocks = plan
            .iter()
            .enumerate()
            .map(|(i, blocks)| {
                let c = blocks.last().map(|b| b.1).unwrap_or(cfg.ch);
                EncoderLevel {
                    res: blocks
                        .iter()
                        .map(|&(a, b)| ResnetBlock::init(a, b, cfg, device))
                        .collect(),
                    attn: if i == levels - 1 {
                        blocks
                            .iter()
                            .map(|_| AttnBlock::init(c, cfg, device))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    downsample: (i != levels - 1).then(|| Downsample::init(c, device)),
                }
            })
            .collect();
        let c = cfg.ch * cfg.encoder_ch_mult[levels - 1];
        Self {
            conv_in: conv_init(cfg.in_channels, cfg.ch, 3, 1, 1, device),
            conv_blocks,
            mid: MidBlock::init(c, cfg, device),
            norm_out: norm_init(c, cfg, device),
            conv_out: conv_init(c, cfg.z_channels, 3, 1, 1, device),
        }
    }

    pub fn load(w: &Weights<B>, p: &str, cfg: &VqConfig) -> Result<Self, CheckpointError> {
        let plan = encoder_plan(cfg);
        let levels = plan.len();
        let mut conv_blocks = Vec::with_capacity(levels);
        for (i, blocks) in plan.iter().enumerate() {
            let lp = format!("{p}.conv_blocks.{i}");
            let c = blocks.last().map(|b| b.1).unwrap_or(cfg.ch);
            let res = blocks
                .iter()
                .enumerate()
                .map(|(r, &(a, b))| ResnetBlock::load(w, &format!("{lp}.res.{r}"), a, b, cfg))
                .collect::<Result<_, _>>()?;
            let attn = if i == levels - 1 {
                (0..blocks.len())
                    .map(|r| AttnBlock::load(w, &format!("{lp}.attn.{r}"), c, cfg))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            let downsample = if i != levels - 1 {
                Some(Downsample::load(w, &format!("{lp}.downsample"), c)?)
            } else {
                None
            };
            conv_blocks.push(EncoderLevel {
                res,
                attn,
                downsample,
            });
        }
        let c = cfg.ch * cfg.encoder_ch_mult[levels - 1];
        Ok(Self {
            conv_in: w.conv2d(&format!("{p}.conv_in"), cfg.in_channels, cfg.ch, 3, 1, 1)?,
            conv_blocks,
            mid: MidBlock::load(w, &format!("{p}.mid"), c, cfg)?,
            norm_out: norm_load(w, &format!("{p}.norm_out"), c, cfg)?,
            conv_out: w.conv2d(&format!("{p}.conv_out"), c, cfg.z_channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = conv(&self.conv_in, x);
        for level in &self.conv_blocks {
            for (i, res) in level.res.iter().enumerate() {
                h = res.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(down) = &level.downsample {
                h = down.forward(h);
            }
        }
        let h = self.mid.forward(h);
        conv(&self.conv_out, norm_silu(&self.norm_out, h))
    }
}
