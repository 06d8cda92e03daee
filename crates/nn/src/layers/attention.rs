//! Softmax attention, written once for every network: scores in f32 whatever the activations'
//! dtype, and never more than a budget of scores alive at once, whatever the number of tokens
//! (4096 for a 512 px UNet window, 65536 for a 2048 px VAE mid block).
//!
//! [`heads`] is what the networks call: token tensors `(B, N, heads·d)` in, the same out; on
//! host f32 tensors it runs the blocked kernel ([`crate::kernels::attention`], heads read by
//! stride, no transposes), elsewhere [`attend`] on split heads. [`OnlineSoftmax`] takes keys
//! in blocks (the tiled VAE streams them from disk) with a running max and sum, so the result
//! is exact either way.

use crate::kernels;
use candle_core::{DType, Result, Tensor, D};

pub use tessera_core::choices::DEFAULT_ATTENTION_BUDGET;

/// Multi-head attention of token tensors: `q` (B, N, heads·d), `k` and `v` (B, M, heads·d);
/// `bf16`: products in bf16 (f32 scores and sums) on CPUs with AVX512_BF16.
pub fn heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    budget: usize,
    bf16: bool,
) -> Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    let m = k.dim(1)?;
    let d = c / heads;
    if [q, k, v].iter().all(|t| kernels::usable(t)) {
        let shape = kernels::attention::Shape {
            batch: b,
            n,
            m,
            heads,
            d,
        };
        return kernels::with_f32(q, |qs| {
            kernels::with_f32(k, |ks| {
                kernels::with_f32(v, |vs| {
                    kernels::new_f32((b, n, c), |out| match kernels::flash::applies() {
                        // Against a few keys (the text's 77) laying them out costs more
                        // than bf16 saves: 88 against 113 GFLOP/s (`bench kernels`, EPYC).
                        _ if bf16 && m >= 256 && kernels::bf16::available() => {
                            kernels::flash_bf16::attention(qs, ks, vs, shape, scale as f32, out)
                        }
                        true => kernels::flash::attention(qs, ks, vs, shape, scale as f32, out),
                        false => kernels::attention::attention(
                            qs,
                            ks,
                            vs,
                            shape,
                            scale as f32,
                            budget,
                            out,
                        ),
                    })
                })
            })
        })???;
    }
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let y = attend(&split(q, n)?, &split(k, m)?, &split(v, m)?, scale, budget)?;
    y.transpose(1, 2)?.reshape((b, n, c))
}

/// softmax(q kᵀ · scale) v over (B, heads, n, d) tensors, a chunk of queries at a time so that
/// at most `budget` bytes of f32 scores are alive. Returns v's dtype.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, budget: usize) -> Result<Tensor> {
    let dtype = v.dtype();
    let keys = HeldKeys::new(k, v)?;
    keys.attend(q, scale, budget)?.to_dtype(dtype)
}

/// Keys and values laid out for [`attend`] once (keys transposed, both in the compute
/// dtype), for callers that attend many query blocks to the same keys: the tiled VAE's
/// mid-block attention held a transposed and a split copy of all keys per query band on a
/// GPU, 0.8 GiB beyond its estimate for a 2048² image.
///
/// The compute dtype is f32, except for half-precision tensors on a GPU: there the products
/// run on tensor cores in half precision with f32 accumulation, the scores are rounded to
/// half precision and the softmax sums in f32 (diffusers' classic attention does the same);
/// f32 products there ran at a fraction of the tensor cores' rate.
pub struct HeldKeys {
    /// (B, heads, d, m), contiguous.
    kt: Tensor,
    /// (B, heads, m, d).
    v: Tensor,
}

/// The dtype [`HeldKeys`] computes in for tensors of `dtype` on `device`.
fn compute_dtype(dtype: DType, device: &candle_core::Device) -> DType {
    match (device.is_cpu(), dtype) {
        (false, DType::F16 | DType::BF16) => dtype,
        _ => DType::F32,
    }
}

impl HeldKeys {
    /// `k`, `v` (B, heads, m, d); at most one extra copy of either is alive while building.
    pub fn new(k: &Tensor, v: &Tensor) -> Result<Self> {
        let dtype = compute_dtype(k.dtype(), k.device());
        Ok(Self {
            kt: k.to_dtype(dtype)?.t()?.contiguous()?,
            v: v.to_dtype(dtype)?,
        })
    }

    /// [`attend`] of `q` (B, heads, n, d) to these keys, in the compute dtype.
    pub fn attend(&self, q: &Tensor, scale: f64, budget: usize) -> Result<Tensor> {
        let (b, h, n, _) = q.dims4()?;
        let (kt, v) = (&self.kt, &self.v);
        let m = kt.dim(3)?;
        let chunk = (budget / (kt.dtype().size_in_bytes() * b * h * m).max(1)).clamp(1, n);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let qc = (q.narrow(2, start, len)?.to_dtype(kt.dtype())? * scale)?;
            let probs = softmax_last_dim(&qc.matmul(kt)?)?;
            parts.push(probs.matmul(v)?);
        }
        match parts.len() {
            1 => Ok(parts.remove(0)),
            _ => Tensor::cat(&parts, 2),
        }
    }
}

/// Softmax over the last dimension: tessera's kernel on CUDA (three times fewer passes over the
/// scores than candle's), candle's elsewhere.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    return super::cuda_kernels::softmax_last_dim(x);
    #[cfg(not(feature = "cuda"))]
    candle_nn::ops::softmax_last_dim(x)
}

/// Attention of fixed queries (n, d) over keys and values given in blocks, exact: a running
/// max `m`, running sum `l` and accumulator per query, rescaled as each block arrives.
pub struct OnlineSoftmax {
    /// Queries already multiplied by the scale.
    q: Tensor,
    m: Tensor,
    l: Tensor,
    acc: Tensor,
}

impl OnlineSoftmax {
    /// `q` (n, d) in f32, already scaled; values have `dv` columns.
    pub fn new(q: Tensor, dv: usize) -> Result<Self> {
        let n = q.dim(0)?;
        Ok(Self {
            m: Tensor::full(f32::NEG_INFINITY, (n, 1), q.device())?,
            l: Tensor::zeros((n, 1), DType::F32, q.device())?,
            acc: Tensor::zeros((n, dv), DType::F32, q.device())?,
            q,
        })
    }

    /// Fold in a block of keys (m, d) and values (m, dv).
    pub fn add(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let s = self.q.matmul(&k.t()?)?;
        let m_new = self.m.maximum(&s.max_keepdim(D::Minus1)?)?;
        let p = s.broadcast_sub(&m_new)?.exp()?;
        let correction = (&self.m - &m_new)?.exp()?;
        self.l = (self.l.mul(&correction)? + p.sum_keepdim(D::Minus1)?)?;
        self.acc = (self.acc.broadcast_mul(&correction)? + p.matmul(v)?)?;
        self.m = m_new;
        Ok(())
    }

    /// The attention output (n, dv).
    pub fn finish(self) -> Result<Tensor> {
        self.acc.broadcast_div(&self.l)
    }
}

/// Whether attention on `rt` materialises chunks of scores (candle's path: GPUs, half
/// precision, CPUs without AVX-512) rather than streaming them (the flash kernel).
pub fn materialises_scores(rt: &crate::Runtime) -> bool {
    !(rt.device.is_cpu()
        && rt.conv_dtype() == DType::F32
        && kernels::enabled()
        && kernels::flash::applies())
}
