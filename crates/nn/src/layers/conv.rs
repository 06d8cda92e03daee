//! 2-D convolutions: one type for every convolution of every network. On host f32 tensors it
//! runs tessera's kernel ([`crate::kernels::conv`]), which can also read a channel
//! concatenation and a nearest 2x upsampling by index, apply a GroupNorm (+ SiLU) on its input
//! side and start its output from a per-channel term and a residual; elsewhere the same
//! computation is composed from candle's ops.

use crate::kernels::{self, conv as k};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct Conv2d {
    /// `(cout, cin, k, k)`.
    dims: [usize; 4],
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias on the host as f32, for the kernel.
    bias_f32: Option<Vec<f32>>,
    stride: usize,
    padding: usize,
}

/// A convolution's weight as loaded, or, for bf16 weights of a stride-1 convolution on a CPU
/// with AVX512_BF16, packed once for the bf16 kernel ([`kernels::bf16::pack_conv`]) and kept
/// only in that form.
enum Weight {
    Loaded(Tensor),
    Pairs(Vec<u32>),
}

/// A per-(batch item, channel) affine map `x * scale + shift`, optionally followed by SiLU:
/// a GroupNorm (and its activation) in front of a convolution. `scale` and `shift` are
/// `batch x channels`, row-major.
#[derive(Clone, Debug)]
pub struct Affine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub channels: usize,
    pub silu: bool,
    /// On a GPU, the GroupNorm itself, normalising whatever it is applied to with that
    /// tensor's own statistics (then `scale` and `shift` are empty: reading statistics back
    /// would stall the device's queue).
    pub on_device: Option<DeviceNorm>,
}

/// A GroupNorm computed where it is applied, on a GPU: tessera's two kernels (statistics, then
/// normalise + SiLU; [`crate::layers::cuda_kernels`]) where they load, else candle's LayerNorm
/// over each group's values (f32 sums) and per-channel ops. Either way no read-back to the host.
#[derive(Clone, Debug)]
pub struct DeviceNorm {
    /// (C, 1, 1) f32, on the device.
    pub gamma: Tensor,
    pub beta: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl DeviceNorm {
    /// `x` (B, C, H, W) normalised per batch item and group, then `gamma`, `beta`, then SiLU
    /// when `silu`.
    pub fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) =
            super::cuda_kernels::group_norm(x, &self.gamma, &self.beta, self.groups, self.eps, silu)
        {
            return y;
        }
        let (b, c, h, w) = x.dims4()?;
        let n = c / self.groups * h * w;
        let rows = x.contiguous()?.reshape((b * self.groups, n))?;
        let (ones, zeros) = (
            Tensor::ones(n, x.dtype(), x.device())?,
            Tensor::zeros(n, x.dtype(), x.device())?,
        );
        let y = candle_nn::ops::layer_norm(&rows, &ones, &zeros, self.eps as f32)?
            .reshape((b, c, h, w))?
            .broadcast_mul(&self.gamma.to_dtype(x.dtype())?)?
            .broadcast_add(&self.beta.to_dtype(x.dtype())?)?;
        match silu {
            true => candle_nn::ops::silu(&y),
            false => Ok(y),
        }
    }
}

impl Affine {
    /// The map as candle ops (for tensors the kernels do not take).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(norm) = &self.on_device {
            return norm.apply(x, self.silu);
        }
        let shape = (x.dim(0)?, self.channels, 1, 1);
        let scale = Tensor::from_slice(&self.scale, shape, x.device())?;
        let shift = Tensor::from_slice(&self.shift, shape, x.device())?;
        let y = x
            .to_dtype(candle_core::DType::F32)?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?
            .to_dtype(x.dtype())?;
        match self.silu {
            true => candle_nn::ops::silu(&y),
            false => Ok(y),
        }
    }
}

/// What a convolution reads and adds, beyond its input.
#[derive(Default)]
pub struct Fused<'a> {
    /// Channels concatenated after the input's (the UNet's skip connection).
    pub concat: Option<&'a Tensor>,
    /// Nearest 2x upsampling of the input before the convolution.
    pub upsample: bool,
    /// Rows of the (upsampled) input left out at the top and bottom (a band of the tiled VAE
    /// that starts or ends between the two copies of an upsampled row).
    pub crop_rows: (usize, usize),
    /// A GroupNorm (+ SiLU) of the (concatenated) input, applied first.
    pub pre: Option<&'a Affine>,
    /// `(batch, cout)` (or `(1, cout)` for every batch item) values added to every pixel of
    /// each output channel.
    pub per_channel: Option<&'a Tensor>,
    /// A tensor shaped like the output, added to it.
    pub residual: Option<&'a Tensor>,
    /// Zero padding (top, bottom, left, right) instead of the convolution's own.
    pub padding: Option<(usize, usize, usize, usize)>,
}

