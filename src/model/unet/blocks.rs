//! The UNet's down, mid and up blocks: resnets, optional spatial transformers, resampling.

use super::attention::{Transformer2D, TransformerConfig};
use super::resnet::{conv3, ResnetBlock, ResnetConfig};
use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, VarBuilder};

/// Per-block settings resolved from the UNet config.
pub struct BlockSpec {
    pub cin: usize,
    pub cout: usize,
    pub layers: usize,
    /// `Some` for cross-attention blocks.
    pub transformer: Option<TransformerConfig>,
    pub resample: bool,
}

fn transformer(
    vb: VarBuilder,
    i: usize,
    c: usize,
    spec: &BlockSpec,
) -> Result<Option<Transformer2D>> {
    spec.transformer
        .as_ref()
        .map(|t| Transformer2D::new(vb.pp(format!("attentions.{i}")), c, t))
        .transpose()
}

pub struct DownBlock {
    layers: Vec<(ResnetBlock, Option<Transformer2D>)>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        rc: &ResnetConfig,
        padding: usize,
    ) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| {
                let cin = if i == 0 { spec.cin } else { spec.cout };
                let resnet = ResnetBlock::new(vb.pp(format!("resnets.{i}")), cin, spec.cout, rc)?;
                Ok((resnet, transformer(vb.clone(), i, spec.cout, spec)?))
            })
            .collect::<Result<_>>()?;
        let cfg = Conv2dConfig {
            stride: 2,
            padding,
            ..Default::default()
        };
        let downsample = spec
            .resample
            .then(|| conv2d(spec.cout, spec.cout, 3, cfg, vb.pp("downsamplers.0.conv")))
            .transpose()?;
        Ok(Self { layers, downsample })
    }

    /// Returns the output and the skip connections it produced.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        budget: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut skips = Vec::new();
        for (resnet, attn) in &self.layers {
            x = resnet.forward(&x, temb)?;
            if let Some(a) = attn {
                x = a.forward(&x, ctx, budget)?;
            }
            skips.push(x.clone());
        }
        if let Some(d) = &self.downsample {
            x = d.forward(&x)?;
            skips.push(x.clone());
        }
        Ok((x, skips))
    }
}

pub struct MidBlock {
    res0: ResnetBlock,
    attn: Transformer2D,
    res1: ResnetBlock,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, c: usize, t: &TransformerConfig, rc: &ResnetConfig) -> Result<Self> {
        Ok(Self {
            res0: ResnetBlock::new(vb.pp("resnets.0"), c, c, rc)?,
            attn: Transformer2D::new(vb.pp("attentions.0"), c, t)?,
            res1: ResnetBlock::new(vb.pp("resnets.1"), c, c, rc)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        ctx: &Tensor,
        budget: usize,
    ) -> Result<Tensor> {
        let x = self.res0.forward(x, temb)?;
        let x = self.attn.forward(&x, ctx, budget)?;
        self.res1.forward(&x, temb)
    }
}

pub struct UpBlock {
    layers: Vec<(ResnetBlock, Option<Transformer2D>)>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    /// `skip_channels[i]`: channels of the skip connection concatenated before resnet i;
    /// `prev` is the channel count coming from the block below.
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        prev: usize,
        skip_channels: &[usize],
        rc: &ResnetConfig,
    ) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| {
                let cin = if i == 0 { prev } else { spec.cout } + skip_channels[i];
                let resnet = ResnetBlock::new(vb.pp(format!("resnets.{i}")), cin, spec.cout, rc)?;
                Ok((resnet, transformer(vb.clone(), i, spec.cout, spec)?))
            })
            .collect::<Result<_>>()?;
        let upsample = spec
            .resample
            .then(|| conv3(spec.cout, spec.cout, vb.pp("upsamplers.0.conv")))
            .transpose()?;
        Ok(Self { layers, upsample })
    }

    /// Consumes skips from the end of `skips`; upsamples to `target` (h, w) when given.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        ctx: &Tensor,
        budget: usize,
        target: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (resnet, attn) in &self.layers {
            let skip = skips.pop().expect("one skip connection per up resnet");
            x = resnet.forward(&Tensor::cat(&[&x, &skip], 1)?, temb)?;
            if let Some(a) = attn {
                x = a.forward(&x, ctx, budget)?;
            }
        }
        if let Some(conv) = &self.upsample {
            let (_, _, h, w) = x.dims4()?;
            let (th, tw) = target.unwrap_or((2 * h, 2 * w));
            x = conv.forward(&x.upsample_nearest2d(th, tw)?)?;
        }
        Ok(x)
    }
}
