//! sRGB → CIELAB (D65, 2° observer) and colour drift: ΔE76 between the mean Lab colours of
//! two images over the same rectangle.

use image::RgbImage;
use std::sync::OnceLock;
use tessera_core::Rect;

/// D65 reference white (X, Y, Z) for Y = 1.
const WHITE: [f64; 3] = [0.950_47, 1.0, 1.088_83];

/// sRGB 8-bit value → linear light in [0, 1] (IEC 61966-2-1), as a lookup table.
fn linear(v: u8) -> f64 {
    static TABLE: OnceLock<[f64; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0.0; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let c = i as f64 / 255.0;
            *slot = if c <= 0.040_45 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            };
        }
        t
    })[v as usize]
}

fn lab_f(t: f64) -> f64 {
    const D: f64 = 6.0 / 29.0;
    if t > D * D * D {
        t.cbrt()
    } else {
        t / (3.0 * D * D) + 4.0 / 29.0
    }
}

/// CIELAB `[L, a, b]` of an 8-bit sRGB colour (D65 white).
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    let [r, g, b] = rgb.map(linear);
    let x = 0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175_0 * b;
    let z = 0.019_333_9 * r + 0.119_192_0 * g + 0.950_304_1 * b;
    let (fx, fy, fz) = (
        lab_f(x / WHITE[0]),
        lab_f(y / WHITE[1]),
        lab_f(z / WHITE[2]),
    );
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// CIE76 colour difference: Euclidean distance in Lab.
pub fn delta_e76(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Mean Lab colour (per-pixel Lab, averaged) of `img` inside `rect` (pixels, clipped to the
/// image). An empty rectangle gives `[0, 0, 0]`.
pub fn mean_lab(img: &RgbImage, rect: Rect) -> [f64; 3] {
    let x1 = (rect.x + rect.w).min(img.width() as usize);
    let y1 = (rect.y + rect.h).min(img.height() as usize);
    let mut sum = [0.0; 3];
    let mut n = 0usize;
    for y in rect.y..y1 {
        for x in rect.x..x1 {
            let lab = srgb_to_lab(img.get_pixel(x as u32, y as u32).0);
            for c in 0..3 {
                sum[c] += lab[c];
            }
            n += 1;
        }
    }
    if n == 0 {
        return [0.0; 3];
    }
    sum.map(|s| s / n as f64)
}

/// Colour drift of `a` against `b` inside `rect`: ΔE76 between their mean Lab colours.
pub fn drift(a: &RgbImage, b: &RgbImage, rect: Rect) -> f64 {
    delta_e76(mean_lab(a, rect), mean_lab(b, rect))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3], tol: f64) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn check_lab_of_reference_colours() {
        // Reference values (D65): white, black, the sRGB primaries and a mid grey.
        let cases = [
            ([255, 255, 255], [100.0, 0.0, 0.0]),
            ([0, 0, 0], [0.0, 0.0, 0.0]),
            ([255, 0, 0], [53.2408, 80.0925, 67.2032]),
            ([0, 255, 0], [87.7347, -86.1827, 83.1793]),
            ([0, 0, 255], [32.2970, 79.1875, -107.8602]),
            ([128, 128, 128], [53.5850, 0.0, 0.0]),
        ];
        for (rgb, want) in cases {
            let got = srgb_to_lab(rgb);
            assert!(close(got, want, 0.01), "{rgb:?}: {got:?} vs {want:?}");
        }
    }

    #[test]
    fn check_delta_e_and_mean_over_a_rect() {
        assert!((delta_e76([50.0, 0.0, 0.0], [53.0, 4.0, 0.0]) - 5.0).abs() < 1e-12);
        let mut a = RgbImage::from_pixel(8, 8, image::Rgb([128, 128, 128]));
        let b = a.clone();
        for y in 0..4 {
            for x in 0..4 {
                a.put_pixel(x, y, image::Rgb([255, 0, 0]));
            }
        }
        let left_top = Rect {
            y: 0,
            x: 0,
            h: 4,
            w: 4,
        };
        let right = Rect {
            y: 0,
            x: 4,
            h: 8,
            w: 4,
        };
        let red = srgb_to_lab([255, 0, 0]);
        let grey = srgb_to_lab([128, 128, 128]);
        assert!((drift(&a, &b, left_top) - delta_e76(red, grey)).abs() < 1e-9);
        assert_eq!(drift(&a, &b, right), 0.0);
    }
}
