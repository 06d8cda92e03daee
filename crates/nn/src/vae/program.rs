//! The VAE described once: the encoder and the decoder are each a flat program of [`Op`]s, run
//! by two executors, [`run`] here for a whole image and `tiled` for an image of any size at
//! the memory of one tile.

use crate::layers::{heads, Conv2d, Fused, GroupNorm, Linear, ResnetBlock};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// How a convolution maps input pixels to output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// 3x3, stride 1, zero padding 1.
    Same,
    /// 1x1.
    Point,
    /// Nearest 2x upsampling, then `Same`.
    Up2,
    /// Pad right and bottom by 1, then 3x3 stride 2 (diffusers' VAE downsampler).
    Down2,
}

/// One step of a VAE program.
pub enum Op {
    /// A convolution, after GroupNorm and SiLU when `pre` is given.
    Conv {
        pre: Option<GroupNorm>,
        conv: Conv2d,
        sampling: Sampling,
    },
    Resnet(Box<ResnetBlock>),
    Attention(AttentionBlock),
}

/// The mid block's single-head self-attention over all pixels, with its residual.
pub struct AttentionBlock {
    pub norm: GroupNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
}

/// Bytes of attention scores alive at once in a VAE pass (whole or per band of queries).
pub(super) const ATTENTION_BUDGET: usize = 64 << 20;

impl AttentionBlock {
    pub fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        // Checkpoints saved by older diffusers name the projections query/key/value/proj_attn.
        let old = vb.contains_tensor("query.weight");
        let name = |new: &'static str, legacy: &'static str| if old { legacy } else { new };
        Ok(Self {
            norm: GroupNorm::new(vb.pp("group_norm"), c, groups, 1e-6)?,
            q: Linear::new(vb.pp(name("to_q", "query")), c, c, true)?,
            k: Linear::new(vb.pp(name("to_k", "key")), c, c, true)?,
            v: Linear::new(vb.pp(name("to_v", "value")), c, c, true)?,
            out: Linear::new(vb.pp(name("to_out.0", "proj_attn")), c, c, true)?,
        })
    }

    /// Whether its attention multiplies in bf16: where the projections' weights are bf16 (the
    /// bf16 path), whole (`heads`) and tiled (the held keys) alike.
    pub fn bf16_products(&self) -> bool {
        self.q.weight_dtype() == candle_core::DType::BF16
    }

    /// The scale applied to queries: one head of `c` channels.
    pub fn scale(&self) -> Result<f64> {
        Ok((self.q.out_features() as f64).powf(-0.5))
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
        let q = self.q.forward(&tokens)?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let y = heads(
            &q,
            &k,
            &v,
            1,
            self.scale()?,
            ATTENTION_BUDGET,
            self.bf16_products(),
        )?;
        let y = self
            .out
            .forward(&y)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        x + y
    }
}

impl Op {
    pub fn conv(conv: Conv2d, sampling: Sampling) -> Self {
        Op::Conv {
            pre: None,
            conv,
            sampling,
        }
    }

    /// Whether it multiplies in bf16: its values need no more than bf16 between layers.
    pub fn bf16_products(&self) -> bool {
        match self {
            Op::Conv { conv, .. } => conv.bf16_products(),
            Op::Resnet(r) => r.conv1.bf16_products(),
            Op::Attention(a) => a.bf16_products() && crate::kernels::bf16::available(),
        }
    }

    /// Run on a whole image.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Op::Conv {
                pre,
                conv,
                sampling,
            } => {
                let pre = pre.as_ref().map(|n| n.affine(x, None, true)).transpose()?;
                let fused = Fused {
                    pre: pre.as_ref(),
                    upsample: *sampling == Sampling::Up2,
                    padding: (*sampling == Sampling::Down2).then_some((0, 1, 0, 1)),
                    ..Default::default()
                };
                conv.forward_fused(x, fused)
            }
            Op::Resnet(r) => r.forward(x, None),
            Op::Attention(a) => a.forward(x),
        }
    }
}

/// The whole-image executor: every op in turn.
pub fn run(ops: &[Op], x: &Tensor) -> Result<Tensor> {
    ops.iter().try_fold(x.clone(), |x, op| op.forward(&x))
}
