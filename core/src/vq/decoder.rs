use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::blocks::{
    AttnBlock, ResnetBlock, Upsample, conv, conv_init, norm_init, norm_load, norm_silu,
};
use super::encoder::MidBlock;
use crate::checkpoint::Weights;
use crate::config::VqConfig;
use crate::error::CheckpointError;

/// One decoder level: num_res_blocks + 1 residual blocks (each followed by attention at the
/// first, deepest level), then an upsample except after the last level.
#[derive(Module, Debug)]
pub struct DecoderLevel<B: Backend> {
    pub res: Vec<ResnetBlock<B>>,
    pub attn: Vec<AttnBlock<B>>,
    pub upsample: Option<Upsample<B>>,
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid: MidBlock<B>,
    pub conv_blocks: Vec<DecoderLevel<B>>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

/// (block_in, block_out) of every residual block of every decoder level, deepest first.
fn decoder_plan(cfg: &VqConfig) -> (usize, Vec<Vec<(usize, usize)>>) {
    let mult = &cfg.decoder_ch_mult;
    let top = cfg.ch * mult[mult.len() - 1];
    let mut block_in = top;
    let plan = (0..mult.len())
        .map(|i| {
            let out = cfg.ch * mult[mult.len() - 1 - i];
            (0..=cfg.num_res_blocks)
                .map(|_| {
                    let pair = (block_in, out);
                    block_in = out;
                    pair
                })
                .collect()
        })
        .collect();
    (top, plan)
}

impl<B: Backend> Decoder<B> {
    pub fn init(cfg: &VqConfig, device: &B::Device) -> Self {
        let (top, plan) = decoder_plan(cfg);
        let levels = plan.len();
        let conv_blocks = plan
            .iter()
            .enumerate()
            .map(|(i, blocks)| {
                let c = blocks.last().map(|b| b.1).unwrap_or(top);
                DecoderLevel {
                    res: blocks
                        .iter()
                        .map(|&(a, b)| ResnetBlock::init(a, b, cfg, device))
                        .collect(),
                    attn: if i == 0 {
                        blocks
                            .iter()
                            .map(|_| AttnBlock::init(c, cfg, device))
                            .collect()
                    } else {
                        Vec::new()
                    },
                    upsample: (i != levels - 1).then(|| Upsample::init(c, device)),
                }
            })
            .collect();
        let last = cfg.ch * cfg.decoder_ch_mult[0];
        Self {
            conv_in: conv_init(cfg.z_channels, top, 3, 1, 1, device),
            mid: MidBlock::init(top, cfg, device),
            conv_blocks,
            norm_out: norm_init(last, cfg, device),
            conv_out: conv_init(last, cfg.out_channels, 3, 1, 1, device),
        }
    }

    pub fn load(w: &Weights<B>, p: &str, cfg: &VqConfig) -> Result<Self, CheckpointError> {
        let (top, plan) = decoder_plan(cfg);
        let levels = plan.len();
        let mut conv_blocks = Vec::with_capacity(levels);
        for (i, blocks) in plan.iter().enumerate() {
            let lp = format!("{p}.conv_blocks.{i}");
            let c = blocks.last().map(|b| b.1).unwrap_or(top);
            let res = blocks
                .iter()
                .enumerate()
                .map(|(r, &(a, b))| ResnetBlock::load(w, &format!("{lp}.res.{r}"), a, b, cfg))
                .collect::<Result<_, _>>()?;
            let attn = if i == 0 {
                (0..blocks.len())
                    .map(|r| AttnBlock::load(w, &format!("{lp}.attn.{r}"), c, cfg))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            let upsample = if i != levels - 1 {
                Some(Upsample::load(w, &format!("{lp}.upsample"), c)?)
            } else {
                None
            };
            conv_blocks.push(DecoderLevel {
                res,
                attn,
                upsample,
            });
        }
        let last = cfg.ch * cfg.decoder_ch_mult[0];
        Ok(Self {
            conv_in: w.conv2d(&format!("{p}.conv_in"), cfg.z_channels, top, 3, 1, 1)?,
            mid: MidBlock::load(w, &format!("{p}.mid"), top, cfg)?,
            conv_blocks,
            norm_out: norm_load(w, &format!("{p}.norm_out"), last, cfg)?,
            conv_out: w.conv2d(&format!("{p}.conv_out"), last, cfg.out_channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.mid.forward(conv(&self.conv_in, z));
        for level in &self.conv_blocks {
            for (i, res) in level.res.iter().enumerate() {
                h = res.forward(h);
                if let Some(attn) = level.attn.get(i) {
                    h = attn.forward(h);
                }
            }
            if let Some(up) = &level.upsample {
                h = up.forward(h);
            }
        }
        conv(&self.conv_out, norm_silu(&self.norm_out, h))
    }
}
