//! The difference heatmap: where the output departs from its reference, as a colour map at the
//! output's size, with the window boundaries drawn coloured by seam score.

use super::report::SeamResult;
use super::seams::Orientation;
use image::{ImageBuffer, Luma, Rgb, RgbImage};

/// Differences at or above this many 8-bit levels (mean over R, G, B) get the hottest colour;
/// below it the map follows the square root of the difference, so small departures show.
pub const HEAT_FULL_SCALE: f32 = 64.0;
/// Share of the output's own grey picture blended under the colour map, for orientation.
const BACKDROP: f32 = 0.2;

/// Colour stops of the map, from no difference (black-blue) to [`HEAT_FULL_SCALE`] (pale
/// yellow), perceptually ordered like "inferno".
const STOPS: [[f32; 3]; 5] = [
    [0.0, 0.0, 4.0],
    [87.0, 16.0, 110.0],
    [188.0, 55.0, 84.0],
    [249.0, 142.0, 9.0],
    [252.0, 255.0, 164.0],
];

/// The colour of `t` in [0, 1] on the map.
pub fn colour_map(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * f)
}

/// Seam line colour: green at score <= 1, yellow at the threshold, red at twice its excess.
pub fn seam_colour(score: Option<f64>, max_seam: f64) -> Rgb<u8> {
    let Some(s) = score else {
        return Rgb([160, 160, 160]);
    };
    let span = (max_seam - 1.0).max(1e-6);
    let t = ((s - 1.0) / span).clamp(0.0, 2.0);
    if t <= 1.0 {
        Rgb([(255.0 * t) as u8, 200 + (20.0 * t) as u8, 0])
    } else {
        Rgb([255, (220.0 * (2.0 - t)) as u8, 0])
    }
}

/// Build the heatmap. `a` and `b` are the compared images (same size: the downscaled output
/// and the guide, or two golden images); the mean absolute RGB difference per pixel is
/// upscaled bilinearly to `backdrop`'s size (the full-resolution output), mapped through
/// [`colour_map`] as `sqrt(diff / HEAT_FULL_SCALE)`, and blended with 20% of the output's grey.
/// Boundaries are drawn 2 px wide (the pixels either side of the line).
pub fn heatmap(
    a: &RgbImage,
    b: &RgbImage,
    backdrop: &RgbImage,
    seams: &[SeamResult],
    max_seam: f64,
) -> RgbImage {
    let diff: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_fn(a.width(), a.height(), |x, y| {
            let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
            let d: f32 = (0..3).map(|c| (p[c] as f32 - q[c] as f32).abs()).sum();
            Luma([d / 3.0])
        });
    let (w, h) = backdrop.dimensions();
    let diff = if diff.dimensions() == (w, h) {
        diff
    } else {
        image::imageops::resize(&diff, w, h, image::imageops::FilterType::Triangle)
    };
    let mut out = RgbImage::from_fn(w, h, |x, y| {
        let heat = colour_map((diff.get_pixel(x, y)[0] / HEAT_FULL_SCALE).sqrt());
        let p = backdrop.get_pixel(x, y);
        let grey = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        Rgb(heat.map(|c| {
            ((1.0 - BACKDROP) * c + BACKDROP * grey)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    });
    for s in seams {
        let colour = seam_colour(s.score, max_seam);
        let b = s.boundary;
        for p in [b.pos.saturating_sub(1), b.pos] {
            for t in b.from..b.to {
                let (x, y) = match b.orientation {
                    Orientation::Vertical => (p, t),
                    Orientation::Horizontal => (t, p),
                };
                if (x as u32) < w && (y as u32) < h {
                    out.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_colour_map_ends_and_seam_colours() {
        assert_eq!(colour_map(0.0), STOPS[0]);
        assert_eq!(colour_map(1.0), STOPS[4]);
        assert_eq!(colour_map(2.0), STOPS[4]);
        assert_eq!(seam_colour(Some(0.9), 1.5), Rgb([0, 200, 0]));
        assert_eq!(seam_colour(Some(1.5), 1.5), Rgb([255, 220, 0]));
        assert_eq!(seam_colour(Some(9.0), 1.5), Rgb([255, 0, 0]));
    }
}
