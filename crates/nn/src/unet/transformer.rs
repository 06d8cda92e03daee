//! Transformer2DModel: spatial self-attention, cross-attention to the text, GEGLU feed-forward,
//! with the shared budgeted attention (at most `budget` bytes of scores alive, whatever the
//! number of tokens).

use crate::layers::{attend, Conv2d, GroupNorm, LayerNorm};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, dim, vb.pp("to_out.0"))?,
            heads,
            head_dim,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, budget: usize) -> Result<Tensor> {
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, n, _) = t.dims3()?;
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.to_q.forward(x)?)?;
        let k = split(self.to_k.forward(context)?)?;
        let v = split(self.to_v.forward(context)?)?;
        let y = attend(&q, &k, &v, (self.head_dim as f64).powf(-0.5), budget)?;
        let (b, _, n, _) = y.dims4()?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, n, self.heads * self.head_dim))?;
        self.to_out.forward(&y)
    }
}

struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    /// GEGLU feed-forward, a chunk of tokens at a time so that its 8x-wide hidden state
    /// stays within `budget` bytes (rows are independent: chunking changes values only by
    /// the float rounding of a different matmul summation order).
    fn forward(&self, x: &Tensor, budget: usize) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let hidden_bytes_per_token = b * self.proj.weight().dim(0)? * 4 * 2;
        let chunk = (budget / hidden_bytes_per_token.max(1)).clamp(1, n);
        if chunk == n {
            return self.forward_all(x);
        }
        let parts = (0..n)
            .step_by(chunk)
            .map(|start| self.forward_all(&x.narrow(1, start, chunk.min(n - start))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    fn forward_all(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let parts = h.chunk(2, D::Minus1)?;
        // GEGLU with the exact (erf) GELU, as diffusers.
        self.out.forward(&(&parts[0] * parts[1].gelu_erf()?)?)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, budget: usize) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (self.attn1.forward(&h, &h, budget)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, context, budget)?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?, budget)? + x
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Spatial transformer: norm, project in, transformer blocks over the h·w tokens, project out.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

pub struct TransformerConfig {
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl Transformer2D {
    pub fn new(vb: VarBuilder, channels: usize, c: &TransformerConfig) -> Result<Self> {
        let proj = |name: &str| -> Result<Projection> {
            Ok(if c.linear_projection {
                Projection::Linear(linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Conv(Conv2d::point(vb.pp(name), channels, channels)?)
            })
        };
        let blocks = (0..c.layers)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    channels,
                    c.context_dim,
                    c.heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), channels, c.groups, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor, budget: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let from_tokens = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let normed = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Projection::Conv(p) => to_tokens(p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context, budget)?;
        }
        let y = match &self.proj_out {
            Projection::Conv(p) => p.forward(&from_tokens(t)?)?,
            Projection::Linear(p) => from_tokens(p.forward(&t)?)?,
        };
        y + x
    }
}
