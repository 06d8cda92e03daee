//! Image fidelity numbers: PSNR, SSIM (scikit-image's Gaussian-window variant), maximum
//! absolute error, luma, and the area-average downscale used before comparing with a guide.

use image::RgbImage;

/// A single-channel f64 image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f64>,
}

impl Plane {
    pub fn at(&self, x: usize, y: usize) -> f64 {
        self.data[y * self.width + x]
    }
}

/// Luma `Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601 weights, unrounded), on the 0..255 scale.
pub fn luma(img: &RgbImage) -> Plane {
    let data = img
        .pixels()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    Plane {
        width: img.width() as usize,
        height: img.height() as usize,
        data,
    }
}

/// Mean squared error over all RGB samples. The images must have the same size.
pub fn mse(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "mse needs equal sizes");
    let n = a.as_raw().len().max(1) as f64;
    let sum: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    sum / n
}

/// PSNR in dB over RGB with peak 255: `10 log10(255² / MSE)`; identical images give
/// `f64::INFINITY`.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let m = mse(a, b);
    if m == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / m).log10()
    }
}

/// Largest absolute difference of any RGB sample.
pub fn max_abs_error(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "max_abs_error needs equal sizes"
    );
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| x.abs_diff(y))
        .max()
        .unwrap_or(0)
}

/// SSIM window: Gaussian sigma 1.5 truncated at 3.5 sigma (radius 5, 11x11), as
/// `scipy.ndimage.gaussian_filter` builds it for scikit-image.
pub const SSIM_SIGMA: f64 = 1.5;
pub const SSIM_RADIUS: usize = 5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;
const DATA_RANGE: f64 = 255.0;

fn gaussian_kernel(sigma: f64, radius: usize) -> Vec<f64> {
    let r = radius as f64;
    let k: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let x = i as f64 - r;
            (-0.5 * x * x / (sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Gaussian-filter `f(i)` (a per-pixel value) at every pixel whose full window lies inside
/// the image; returns a (w - 2r) x (h - 2r) plane.
fn filter_valid(w: usize, h: usize, kernel: &[f64], f: impl Fn(usize) -> f64) -> Vec<f64> {
    let r = kernel.len() / 2;
    let (vw, vh) = (w - 2 * r, h - 2 * r);
    // Horizontal pass over all rows, valid columns only.
    let src: Vec<f64> = (0..w * h).map(&f).collect();
    let mut horiz = vec![0.0; vw * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..vw {
            horiz[y * vw + x] = kernel.iter().zip(&row[x..]).map(|(k, v)| k * v).sum();
        }
    }
    let mut out = vec![0.0; vw * vh];
    for y in 0..vh {
        for (j, k) in kernel.iter().enumerate() {
            let row = &horiz[(y + j) * vw..(y + j + 1) * vw];
            for (o, v) in out[y * vw..(y + 1) * vw].iter_mut().zip(row) {
                *o += k * v;
            }
        }
    }
    out
}

/// Mean SSIM of two planes of the same size, the way scikit-image computes
/// `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
/// data_range=255)`: Gaussian-weighted local statistics, the SSIM map averaged over the pixels
/// at least 5 px from every border (where the 11x11 window fits). `None` for images smaller
/// than 11x11 (SSIM is undefined there).
pub fn ssim(a: &Plane, b: &Plane) -> Option<f64> {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "ssim needs equal sizes"
    );
    let (w, h) = (a.width, a.height);
    let win = 2 * SSIM_RADIUS + 1;
    if w < win || h < win {
        return None;
    }
    let k = gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS);
    let (x, y) = (&a.data, &b.data);
    let ux = filter_valid(w, h, &k, |i| x[i]);
    let uy = filter_valid(w, h, &k, |i| y[i]);
    let uxx = filter_valid(w, h, &k, |i| x[i] * x[i]);
    let uyy = filter_valid(w, h, &k, |i| y[i] * y[i]);
    let uxy = filter_valid(w, h, &k, |i| x[i] * y[i]);
    let c1 = (K1 * DATA_RANGE).powi(2);
    let c2 = (K2 * DATA_RANGE).powi(2);
    let n = ux.len();
    let sum: f64 = (0..n)
        .map(|i| {
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            ((2.0 * mx * my + c1) * (2.0 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        })
        .sum();
    Some(sum / n as f64)
}

/// SSIM on the luma of two RGB images (see [`ssim`]).
pub fn ssim_rgb(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    ssim(&luma(a), &luma(b))
}

/// Per output index, the source indices it covers and their weights (fractional coverage,
/// normalised to sum 1).
fn area_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let (start, end) = (o as f64 * scale, (o + 1) as f64 * scale);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(src);
            let mut ws: Vec<(usize, f64)> = (first..last)
                .map(|i| (i, end.min(i as f64 + 1.0) - start.max(i as f64)))
                .filter(|&(_, w)| w > 1e-12)
                .collect();
            let total: f64 = ws.iter().map(|p| p.1).sum();
            for p in &mut ws {
                p.1 /= total;
            }
            ws
        })
        .collect()
}

