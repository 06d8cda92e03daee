//! Pictures <-> image tensors: `[-1, 1]` NCHW f32 on the model side, 8-bit RGB on disk, and the
//! one resampler both directions use.
//!
//! Resampling is our own separable Lanczos3 on f32 planes because the `image` crate's resize
//! clamps f32 samples to [0, 1]: a decoded guide is a [-1, 1] tensor, and clamping it turned
//! every dark or saturated colour grey before the hi-res pass (the guide washed out, ΔE 24-30
//! per window). Here values are never clamped, and the ringing of the filter is kept as is.

use candle_core::{DType, Tensor};
use std::path::Path;
use tessera_core::{Error, Result};
use tessera_nn::runtime::host;

/// An image tensor (1,3,H,W) in [-1,1] as 8-bit RGB, the way diffusers' `numpy_to_pil` does it:
/// `round(clamp(x/2+0.5, 0, 1) * 255)`.
pub fn tensor_to_rgb(image: &Tensor) -> Result<image::RgbImage> {
    let (_, c, h, w) = image.dims4()?;
    if c != 3 {
        return Err(Error::Other(format!("expected 3 image channels, got {c}")));
    }
    let x = ((image.to_dtype(DType::F32)?.squeeze(0)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let hwc: Vec<f32> = x.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
    let bytes = hwc.iter().map(|v| (v * 255.0).round() as u8).collect();
    Ok(image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("size matches"))
}

/// Read a picture as a (1,3,h,w) tensor in [-1, 1] (`x/127.5 - 1`), resized to `(w, h)` with
/// Lanczos3 unless it already has that size (then it is used as is).
pub fn load_image(path: &Path, size: (usize, usize)) -> Result<Tensor> {
    rgb_to_tensor(&open_rgb(path)?, size)
}

/// Read a picture as a (1,3,h,w) tensor in [-1, 1] at its own size.
pub fn load_picture(path: &Path) -> Result<Tensor> {
    let img = open_rgb(path)?;
    rgb_to_tensor(&img, (img.width() as usize, img.height() as usize))
}

fn open_rgb(path: &Path) -> Result<image::RgbImage> {
    let img = image::open(path).map_err(|e| {
        Error::input(
            path,
            None,
            format!("cannot read the picture: {e}"),
            "give a PNG or JPEG file",
        )
    })?;
    Ok(img.to_rgb8())
}

/// An RGB picture as a (1,3,h,w) tensor in [-1, 1], resized with Lanczos3 when needed.
pub fn rgb_to_tensor(img: &image::RgbImage, size: (usize, usize)) -> Result<Tensor> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    let t = Tensor::from_vec(data, (ih, iw, 3), &host())?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?;
    if (iw, ih) == size {
        Ok(t)
    } else {
        resize_tensor(&t, size)
    }
}

/// Resize an image tensor (1,C,h,w) to `(w, h)` with Lanczos3, in f32, values unclamped (no
/// 8-bit rounding between the guide and its upscale, and no loss of [-1, 0) either).
pub fn resize_tensor(image: &Tensor, (w, h): (usize, usize)) -> Result<Tensor> {
    Resized::new(image, (w, h))?.rows(0..h)
}

/// Rows `range` of an image as (1, C, rows, W).
pub type RowsFn<'a> = dyn Fn(std::ops::Range<usize>) -> candle_core::Result<Tensor> + 'a;

/// An image resized to `(w, h)` as [`resize_tensor`] does, computed a range of rows at a time
/// (the same values), so a canvas-sized upscale is never held whole: it holds the source
/// resampled to the new width (source height x new width per channel).
pub struct Resized {
    channels: usize,
    width: usize,
    /// Per channel, the source's rows resampled to the new width.
    wide: Vec<f32>,
    source_rows: usize,
    rows: Vec<Tap>,
    device: candle_core::Device,
}

impl Resized {
    /// Rows `range` of `image` resized to `size`, or of `image` itself when it has that size
    /// (as [`rgb_to_tensor`]), without the whole result ever being held.
    pub fn rows_of(image: &Tensor, size: (usize, usize)) -> Result<Box<RowsFn<'_>>> {
        let (_, _, h, w) = image.dims4()?;
        if (w, h) == size {
            return Ok(Box::new(move |r| image.narrow(2, r.start, r.len())));
        }
        let resized = Self::new(image, size)?;
        Ok(Box::new(move |r| {
            resized.rows(r).map_err(candle_core::Error::wrap)
        }))
    }

    pub fn new(image: &Tensor, (w, h): (usize, usize)) -> Result<Self> {
        let (_, c, ih, iw) = image.dims4()?;
        let planes: Vec<f32> = image.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let cols = taps(iw, w);
        let mut wide = vec![0f32; c * ih * w];
        // Rows first (to the new width); columns (to the new height) when rows are asked for.
        for (row_in, row_out) in planes.chunks_exact(iw).zip(wide.chunks_exact_mut(w)) {
            for (o, tap) in row_out.iter_mut().zip(&cols) {
                *o = tap.apply(|i| row_in[i]);
            }
        }
        Ok(Self {
            channels: c,
            width: w,
            wide,
            source_rows: ih,
            rows: taps(ih, h),
            device: image.device().clone(),
        })
    }

    /// Rows `range` of the resized image, (1, C, rows, w).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Result<Tensor> {
        let (c, w, n) = (self.channels, self.width, range.len());
        let mut out = vec![0f32; c * n * w];
        for (ch, dst) in out.chunks_exact_mut(n * w).enumerate() {
            let wide = &self.wide[ch * self.source_rows * w..][..self.source_rows * w];
            for (k, tap) in self.rows[range.clone()].iter().enumerate() {
                for x in 0..w {
                    dst[k * w + x] = tap.apply(|i| wide[i * w + x]);
                }
            }
        }
        Ok(Tensor::from_vec(out, (1, c, n, w), &self.device)?)
    }
}

