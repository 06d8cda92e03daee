//! candle's `conv2d` with its im2col buffer bounded: on a GPU the buffer is k² times the input,
//! so a large convolution runs in bands of output rows (the same sums per output value, so the
//! same result). `Conv2d` calls it wherever tessera's own kernels do not run.

use crate::kernels::conv as k;
use candle_core::{Result, Tensor};

/// `x.conv2d(weight, pad, stride)`, in bands of output rows on a GPU where candle's im2col
/// buffer would pass [`IM2COL_BYTES`].
pub fn conv2d(x: &Tensor, weight: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let (b, cin, h, w) = x.dims4()?;
    let k = weight.dim(2)?;
    let (ho, wo) = square_pad(k, pad, stride).out_dims((h, w));
    let im2col = b * ho * wo * cin * k * k * x.dtype().size_in_bytes();
    let band = match x.device().is_cpu() {
        true => ho,
        false => (ho * IM2COL_BYTES / im2col.max(1)).clamp(1, ho),
    };
    conv_in_bands(x, weight, pad, stride, band)
}

/// The most bytes of candle's im2col buffer a GPU convolution fills at once: the buffer is
/// k² times the input (2.4 GB for a 256-channel 512² f32 VAE layer), so a larger convolution
/// runs in bands of output rows.
const IM2COL_BYTES: usize = 64 << 20;

/// The geometry of candle's `conv2d`: one padding on every side.
fn square_pad(k: usize, pad: usize, stride: usize) -> k::Geometry {
    k::Geometry {
        k,
        stride,
        pad: (pad, pad, pad, pad),
    }
}

/// `x.conv2d(weight, pad, stride)` computed `band` output rows at a time (the same sums per
/// output value, so the same result).
fn conv_in_bands(
    x: &Tensor,
    weight: &Tensor,
    pad: usize,
    stride: usize,
    band: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let k = weight.dim(2)?;
    let (ho, _) = square_pad(k, pad, stride).out_dims((h, w));
    if band >= ho {
        return x.conv2d(weight, pad, stride, 1, 1);
    }
    let padded = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    let parts = (0..ho)
        .step_by(band)
        .map(|r0| {
            let rows = band.min(ho - r0);
            let slab = padded.narrow(2, r0 * stride, (rows - 1) * stride + k)?;
            slab.contiguous()?.conv2d(weight, 0, stride, 1, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Bands of output rows give the convolution of the whole (stride 1 and 2, padded or not).
    #[test]
    fn banded_convolution_equals_the_whole() -> Result<()> {
        let ramp = |dims: &[usize], k: f32| {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * k).sin()).collect();
            Tensor::from_vec(v, dims, &Device::Cpu)
        };
        let x = ramp(&[2, 3, 11, 9], 0.37)?;
        let weight = ramp(&[4, 3, 3, 3], 0.91)?;
        for (pad, stride) in [(1, 1), (0, 1), (0, 2), (1, 2)] {
            let whole = x.conv2d(&weight, pad, stride, 1, 1)?;
            for band in [1, 2, 4] {
                let banded = conv_in_bands(&x, &weight, pad, stride, band)?;
                let diff: f32 = (banded - &whole)?
                    .abs()?
                    .flatten_all()?
                    .max(D::Minus1)?
                    .to_scalar()?;
                assert!(diff < 1e-6, "pad {pad} stride {stride} band {band}: {diff}");
            }
        }
        Ok(())
    }
}
