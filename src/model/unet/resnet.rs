//! The UNet resnet block with its timestep conditioning.

use super::embeddings::{group_norm, F32Norm};
use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

pub fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
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

pub struct ResnetBlock {
    norm1: F32Norm<GroupNorm>,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: F32Norm<GroupNorm>,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale: f64,
}

pub struct ResnetConfig {
    pub groups: usize,
    pub eps: f64,
    pub temb: usize,
    pub output_scale: f64,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, c: &ResnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(vb.pp("norm1"), c.groups, cin, c.eps)?,
            conv1: conv3(cin, cout, vb.pp("conv1"))?,
            time_emb_proj: linear(c.temb, cout, vb.pp("time_emb_proj"))?,
            norm2: group_norm(vb.pp("norm2"), c.groups, cout, c.eps)?,
            conv2: conv3(cout, cout, vb.pp("conv2"))?,
            shortcut: (cin != cout)
                .then(|| conv2d(cin, cout, 1, Default::default(), vb.pp("conv_shortcut")))
                .transpose()?,
            output_scale: c.output_scale,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(&candle_nn::ops::silu(&self.norm1.forward(x)?)?)?;
        let t = self
            .time_emb_proj
            .forward(&candle_nn::ops::silu(temb)?)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let h = self
            .conv2
            .forward(&candle_nn::ops::silu(&self.norm2.forward(&h)?)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}