/// One output sample of a 1-D resampling: normalised weights over inputs `start..`.
struct Tap {
    start: usize,
    weights: Vec<f32>,
}

impl Tap {
    fn apply(&self, input: impl Fn(usize) -> f32) -> f32 {
        let sum: f64 = (self.weights.iter().enumerate())
            .map(|(k, &wt)| wt as f64 * input(self.start + k) as f64)
            .sum();
        sum as f32
    }
}

fn lanczos3(x: f64) -> f64 {
    let sinc = |v: f64| {
        if v == 0.0 {
            1.0
        } else {
            (std::f64::consts::PI * v).sin() / (std::f64::consts::PI * v)
        }
    };
    if x.abs() < 3.0 {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Lanczos3 taps from `n_in` samples to `n_out`, pixel centres aligned (`(o + 0.5) * ratio`);
/// when shrinking, the kernel is widened by the ratio so it also filters. Taps outside the
/// image are dropped and the rest renormalised (edge pixels are not replicated).
fn taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let ratio = n_in as f64 / n_out as f64;
    let widen = ratio.max(1.0);
    let support = 3.0 * widen;
    (0..n_out)
        .map(|o| {
            let centre = (o as f64 + 0.5) * ratio;
            let start = (centre - support).floor().max(0.0) as usize;
            let end = ((centre + support).ceil() as usize).min(n_in);
            let raw: Vec<f64> = (start..end)
                .map(|i| lanczos3((i as f64 + 0.5 - centre) / widen))
                .collect();
            let total: f64 = raw.iter().sum();
            Tap {
                start,
                weights: raw.iter().map(|v| (v / total) as f32).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: Vec<f32>, c: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(values, (1, c, h, w), &host()).unwrap()
    }

    #[test]
    fn dark_and_saturated_colours_survive_an_upscale() {
        // A guide of pure dark navy (-0.9, -0.8, -0.2) and saturated red (1, -1, -1) halves.
        let (h, w) = (8, 8);
        let mut v = Vec::new();
        for ch in [[-0.9f32, 1.0], [-0.8, -1.0], [-0.2, -1.0]] {
            for _ in 0..h {
                for x in 0..w {
                    v.push(ch[usize::from(x >= w / 2)]);
                }
            }
        }
        let up = resize_tensor(&tensor(v, 3, h, w), (64, 64)).unwrap();
        let up: Vec<f32> = up.flatten_all().unwrap().to_vec1().unwrap();
        // Far from the edge between the halves the colours are exactly kept (no clamping).
        for (ch, want) in [(0, [-0.9f32, 1.0]), (1, [-0.8, -1.0]), (2, [-0.2, -1.0])] {
            let plane = &up[ch * 64 * 64..(ch + 1) * 64 * 64];
            for y in [0, 31, 63] {
                assert!(
                    (plane[y * 64 + 2] - want[0]).abs() < 1e-5,
                    "{ch}: {}",
                    plane[2]
                );
                assert!(
                    (plane[y * 64 + 61] - want[1]).abs() < 1e-5,
                    "{ch}: {}",
                    plane[61]
                );
            }
        }
    }

    #[test]
    fn resampling_keeps_constants_and_means() {
        let v: Vec<f32> = (0..3 * 24 * 40)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mean = |t: &[f32]| t.iter().map(|&x| x as f64).sum::<f64>() / t.len() as f64;
        for (w, h) in [(80, 48), (20, 12), (40, 24), (33, 17)] {
            let r = resize_tensor(&tensor(v.clone(), 3, 24, 40), (w, h)).unwrap();
            assert_eq!(r.dims(), &[1, 3, h, w]);
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            assert!((mean(&r) - mean(&v)).abs() < 0.02, "{w}x{h}");
            let flat = resize_tensor(&tensor(vec![-0.75; 3 * 24 * 40], 3, 24, 40), (w, h)).unwrap();
            let flat: Vec<f32> = flat.flatten_all().unwrap().to_vec1().unwrap();
            assert!(flat.iter().all(|&x| (x + 0.75).abs() < 1e-5), "{w}x{h}");
        }
    }

    /// Rows asked for in bands are the rows of the whole resize, bit for bit (the guide's
    /// upscale is encoded band by band).
    #[test]
    fn banded_rows_equal_the_whole_resize() {
        let v: Vec<f32> = (0..3 * 24 * 40)
            .map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let image = tensor(v, 3, 24, 40);
        let whole: Vec<f32> = resize_tensor(&image, (100, 61))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rows = Resized::rows_of(&image, (100, 61)).unwrap();
        let bands: Vec<Tensor> = [0..7, 7..40, 40..61].map(|r| rows(r).unwrap()).into();
        let banded: Vec<f32> = Tensor::cat(&bands, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(whole, banded);
    }
}
