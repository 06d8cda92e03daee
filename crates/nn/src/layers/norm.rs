//! Normalisations computed in f32 whatever the weights' dtype (f16 variance overflows). The
//! GroupNorm's statistics are separable from the normalisation, so that a tiled pass can
//! normalise every tile with the statistics of the whole image.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Per-group sums over some pixels: enough to pool the statistics of many tiles exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
    pub count: u64,
}

impl GroupStats {
    pub fn new(groups: usize) -> Self {
        Self {
            sum: vec![0.0; groups],
            sum_sq: vec![0.0; groups],
            count: 0,
        }
    }

    /// Add the pixels of `x` (1, C, h, w).
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let g = self.sum.len();
        let (_, c, h, w) = x.dims4()?;
        let xg = x.to_dtype(DType::F64)?.reshape((g, (c / g) * h * w))?;
        let sums: Vec<f64> = xg.sum(1)?.to_vec1()?;
        let sqs: Vec<f64> = xg.sqr()?.sum(1)?.to_vec1()?;
        for i in 0..g {
            self.sum[i] += sums[i];
            self.sum_sq[i] += sqs[i];
        }
        self.count += ((c / g) * h * w) as u64;
        Ok(())
    }

    /// Per-group (mean, variance), biased as GroupNorm uses it.
    pub fn mean_var(&self) -> Vec<(f64, f64)> {
        let n = self.count as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let mean = s / n;
                (mean, (q / n - mean * mean).max(0.0))
            })
            .collect()
    }
}

/// GroupNorm over (B, C, H, W) with f32 statistics (the UNet's and the VAE's).
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `vb` holds `weight` and `bias` of `channels` values.
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(channels, "bias")?.to_dtype(DType::F32)?,
            groups,
            eps,
        })
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Normalise with the tensor's own statistics (the untiled path).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let (b, c, h, w) = x.dims4()?;
        let xg = x
            .to_dtype(DType::F32)?
            .reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(2)?;
        let centred = xg.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape((b, c, h, w))?;
        let shape = (1, c, 1, 1);
        normed
            .broadcast_mul(&self.weight.reshape(shape)?)?
            .broadcast_add(&self.bias.reshape(shape)?)?
            .to_dtype(dtype)
    }

    /// Normalise with given (pooled) statistics: a per-channel scale and shift.
    pub fn forward_with(&self, x: &Tensor, stats: &GroupStats) -> Result<Tensor> {
        let dtype = x.dtype();
        let c = x.dim(1)?;
        let per_group = c / self.groups;
        let mv = stats.mean_var();
        let w: Vec<f32> = self.weight.to_vec1()?;
        let b: Vec<f32> = self.bias.to_vec1()?;
        let (mut scale, mut shift) = (vec![0f32; c], vec![0f32; c]);
        for ch in 0..c {
            let (mean, var) = mv[ch / per_group];
            let s = w[ch] as f64 / (var + self.eps).sqrt();
            scale[ch] = s as f32;
            shift[ch] = (b[ch] as f64 - mean * s) as f32;
        }
        let scale = Tensor::from_vec(scale, (1, c, 1, 1), x.device())?;
        let shift = Tensor::from_vec(shift, (1, c, 1, 1), x.device())?;
        x.to_dtype(DType::F32)?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?
            .to_dtype(dtype)
    }
}

/// LayerNorm over the last dimension with f32 statistics (the transformer's and CLIP's).
pub struct LayerNorm(candle_nn::LayerNorm);

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let w = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        let b = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
        Ok(Self(candle_nn::LayerNorm::new(w, b, eps)))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0
            .forward(&x.to_dtype(DType::F32)?)?
            .to_dtype(x.dtype())
    }
}
