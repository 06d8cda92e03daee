//! VAE building blocks: resnet, single-head attention (query-chunked so its memory stays
//! bounded at any size), 2x down- and upsampling.

use super::norm::GroupNorm;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, VarBuilder};

pub struct ResnetBlock {
    pub(super) norm1: GroupNorm,
    pub(super) conv1: Conv2d,
    pub(super) norm2: GroupNorm,
    pub(super) conv2: Conv2d,
    pub(super) shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cin, groups, 1e-6)?,
            conv1: super::conv3(cin, cout, vb.pp("conv1"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), cout, groups, 1e-6)?,
            conv2: super::conv3(cout, cout, vb.pp("conv2"))?,
            shortcut: (cin != cout)
                .then(|| conv2d(cin, cout, 1, Default::default(), vb.pp("conv_shortcut")))
                .transpose()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(&candle_nn::ops::silu(&self.norm1.forward(x)?)?)?;
        let h = self
            .conv2
            .forward(&candle_nn::ops::silu(&self.norm2.forward(&h)?)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Bytes of attention scores allowed alive at once (per query chunk).
const ATTENTION_BUDGET: usize = 64 << 20;

pub struct Attention {
    pub(super) norm: GroupNorm,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) out: Linear,
}

impl Attention {
    pub fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        // Checkpoints saved by older diffusers name the projections query/key/value/proj_attn.
        let old = vb.contains_tensor("query.weight");
        let name = |new: &'static str, legacy: &'static str| if old { legacy } else { new };
        Ok(Self {
            norm: GroupNorm::new(vb.pp("group_norm"), c, groups, 1e-6)?,
            q: linear(c, c, vb.pp(name("to_q", "query")))?,
            k: linear(c, c, vb.pp(name("to_k", "key")))?,
            v: linear(c, c, vb.pp(name("to_v", "value")))?,
            out: linear(c, c, vb.pp(name("to_out.0", "proj_attn")))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let tokens = self
            .norm
            .forward(x)?
            .reshape((b, c, n))?
            .transpose(1, 2)?
            .contiguous()?;
        let dtype = tokens.dtype();
        let q = (self.q.forward(&tokens)?.to_dtype(DType::F32)? * (c as f64).powf(-0.5))?;
        let k = self
            .k
            .forward(&tokens)?
            .to_dtype(DType::F32)?
            .t()?
            .contiguous()?;
        let v = self.v.forward(&tokens)?.to_dtype(DType::F32)?;
        // Softmax attention over all tokens, a chunk of queries at a time.
        let chunk = (ATTENTION_BUDGET / (4 * n * b)).clamp(1, n);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let scores = q.narrow(1, start, len)?.matmul(&k)?;
            parts.push(candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?);
        }
        let y = Tensor::cat(&parts, 1)?.to_dtype(dtype)?;
        let y = self
            .out
            .forward(&y)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        x + y
    }
}

/// Pad right and bottom by one, then a stride-2 convolution (diffusers' VAE downsampler).
pub struct Downsample {
    pub(super) conv: Conv2d,
}

impl Downsample {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(
                c,
                c,
                3,
                Conv2dConfig {
                    stride: 2,
                    ..Default::default()
                },
                vb,
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv
            .forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)
    }
}

/// Nearest-neighbour 2x, then a 3x3 convolution.
pub struct Upsample {
    pub(super) conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            conv: super::conv3(c, c, vb)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}
