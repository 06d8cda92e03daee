//! The resnet block of the UNet and the VAE: GroupNorm, SiLU, 3x3 convolution, twice, with an
//! optional timestep projection added between (UNet) and a 1x1 shortcut when the channel count
//! changes. Each GroupNorm + SiLU runs on the input side of its convolution, the time
//! embedding and the bias start the first one's output, the shortcut starts the second's.

use super::conv::{Conv2d, Fused};
use super::linear::Linear;
use super::norm::GroupNorm;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub struct ResnetConfig {
    pub groups: usize,
    pub eps: f64,
    /// Width of the timestep embedding projected into the block (UNet); `None` in the VAE.
    pub temb: Option<usize>,
    /// The output is divided by this (the UNet's `mid_block_scale_factor`).
    pub output_scale: f64,
}

pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub shortcut: Option<Conv2d>,
    pub output_scale: f64,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, c: &ResnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cin, c.groups, c.eps)?,
            conv1: Conv2d::same3(vb.pp("conv1"), cin, cout)?,
            time_emb_proj: c
                .temb
                .map(|t| Linear::new(vb.pp("time_emb_proj"), t, cout, true))
                .transpose()?,
            norm2: GroupNorm::new(vb.pp("norm2"), cout, c.groups, c.eps)?,
            conv2: Conv2d::same3(vb.pp("conv2"), cout, cout)?,
            shortcut: (cin != cout)
                .then(|| Conv2d::point(vb.pp("conv_shortcut"), cin, cout))
                .transpose()?,
            output_scale: c.output_scale,
        })
    }

    /// `temb` is the timestep embedding (B, T) for a UNet block, `None` for a VAE block.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        self.forward_concat(x, None, temb)
    }

    /// The block on `x` with `skip`'s channels concatenated after its own (the UNet's up path),
    /// read in place rather than copied.
    pub fn forward_concat(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        temb: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&candle_nn::ops::silu(temb)?)?),
            _ => None,
        };
        let pre1 = self.norm1.affine(x, skip, true)?;
        let h = self.conv1.forward_fused(
            x,
            Fused {
                concat: skip,
                pre: Some(&pre1),
                per_channel: t.as_ref(),
                ..Default::default()
            },
        )?;
        let shortcut = match (&self.shortcut, skip) {
            (Some(s), _) => s.forward_fused(
                x,
                Fused {
                    concat: skip,
                    ..Default::default()
                },
            )?,
            (None, Some(skip)) => Tensor::cat(&[x, skip], 1)?,
            (None, None) => x.clone(),
        };
        let pre2 = self.norm2.affine(&h, None, true)?;
        let out = self.conv2.forward_fused(
            &h,
            Fused {
                pre: Some(&pre2),
                residual: Some(&shortcut),
                ..Default::default()
            },
        )?;
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}
