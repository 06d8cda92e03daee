//! Normalisations with f32 (or better) statistics whatever the weights' dtype (f16 variance
//! overflows). A GroupNorm is computed as statistics, then a per-channel affine map
//! ([`Affine`]) that the next convolution applies on its input side; the statistics can be
//! pooled from the tiles of a larger image ([`GroupStats`]), so a tiled pass normalises every
//! tile with the statistics of the whole image.

use super::conv::{Affine, DeviceNorm};
use crate::kernels;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Per-channel sums over some pixels of one image: enough to pool the statistics of many
/// tiles exactly (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// `(sum, sum of squares)` per channel.
    pub channels: Vec<(f64, f64)>,
    /// Pixels summed per channel.
    pub count: u64,
}

impl GroupStats {
    pub fn new(channels: usize) -> Self {
        Self {
            channels: vec![(0.0, 0.0); channels],
            count: 0,
        }
    }

    /// The statistics of `x` (1, C, h, w) alone.
    pub fn of(x: &Tensor) -> Result<Self> {
        let mut s = Self::new(x.dim(1)?);
        s.add(x)?;
        Ok(s)
    }

    /// Add the pixels of `x` (1, C, h, w).
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let (_, c, h, w) = x.dims4()?;
        let sums = match kernels::usable(x) {
            true => kernels::with_f32(x, |v| kernels::norm::channel_sums(v, h * w))?,
            false => {
                let x = x.to_dtype(DType::F64)?.reshape((c, h * w))?;
                let s: Vec<f64> = x.sum(1)?.to_vec1()?;
                let q: Vec<f64> = x.sqr()?.sum(1)?.to_vec1()?;
                s.into_iter().zip(q).collect()
            }
        };
        for (acc, (s, q)) in self.channels.iter_mut().zip(sums) {
            acc.0 += s;
            acc.1 += q;
        }
        self.count += (h * w) as u64;
        Ok(())
    }
}

/// GroupNorm over (B, C, H, W) (the UNet's and the VAE's).
pub struct GroupNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// `gamma` and `beta` (C, 1, 1) f32 on the weights' device, when that is a GPU.
    on_device: Option<(Tensor, Tensor)>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `vb` holds `weight` and `bias` of `channels` values.
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let (gamma, beta) = (vb.get(channels, "weight")?, vb.get(channels, "bias")?);
        let host = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let on_device = match gamma.device().is_cpu() {
            true => None,
            false => Some((
                gamma.to_dtype(DType::F32)?.reshape((channels, 1, 1))?,
                beta.to_dtype(DType::F32)?.reshape((channels, 1, 1))?,
            )),
        };
        Ok(Self {
            gamma: host(&gamma)?,
            beta: host(&beta)?,
            on_device,
            groups,
            eps,
        })
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The normalisation as an affine map for statistics pooled elsewhere (one image).
    pub fn affine_with(&self, stats: &GroupStats, silu: bool) -> Affine {
        let (scale, shift) = kernels::norm::group_affine(
            &stats.channels,
            stats.count as usize,
            self.groups,
            &self.gamma,
            &self.beta,
            self.eps,
        );
        Affine {
            channels: scale.len(),
            scale,
            shift,
            silu,
            on_device: None,
        }
    }

    /// The normalisation of `x` (channels concatenated with `concat`, if given), with each
    /// batch item's own statistics, as an affine map (followed by SiLU when `silu`). On a GPU
    /// the map computes the statistics of what it is applied to (the same concatenation).
    pub fn affine(&self, x: &Tensor, concat: Option<&Tensor>, silu: bool) -> Result<Affine> {
        if let Some((gamma, beta)) = &self.on_device {
            return Ok(self.device_affine(gamma, beta, silu));
        }
        let b = x.dim(0)?;
        let mut scale = Vec::new();
        let mut shift = Vec::new();
        for i in 0..b {
            let mut stats = GroupStats::of(&x.narrow(0, i, 1)?.contiguous()?)?;
            if let Some(c) = concat {
                let more = GroupStats::of(&c.narrow(0, i, 1)?.contiguous()?)?;
                stats.channels.extend(more.channels);
            }
            let a = self.affine_with(&stats, silu);
            scale.extend(a.scale);
            shift.extend(a.shift);
        }
        Ok(Affine {
            channels: self.gamma.len(),
            scale,
            shift,
            silu,
            on_device: None,
        })
    }

    /// The map of [`GroupNorm::affine`] on a device: [`DeviceNorm`], no read-back (on a GPU
    /// each read-back stalls the queue: two per norm and batch item, 240 per SD 1.5 UNet
    /// step, were the host path's cost there). `gamma`, `beta`: (C, 1, 1) f32 on the device.
    pub fn device_affine(&self, gamma: &Tensor, beta: &Tensor, silu: bool) -> Affine {
        Affine {
            channels: self.gamma.len(),
            scale: Vec::new(),
            shift: Vec::new(),
            silu,
            on_device: Some(DeviceNorm {
                gamma: gamma.clone(),
                beta: beta.clone(),
                groups: self.groups,
                eps: self.eps,
            }),
        }
    }

    /// Normalise `x` with its own statistics.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.affine(x, None, false)?.apply(x)
    }

    /// Normalise with given (pooled) statistics.
    pub fn forward_with(&self, x: &Tensor, stats: &GroupStats) -> Result<Tensor> {
        self.affine_with(stats, false).apply(x)
    }
}

/// LayerNorm over the last dimension with f32 statistics (the transformer's and CLIP's).
pub struct LayerNorm {
    norm: candle_nn::LayerNorm,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let w = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        let b = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
        Ok(Self {
            gamma: w.to_vec1()?,
            beta: b.to_vec1()?,
            norm: candle_nn::LayerNorm::new(w, b, eps),
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::usable(x) {
            let c = self.gamma.len();
            return kernels::with_f32(x, |v| {
                kernels::new_f32(x.shape().clone(), |out| {
                    kernels::norm::layer_norm(v, c, &self.gamma, &self.beta, self.eps, out)
                })
            })?;
        }
        self.norm
            .forward(&x.to_dtype(DType::F32)?)?
            .to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The GPU's normalisation (device ops) equals the host's, here run on CPU tensors.
    #[test]
    fn device_affine_equals_host_affine() -> Result<()> {
        let dev = Device::Cpu;
        let ramp = |n: usize, k: f32| {
            (0..n)
                .map(|i| (i as f32 * k).sin() * 3.0 + 0.5)
                .collect::<Vec<_>>()
        };
        let (x, skip) = (
            Tensor::from_vec(ramp(2 * 8 * 30, 0.37), (2, 8, 5, 6), &dev)?,
            Tensor::from_vec(ramp(2 * 4 * 30, 0.11), (2, 4, 5, 6), &dev)?,
        );
        let norm = GroupNorm {
            gamma: ramp(12, 0.7),
            beta: ramp(12, 1.3),
            on_device: None,
            groups: 4,
            eps: 1e-5,
        };
        let to_device = |v: &[f32]| Tensor::new(v, &dev)?.reshape((v.len(), 1, 1));
        let (gamma, beta) = (to_device(&norm.gamma)?, to_device(&norm.beta)?);
        let both = Tensor::cat(&[&x, &skip], 1)?;
        let host = norm.affine(&x, Some(&skip), true)?.apply(&both)?;
        let device = norm.device_affine(&gamma, &beta, true).apply(&both)?;
        let diff: f32 = (host - device)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
        assert!(diff < 1e-5, "max |diff| {diff}");
        Ok(())
    }
}
