//! Transformer2DModel: spatial self-attention, cross-attention to the text, GEGLU feed-forward,
//! with the shared budgeted attention (at most `budget` bytes of scores alive, whatever the
//! number of tokens).

use crate::kernels;
use crate::layers::{heads, Conv2d, Fused, GroupNorm, LayerNorm, Linear};
use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

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
            to_q: Linear::new(vb.pp("to_q"), dim, inner, false)?,
            to_k: Linear::new(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::new(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::new(vb.pp("to_out.0"), inner, dim, true)?,
            heads,
            head_dim,
        })
    }

    /// Attention of `x` to `context`, plus `residual`.
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        residual: &Tensor,
        budget: usize,
    ) -> Result<Tensor> {
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        trace(&q, "    q, k, v");
        let scale = (self.head_dim as f64).powf(-0.5);
        // Projections that multiply in bf16 make an attention that does too.
        let bf16 = self.to_q.weight_dtype() == candle_core::DType::BF16;
        let y = heads(&q, &k, &v, self.heads, scale, budget, bf16)?;
        trace(&q, "    softmax(q kT) v");
        self.to_out.forward_residual(&y, Some(residual))
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
            proj: Linear::new(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::new(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// GEGLU feed-forward, a chunk of tokens at a time so that its 8x-wide hidden state
    /// stays within `budget` bytes (rows are independent: chunking changes values only by
    /// the float rounding of a different matmul summation order).
    /// The feed-forward of `x`, plus `residual`.
    fn forward(&self, x: &Tensor, residual: &Tensor, budget: usize) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let hidden_bytes_per_token = b * self.proj.out_features() * 4 * 2;
        let chunk = (budget / hidden_bytes_per_token.max(1)).clamp(1, n);
        if chunk == n {
            return self.forward_all(x, residual);
        }
        let parts = (0..n)
            .step_by(chunk)
            .map(|start| {
                let len = chunk.min(n - start);
                let res = residual.narrow(1, start, len)?.contiguous()?;
                self.forward_all(&x.narrow(1, start, len)?.contiguous()?, &res)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    fn forward_all(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let inner = h.dim(D::Minus1)? / 2;
        // GEGLU with the exact (erf) GELU, as diffusers.
        let gated = match kernels::usable(&h) {
            true => {
                let mut dims = h.dims().to_vec();
                *dims.last_mut().expect("a last dimension") = inner;
                kernels::with_f32(&h, |hs| {
                    // Rows spread over the threads: serial, GEGLU was a sixth of the time
                    // the other core sat idle in a UNet step.
                    kernels::new_f32(dims, |out| {
                        out.par_chunks_mut(inner)
                            .zip(hs.par_chunks(2 * inner))
                            .with_min_len(16)
                            .for_each(|(o, row)| {
                                kernels::math::geglu(&row[..inner], &row[inner..], o)
                            })
                    })
                })??
            }
            false => match gpu_geglu(&h) {
                Some(gated) => gated?,
                None => {
                    let parts = h.chunk(2, D::Minus1)?;
                    (&parts[0] * parts[1].gelu_erf()?)?
                }
            },
        };
        self.out.forward_residual(&gated, Some(residual))
    }
}

/// GEGLU by tessera's CUDA kernel, where it runs for `h`.
fn gpu_geglu(h: &Tensor) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    return crate::layers::cuda_kernels::geglu(h);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = h;
        None
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
        let trace = |what: &'static str| trace(x, what);
        let h = self.norm1.forward(x)?;
        trace("norm1");
        let x = self.attn1.forward(&h, &h, x, budget)?;
        trace("self-attention");
        let h = self.norm2.forward(&x)?;
        trace("norm2");
        let x = self.attn2.forward(&h, context, &x, budget)?;
        trace("cross-attention");
        let h = self.norm3.forward(&x)?;
        trace("norm3");
        let x = self.ff.forward(&h, &x, budget)?;
        trace("feed-forward");
        Ok(x)
    }
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// A device trace point inside a transformer layer (`TESSERA_DEVICE_TRACE`).
fn trace(x: &Tensor, what: &'static str) {
    crate::device_memory::trace(x.device(), || format!("  transformer {what}"));
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
                Projection::Linear(Linear::new(vb.pp(name), channels, channels, true)?)
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
        let to_tokens = |t: Tensor| kernels::transpose12(&t.reshape((b, c, h * w))?);
        let from_tokens = |t: Tensor| kernels::transpose12(&t)?.reshape((b, c, h, w));
        let norm = self.norm.affine(x, None, false)?;
        let mut t = match &self.proj_in {
            Projection::Conv(p) => {
                let fused = Fused {
                    pre: Some(&norm),
                    ..Default::default()
                };
                to_tokens(p.forward_fused(x, fused)?)?
            }
            Projection::Linear(p) => p.forward(&to_tokens(norm.apply(x)?)?)?,
        };
        trace(&t, "norm+proj_in");
        for block in &self.blocks {
            t = block.forward(&t, context, budget)?;
        }
        match &self.proj_out {
            Projection::Conv(p) => {
                let fused = Fused {
                    residual: Some(x),
                    ..Default::default()
                };
                p.forward_fused(&from_tokens(t)?, fused)
            }
            Projection::Linear(p) => from_tokens(p.forward(&t)?)? + x,
        }
    }
}
