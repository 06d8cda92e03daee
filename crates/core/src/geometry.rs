//! Tile geometry, shared by the canvas scheduler (latent windows) and the tiled VAE (pixel
//! tiles): where tiles go, and how much each cell of a tile weighs in a blend.

use serde::{Deserialize, Serialize};

/// An axis-aligned rectangle in some grid (latent cells or pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
}

impl Rect {
    pub fn scaled(self, f: usize) -> Rect {
        Rect {
            y: self.y * f,
            x: self.x * f,
            h: self.h * f,
            w: self.w * f,
        }
    }

    pub fn contains(&self, other: &Rect) -> bool {
        other.y >= self.y
            && other.x >= self.x
            && other.y + other.h <= self.y + self.h
            && other.x + other.w <= self.x + self.w
    }
}

/// Starts of tiles of length `tile` covering `0..total` exactly, at least `overlap` apart from
/// the next tile's start, spread evenly (the last tile ends at `total`), so any total works, not
/// only `tile + k (tile - overlap)`. A total not larger than a tile gives one tile of length
/// `total`.
pub fn spans(total: usize, tile: usize, overlap: usize) -> Vec<(usize, usize)> {
    assert!(tile > overlap, "tile must be larger than the overlap");
    if total <= tile {
        return vec![(0, total)];
    }
    let stride = tile - overlap;
    let n = (total - overlap).div_ceil(stride);
    let room = total - tile;
    (0..n)
        .map(|i| ((i * room + (n - 1) / 2) / (n - 1), tile))
        .collect()
}

/// Tiles covering a `height` x `width` grid, row-major.
pub fn grid(height: usize, width: usize, tile: (usize, usize), overlap: usize) -> Vec<Rect> {
    let rows = spans(height, tile.0, overlap);
    let cols = spans(width, tile.1, overlap);
    rows.iter()
        .flat_map(|&(y, h)| cols.iter().map(move |&(x, w)| Rect { y, x, h, w }))
        .collect()
}

/// Split `0..total` into `ceil(total / tile)` disjoint spans of nearly equal length (the
/// tiled VAE computes every pixel exactly once, so its tiles must not overlap).
pub fn partition(total: usize, tile: usize) -> Vec<(usize, usize)> {
    let n = total.div_ceil(tile.max(1)).max(1);
    let (base, extra) = (total / n, total % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            (start - len, len)
        })
        .collect()
}

/// Disjoint tiles covering a `height` x `width` grid, row-major.
pub fn partition_grid(height: usize, width: usize, tile: usize) -> Vec<Rect> {
    let cols = partition(width, tile);
    partition(height, tile)
        .into_iter()
        .flat_map(|(y, h)| cols.iter().map(move |&(x, w)| Rect { y, x, h, w }))
        .collect()
}

/// How a window's cells weigh in the blend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    /// The reference Mixture-of-Diffusers Gaussian (variance 0.01 of the window side).
    #[default]
    Gaussian,
    /// The reference quartic kernel `15/16 (1 - s^2)^2`, `s` spread evenly over
    /// [-0.995, 0.995] from the first cell to the last: bounded support, never quite zero.
    Quartic,
    /// Every cell weighs the same.
    Constant,
}

/// The reference 1D Gaussian: `exp(-(i-mid)^2 / n^2 / (2*0.01)) / sqrt(2*pi*0.01)`, in f64.
pub fn gaussian_1d(n: usize, mid: f64) -> Vec<f64> {
    let var = 0.01;
    let norm = (2.0 * std::f64::consts::PI * var).sqrt();
    (0..n)
        .map(|i| {
            let d = i as f64 - mid;
            (-(d * d) / (n * n) as f64 / (2.0 * var)).exp() / norm
        })
        .collect()
}

fn profile(mask: Mask, n: usize) -> Vec<f64> {
    match mask {
        Mask::Gaussian => gaussian_1d(n, (n as f64 - 1.0) / 2.0),
        Mask::Quartic => (0..n)
            .map(|i| {
                // A one-cell side has no spread: its single cell sits at the centre (the
                // reference divides by n - 1 and would give NaN).
                let s = match n {
                    1 => 0.0,
                    _ => i as f64 / (n - 1) as f64 * 1.99 - 1.99 / 2.0,
                };
                15.0 / 16.0 * (1.0 - s * s).powi(2)
            })
            .collect(),
        Mask::Constant => vec![1.0; n],
    }
}

/// The blend weights of an `h` x `w` window, row-major: `mask` on both axes times `weight`,
/// in f64 (the engine decides the dtype the blend multiplies in, see its mixture).
pub fn weights(h: usize, w: usize, mask: Mask, weight: f64) -> Vec<f64> {
    outer(&profile(mask, h), &profile(mask, w), weight)
}

/// Outer product of two profiles times `scale`, row-major.
pub fn outer(rows: &[f64], cols: &[f64], scale: f64) -> Vec<f64> {
    rows.iter()
        .flat_map(|r| cols.iter().map(move |c| r * c * scale))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_exactly_with_enough_overlap() {
        for total in [8, 63, 64, 65, 100, 128, 144, 200, 256, 257, 1000] {
            for (tile, overlap) in [(64, 16), (32, 8), (16, 4), (64, 0)] {
                let s = spans(total, tile, overlap);
                assert_eq!(s[0].0, 0);
                let (last, len) = *s.last().unwrap();
                assert_eq!(last + len, total, "total {total} tile {tile}");
                for pair in s.windows(2) {
                    let end = pair[0].0 + pair[0].1;
                    assert!(pair[1].0 <= end.saturating_sub(overlap), "{s:?}");
                    assert!(pair[1].0 > pair[0].0, "{s:?}");
                }
            }
        }
    }

    #[test]
    fn partitions_are_disjoint_and_cover() {
        for total in [1, 7, 8, 40, 41, 255, 256] {
            for tile in [1, 3, 8, 12, 64, 300] {
                let p = partition(total, tile);
                assert_eq!(p.iter().map(|s| s.1).sum::<usize>(), total);
                assert!(p.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
                assert!(p.iter().all(|s| s.1 <= tile.max(1) && s.1 > 0));
            }
        }
    }

    #[test]
    fn a_2k_canvas_has_25_windows_of_512_with_128_overlap() {
        assert_eq!(grid(256, 256, (64, 64), 16).len(), 25);
        // The reference tiling grid: 224 px, 128 px tiles, 32 px overlap -> offsets 0 and 12.
        assert_eq!(spans(28, 16, 4), vec![(0, 16), (12, 16)]);
    }
}