/// Downscale by area averaging (a box filter with exact fractional pixel coverage, in f64,
/// rounded to 8 bits once at the end). Each output pixel is the mean of the source area it
/// covers, so no detail aliases and a same-size "downscale" is the identity.
/// Panics if the target is larger than the source in either axis.
pub fn downscale_area(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let (dw, dh) = (width as usize, height as usize);
    assert!(
        dw <= sw && dh <= sh && dw > 0 && dh > 0,
        "downscale_area only shrinks"
    );
    if (dw, dh) == (sw, sh) {
        return img.clone();
    }
    let src = img.as_raw();
    let cols = area_weights(sw, dw);
    let rows = area_weights(sh, dh);
    let mut horiz = vec![0.0f64; sh * dw * 3];
    for y in 0..sh {
        for (x, ws) in cols.iter().enumerate() {
            for c in 0..3 {
                horiz[(y * dw + x) * 3 + c] = ws
                    .iter()
                    .map(|&(i, w)| w * src[(y * sw + i) * 3 + c] as f64)
                    .sum();
            }
        }
    }
    let mut out = vec![0u8; dh * dw * 3];
    for (y, ws) in rows.iter().enumerate() {
        for x in 0..dw {
            for c in 0..3 {
                let v: f64 = ws
                    .iter()
                    .map(|&(j, w)| w * horiz[(j * dw + x) * 3 + c])
                    .sum();
                out[(y * dw + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("size matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0u8; 3];
            for v in &mut px {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                *v = (s >> 24) as u8;
            }
            image::Rgb(px)
        })
    }

    #[test]
    fn check_identical_images_are_perfect() {
        let a = noise(40, 30, 1);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert_eq!(ssim_rgb(&a, &a), Some(1.0));
        assert_eq!(max_abs_error(&a, &a), 0);
    }

    #[test]
    fn check_psnr_of_a_uniform_offset() {
        let a = RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(8, 8, image::Rgb([110, 100, 100]));
        // MSE = 100 / 3.
        let want = 10.0 * (255.0f64 * 255.0 / (100.0 / 3.0)).log10();
        assert!((psnr(&a, &b) - want).abs() < 1e-12);
        assert_eq!(max_abs_error(&a, &b), 10);
    }

    #[test]
    fn check_ssim_of_a_constant_pair_and_small_images() {
        // Two different constants: only the luminance term, (2ab + C1) / (a² + b² + C1).
        let a = Plane {
            width: 12,
            height: 12,
            data: vec![100.0; 144],
        };
        let b = Plane {
            data: vec![120.0; 144],
            ..a.clone()
        };
        let c1 = (0.01f64 * 255.0).powi(2);
        let want = (2.0 * 100.0 * 120.0 + c1) / (100.0f64.powi(2) + 120.0f64.powi(2) + c1);
        assert!((ssim(&a, &b).unwrap() - want).abs() < 1e-12);
        let tiny = Plane {
            width: 10,
            height: 20,
            data: vec![0.0; 200],
        };
        assert_eq!(ssim(&tiny, &tiny), None);
    }

    #[test]
    fn check_kernel_matches_scipy() {
        let k = gaussian_kernel(1.5, 5);
        assert_eq!(k.len(), 11);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // scipy.ndimage._gaussian_kernel1d(1.5, 0, 5)[5]
        assert!((k[5] - 0.266_011_724_861_794_4).abs() < 1e-9, "{}", k[5]);
    }

    #[test]
    fn check_area_downscale_averages_blocks() {
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([(x * 10) as u8, 0, 255]));
        let d = downscale_area(&img, 2, 1);
        assert_eq!(d.get_pixel(0, 0).0, [5, 0, 255]);
        assert_eq!(d.get_pixel(1, 0).0, [25, 0, 255]);
        // Non-integer ratio: 3 -> 2, each output covers 1.5 source pixels.
        let img = RgbImage::from_fn(3, 1, |x, _| image::Rgb([[0, 90, 180][x as usize], 0, 0]));
        let d = downscale_area(&img, 2, 1);
        assert_eq!(d.get_pixel(0, 0).0[0], 30); // (0 + 0.5*90) / 1.5
        assert_eq!(d.get_pixel(1, 0).0[0], 150); // (0.5*90 + 180) / 1.5
        let same = downscale_area(&img, 3, 1);
        assert_eq!(same, img);
    }
}
