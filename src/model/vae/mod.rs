//! The VAE (diffusers' `AutoencoderKL`): encoder to a diagonal Gaussian over latents, decoder
//! back to pixels. tessera's own code (candle-transformers keeps its VAE internals private) so
//! that normalisation and attention can be tiled and bounded in memory.

mod blocks;
mod norm;
mod store;
pub mod tiled;

use blocks::{Attention, Downsample, ResnetBlock, Upsample};
use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};
pub use norm::{GroupNorm, GroupStats};
use serde::Deserialize;
use std::path::Path;

/// The fields of a diffusers `vae/config.json` that decide the architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub force_upcast: bool,
    /// Image side in pixels, or `[height, width]` (used when the UNet gives none).
    #[serde(default)]
    pub sample_size: Option<super::SampleSize>,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups() -> usize {
    32
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        super::read_json(path)
    }
}

fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb,
    )
}

/// resnet, attention, resnet at the lowest resolution.
pub(crate) struct MidBlock {
    pub(crate) res0: ResnetBlock,
    pub(crate) attn: Option<Attention>,
    pub(crate) res1: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, c: usize, cfg: &VaeConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(Self {
            res0: ResnetBlock::new(vb.pp("resnets.0"), c, c, g)?,
            attn: cfg
                .mid_block_add_attention
                .then(|| Attention::new(vb.pp("attentions.0"), c, g))
                .transpose()?,
            res1: ResnetBlock::new(vb.pp("resnets.1"), c, c, g)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.res0.forward(x)?;
        let x = match &self.attn {
            Some(a) => a.forward(&x)?,
            None => x,
        };
        self.res1.forward(&x)
    }
}

pub struct Encoder {
    pub(crate) conv_in: Conv2d,
    pub(crate) blocks: Vec<(Vec<ResnetBlock>, Option<Downsample>)>,
    pub(crate) mid: MidBlock,
    pub(crate) norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
    pub(crate) quant_conv: Option<Conv2d>,
}

impl Encoder {
    /// `vb` is the VAE root (weights under `encoder.` and `quant_conv.`).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let e = vb.pp("encoder");
        let mut blocks = Vec::new();
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let b = e.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(
                        b.pp(format!("resnets.{j}")),
                        if j == 0 { cin } else { cout },
                        cout,
                        g,
                    )
                })
                .collect::<Result<_>>()?;
            let down = (i + 1 < ch.len())
                .then(|| Downsample::new(b.pp("downsamplers.0.conv"), cout))
                .transpose()?;
            blocks.push((resnets, down));
            cin = cout;
        }
        let last = *ch.last().expect("at least one block");
        let z = 2 * cfg.latent_channels;
        Ok(Self {
            conv_in: conv3(cfg.in_channels, ch[0], e.pp("conv_in"))?,
            blocks,
            mid: MidBlock::new(e.pp("mid_block"), last, cfg)?,
            norm_out: GroupNorm::new(e.pp("conv_norm_out"), last, g, 1e-6)?,
            conv_out: conv3(last, z, e.pp("conv_out"))?,
            quant_conv: cfg
                .use_quant_conv
                .then(|| conv2d(z, z, 1, Default::default(), vb.pp("quant_conv")))
                .transpose()?,
        })
    }

    /// Image (B,3,H,W) in [-1,1] to the latent distribution's parameters (B, 2L, H/8, W/8).
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(image)?;
        for (resnets, down) in &self.blocks {
            for r in resnets {
                x = r.forward(&x)?;
            }
            if let Some(d) = down {
                x = d.forward(&x)?;
            }
        }
        let x = self.mid.forward(&x)?;
        let x = self
            .conv_out
            .forward(&candle_nn::ops::silu(&self.norm_out.forward(&x)?)?)?;
        match &self.quant_conv {
            Some(q) => q.forward(&x),
            None => Ok(x),
        }
    }
}

pub struct Decoder {
    pub(crate) post_quant_conv: Option<Conv2d>,
    pub(crate) conv_in: Conv2d,
    pub(crate) mid: MidBlock,
    pub(crate) blocks: Vec<(Vec<ResnetBlock>, Option<Upsample>)>,
    pub(crate) norm_out: GroupNorm,
    pub(crate) conv_out: Conv2d,
}

impl Decoder {
    /// `vb` is the VAE root (weights under `decoder.` and `post_quant_conv.`).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().cloned().collect();
        let g = cfg.norm_num_groups;
        let d = vb.pp("decoder");
        let l = cfg.latent_channels;
        let mut blocks = Vec::new();
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let b = d.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    ResnetBlock::new(
                        b.pp(format!("resnets.{j}")),
                        if j == 0 { cin } else { cout },
                        cout,
                        g,
                    )
                })
                .collect::<Result<_>>()?;
            let up = (i + 1 < rev.len())
                .then(|| Upsample::new(b.pp("upsamplers.0.conv"), cout))
                .transpose()?;
            blocks.push((resnets, up));
            cin = cout;
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| conv2d(l, l, 1, Default::default(), vb.pp("post_quant_conv")))
                .transpose()?,
            conv_in: conv3(l, rev[0], d.pp("conv_in"))?,
            mid: MidBlock::new(d.pp("mid_block"), rev[0], cfg)?,
            blocks,
            norm_out: GroupNorm::new(d.pp("conv_norm_out"), first, g, 1e-6)?,
            conv_out: conv3(first, cfg.out_channels, d.pp("conv_out"))?,
        })
    }

    /// Latents already divided by the scaling factor (B,L,h,w) to an image (B,3,8h,8w) in ~[-1,1].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let mut x = self.mid.forward(&self.conv_in.forward(&z)?)?;
        for (resnets, up) in &self.blocks {
            for r in resnets {
                x = r.forward(&x)?;
            }
            if let Some(u) = up {
                x = u.forward(&x)?;
            }
        }
        self.conv_out
            .forward(&candle_nn::ops::silu(&self.norm_out.forward(&x)?)?)
    }
}

/// The latent distribution `N(mean, exp(logvar))`, logvar clamped to [-30, 20] as diffusers does.
pub struct LatentDist {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl LatentDist {
    pub fn from_parameters(p: &Tensor) -> Result<Self> {
        let l = p.dim(1)? / 2;
        Ok(Self {
            mean: p.narrow(1, 0, l)?,
            logvar: p.narrow(1, l, l)?.clamp(-30f32, 20f32)?,
        })
    }

    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }
}

/// Encoder and decoder together.
pub struct AutoencoderKl {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl AutoencoderKl {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(vb.clone(), cfg)?,
            decoder: Decoder::new(vb, cfg)?,
        })
    }

    pub fn encode(&self, image: &Tensor) -> Result<LatentDist> {
        LatentDist::from_parameters(&self.encoder.forward(image)?)
    }

    /// `latents` already divided by the scaling factor, as diffusers' `vae.decode` takes them.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder.forward(latents)
    }
}