impl Conv2d {
    /// `k` x `k` kernel from `cin` to `cout` channels with bias.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let bias = vb.get(cout, "bias")?;
        let bias_f32 = match bias.device().is_cpu() {
            true => Some(bias.to_dtype(candle_core::DType::F32)?.to_vec1()?),
            false => None,
        };
        let weight = vb.get((cout, cin, k, k), "weight")?;
        let pairs = match stride == 1 && kernels::bf16::available() {
            true => kernels::bf16::with_host_values(&weight, |w| {
                kernels::bf16::pack_conv(w, cout, cin, k * k)
            }),
            false => None,
        };
        Ok(Self {
            dims: [cout, cin, k, k],
            weight: pairs.map_or(Weight::Loaded(weight), Weight::Pairs),
            bias: Some(bias),
            bias_f32,
            stride,
            padding,
        })
    }

    /// 3x3, stride 1, padding 1: the shape-keeping convolution.
    pub fn same3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 3, 1, 1)
    }

    /// 1x1: a per-pixel linear map.
    pub fn point(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 1, 1, 0)
    }

    pub fn out_channels(&self) -> usize {
        self.dims[0]
    }

    /// The weight as a tensor (unpacked again when packed).
    fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Loaded(w) => Ok(w.clone()),
            Weight::Pairs(pairs) => {
                let [cout, cin, k, _] = self.dims;
                let w = kernels::bf16::unpack_conv(pairs, cout, cin, k * k);
                Tensor::from_vec(w, (cout, cin, k, k), &candle_core::Device::Cpu)
            }
        }
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Whether it multiplies in bf16 (its weight packed for the bf16 kernel).
    pub fn bf16_products(&self) -> bool {
        matches!(self.weight, Weight::Pairs(_))
    }

    /// The convolution with its own padding.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, Fused::default())
    }

    /// The convolution over an input that already carries its halo (padding 0): what a tile
    /// of a larger image needs.
    pub fn forward_unpadded(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(
            x,
            Fused {
                padding: Some((0, 0, 0, 0)),
                ..Default::default()
            },
        )
    }

    /// The convolution with the extras of `f`.
    pub fn forward_fused(&self, x: &Tensor, f: Fused) -> Result<Tensor> {
        let fast = kernels::usable(x)
            && f.concat.is_none_or(kernels::usable)
            && f.per_channel.is_none_or(kernels::usable)
            && f.residual.is_none_or(kernels::usable);
        if let (true, Weight::Pairs(pairs)) = (fast, &self.weight) {
            return self.kernel(x, Kernel::Bf16(pairs), &f);
        }
        let weight = &kernels::in_dtype(&self.weight()?, x.dtype())?;
        match fast && kernels::usable(weight) {
            true => kernels::with_f32(weight, |w| self.kernel(x, Kernel::F32(w), &f))?,
            false => self.composed(x, weight, &f),
        }
    }

    fn geometry(&self, f: &Fused) -> k::Geometry {
        let p = self.padding;
        k::Geometry {
            k: self.dims[2],
            stride: self.stride,
            pad: f.padding.unwrap_or((p, p, p, p)),
        }
    }

    fn kernel(&self, x: &Tensor, weight: Kernel, f: &Fused) -> Result<Tensor> {
        let (b, c1, h, w) = x.dims4()?;
        let c2 = f.concat.map(|c| c.dim(1)).transpose()?.unwrap_or(0);
        if c1 + c2 != self.dims[1] {
            candle_core::bail!(
                "convolution of {} channels applied to {:?}",
                self.dims[1],
                x.shape()
            );
        }
        let cout = self.out_channels();
        let g = self.geometry(f);
        let input_dims = k::seen_dims((h, w), f.upsample, f.crop_rows);
        let (ho, wo) = g.out_dims(input_dims);
        let plane = cout * ho * wo;
        let per_channel = f
            .per_channel
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        kernels::with_f32(x, |xs| {
            let with_concat = |cs: &[f32]| {
                let with_residual = |rs: &[f32]| {
                    kernels::new_f32((b, cout, ho, wo), |out| {
                        for (i, out) in out.chunks_mut(plane).enumerate() {
                            let mut sources = vec![(&xs[i * c1 * h * w..][..c1 * h * w], c1)];
                            if c2 > 0 {
                                sources.push((&cs[i * c2 * h * w..][..c2 * h * w], c2));
                            }
                            let cin = c1 + c2;
                            let pre = f.pre.map(|a| k::Pre {
                                scale: &a.scale[i * cin..(i + 1) * cin],
                                shift: &a.shift[i * cin..(i + 1) * cin],
                                silu: a.silu,
                            });
                            let input = k::Input {
                                sources,
                                h,
                                w,
                                upsample: f.upsample,
                                crop: f.crop_rows,
                                pre,
                            };
                            let init = k::Init {
                                bias: self.bias_f32.as_deref(),
                                // One row serves every batch item (one timestep).
                                per_channel: per_channel.as_deref().map(|p| {
                                    let row = if p.len() == cout { 0 } else { i };
                                    &p[row * cout..(row + 1) * cout]
                                }),
                                residual: (!rs.is_empty()).then(|| &rs[i * plane..][..plane]),
                            };
                            match weight {
                                Kernel::F32(w) => k::conv2d(&input, w, cout, g, init, out),
                                Kernel::Bf16(w) => {
                                    kernels::direct::conv2d_bf16(&input, w, cout, g, init, out)
                                }
                            }
                        }
                    })
                };
                match f.residual {
                    Some(r) => kernels::with_f32(r, with_residual)?,
                    None => with_residual(&[]),
                }
            };
            match f.concat {
                Some(c) => kernels::with_f32(c, with_concat)?,
                None => with_concat(&[]),
            }
        })?
    }

    fn composed(&self, x: &Tensor, weight: &Tensor, f: &Fused) -> Result<Tensor> {
        let mut x = match f.concat {
            Some(c) => Tensor::cat(&[x, c], 1)?,
            None => x.clone(),
        };
        if let Some(pre) = f.pre {
            x = pre.apply(&x)?;
        }
        if f.upsample {
            let (_, _, h, w) = x.dims4()?;
            x = x.upsample_nearest2d(2 * h, 2 * w)?;
        }
        if f.crop_rows != (0, 0) {
            let ((top, bottom), h) = (f.crop_rows, x.dim(2)?);
            x = x.narrow(2, top, h - top - bottom)?.contiguous()?;
        }
        let g = self.geometry(f);
        let (t, b, l, r) = g.pad;
        // Both backends pad symmetrically (candle: one padding for rows and columns).
        let cudnn = cfg!(feature = "cudnn") && x.device().is_cuda();
        let symmetric = t == b && l == r && (t == l || cudnn);
        let (x, pad) = match symmetric {
            true => (x, (t, l)),
            false => (x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?, (0, 0)),
        };
        // Bias and the per-channel term are added in one pass.
        let per_channel = match (&self.bias, f.per_channel) {
            (Some(bias), Some(p)) => Some(
                p.to_dtype(x.dtype())?
                    .broadcast_add(&bias.to_dtype(x.dtype())?)?,
            ),
            (Some(bias), None) => Some(bias.to_dtype(x.dtype())?.unsqueeze(0)?),
            (None, p) => p.map(|p| p.to_dtype(x.dtype())).transpose()?,
        };
        let (y, residual) = self.convolve(&x, weight, pad, f.residual)?;
        let y = match per_channel {
            Some(p) => y.broadcast_add(&p.unsqueeze(2)?.unsqueeze(3)?)?,
            None => y,
        };
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }

    /// The bare convolution, with the residual added when the backend can do it in the same
    /// pass (cuDNN); otherwise the residual is given back for the caller to add.
    fn convolve<'r>(
        &self,
        x: &Tensor,
        weight: &Tensor,
        pad: (usize, usize),
        residual: Option<&'r Tensor>,
    ) -> Result<(Tensor, Option<&'r Tensor>)> {
        #[cfg(feature = "cudnn")]
        if x.device().is_cuda() {
            let y = super::cudnn::conv2d(x, weight, pad, self.stride, residual)?;
            return Ok((y, None));
        }
        let y = super::conv_bands::conv2d(x, weight, pad.0, self.stride)?;
        Ok((y, residual))
    }
}

/// The weights as a kernel takes them.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    F32(&'a [f32]),
    /// Packed pairs (stride 1 only).
    Bf16(&'a [u32]),
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }
}
