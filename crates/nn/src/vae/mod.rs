//! The VAE (diffusers' `AutoencoderKL`): encoder to a diagonal Gaussian over latents, decoder
//! back to pixels. tessera's own code (candle-transformers keeps its VAE internals private):
//! each half is a program of layers ([`program`]) run by two executors, whole-image
//! ([`program::run`]) and tiled ([`tiled`]), so normalisation and attention can be tiled and
//! bounded in memory while the network is written down once.

pub mod program;
mod store;
pub mod tiled;

use crate::layers::resnet::ResnetConfig;
use crate::layers::{Conv2d, GroupNorm, ResnetBlock};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use program::{AttentionBlock, Op, Sampling};
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
    pub sample_size: Option<crate::SampleSize>,
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
    pub fn from_file(path: &Path) -> tessera_core::Result<Self> {
        crate::config::read_json(path)
    }

    /// Pixels per latent cell on each side.
    pub fn factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn resnet(&self) -> ResnetConfig {
        ResnetConfig {
            groups: self.norm_num_groups,
            eps: 1e-6,
            temb: None,
            output_scale: 1.0,
        }
    }

    /// `n` resnets from `cin` to `cout` channels (the first one changes the width).
    fn resnets(&self, vb: &VarBuilder, n: usize, cin: usize, cout: usize) -> Result<Vec<Op>> {
        (0..n)
            .map(|j| {
                let from = if j == 0 { cin } else { cout };
                let r = ResnetBlock::new(vb.pp(format!("resnets.{j}")), from, cout, &self.resnet());
                Ok(Op::Resnet(Box::new(r?)))
            })
            .collect()
    }

    /// resnet, attention, resnet at the lowest resolution.
    fn mid(&self, vb: VarBuilder, c: usize) -> Result<Vec<Op>> {
        let mut ops = self.resnets(&vb, 1, c, c)?;
        if self.mid_block_add_attention {
            let a = AttentionBlock::new(vb.pp("attentions.0"), c, self.norm_num_groups)?;
            ops.push(Op::Attention(a));
        }
        let last = ResnetBlock::new(vb.pp("resnets.1"), c, c, &self.resnet())?;
        ops.push(Op::Resnet(Box::new(last)));
        Ok(ops)
    }

    /// GroupNorm, SiLU and the output convolution.
    fn norm_out(&self, vb: VarBuilder, cin: usize, cout: usize) -> Result<Op> {
        Ok(Op::Conv {
            pre: Some(GroupNorm::new(
                vb.pp("conv_norm_out"),
                cin,
                self.norm_num_groups,
                1e-6,
            )?),
            conv: Conv2d::same3(vb.pp("conv_out"), cin, cout)?,
            sampling: Sampling::Same,
        })
    }
}

/// Image (B,3,H,W) in [-1,1] to the latent distribution's parameters (B, 2L, H/8, W/8).
pub struct Encoder {
    pub ops: Vec<Op>,
    pub groups: usize,
}

impl Encoder {
    /// `vb` is the VAE root (weights under `encoder.` and `quant_conv.`).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let e = vb.pp("encoder");
        let z = 2 * cfg.latent_channels;
        let mut ops = vec![Op::conv(
            Conv2d::same3(e.pp("conv_in"), cfg.in_channels, ch[0])?,
            Sampling::Same,
        )];
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let b = e.pp(format!("down_blocks.{i}"));
            ops.extend(cfg.resnets(&b, cfg.layers_per_block, cin, cout)?);
            if i + 1 < ch.len() {
                let conv = Conv2d::new(b.pp("downsamplers.0.conv"), cout, cout, 3, 2, 0)?;
                ops.push(Op::conv(conv, Sampling::Down2));
            }
            cin = cout;
        }
        let last = *ch.last().expect("at least one block");
        ops.extend(cfg.mid(e.pp("mid_block"), last)?);
        ops.push(cfg.norm_out(e, last, z)?);
        if cfg.use_quant_conv {
            ops.push(Op::conv(
                Conv2d::point(vb.pp("quant_conv"), z, z)?,
                Sampling::Point,
            ));
        }
        Ok(Self {
            ops,
            groups: cfg.norm_num_groups,
        })
    }

    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        program::run(&self.ops, image)
    }
}

/// Latents already divided by the scaling factor (B,L,h,w) to an image (B,3,8h,8w) in ~[-1,1].
pub struct Decoder {
    pub ops: Vec<Op>,
    pub groups: usize,
}

impl Decoder {
    /// `vb` is the VAE root (weights under `decoder.` and `post_quant_conv.`).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().cloned().collect();
        let d = vb.pp("decoder");
        let l = cfg.latent_channels;
        let mut ops = Vec::new();
        if cfg.use_post_quant_conv {
            let conv = Conv2d::point(vb.pp("post_quant_conv"), l, l)?;
            ops.push(Op::conv(conv, Sampling::Point));
        }
        ops.push(Op::conv(
            Conv2d::same3(d.pp("conv_in"), l, rev[0])?,
            Sampling::Same,
        ));
        ops.extend(cfg.mid(d.pp("mid_block"), rev[0])?);
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let b = d.pp(format!("up_blocks.{i}"));
            ops.extend(cfg.resnets(&b, cfg.layers_per_block + 1, cin, cout)?);
            if i + 1 < rev.len() {
                let conv = Conv2d::same3(b.pp("upsamplers.0.conv"), cout, cout)?;
                ops.push(Op::conv(conv, Sampling::Up2));
            }
            cin = cout;
        }
        ops.push(cfg.norm_out(d, cfg.block_out_channels[0], cfg.out_channels)?);
        Ok(Self {
            ops,
            groups: cfg.norm_num_groups,
        })
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        program::run(&self.ops, z)
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
