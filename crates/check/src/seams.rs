//! Seam detection at window boundaries: the gradient energy across a boundary line compared
//! with that of parallel reference lines a few pixels away.

use super::metrics::Plane;
use serde::Serialize;
use tessera_core::Rect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    /// A line `x = pos` running down the image.
    Vertical,
    /// A line `y = pos` running across the image.
    Horizontal,
}

/// A window edge inside the canvas: `x = pos` for `y in from..to` (vertical) or `y = pos` for
/// `x in from..to` (horizontal). The line lies between pixel `pos - 1` and pixel `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Boundary {
    pub orientation: Orientation,
    pub pos: usize,
    pub from: usize,
    pub to: usize,
}

impl std::fmt::Display for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.orientation {
            Orientation::Vertical => write!(f, "x={} (y {}..{})", self.pos, self.from, self.to),
            Orientation::Horizontal => {
                write!(f, "y={} (x {}..{})", self.pos, self.from, self.to)
            }
        }
    }
}

/// Offsets of the reference lines on each side of a boundary.
pub const REFERENCE_OFFSETS: std::ops::RangeInclusive<usize> = 3..=6;
/// Added to both energies so flat areas (energy ~0) do not turn quantisation into huge ratios:
/// half an 8-bit level.
pub const ENERGY_FLOOR: f64 = 0.5;

/// Every window edge that lies strictly inside a `width` x `height` canvas, deduplicated:
/// edges on the same line whose extents overlap or touch are merged into one boundary.
/// Sorted: vertical lines by x, then horizontal lines by y.
pub fn boundaries(windows: &[Rect], width: usize, height: usize) -> Vec<Boundary> {
    let mut edges = Vec::new();
    for r in windows {
        for x in [r.x, r.x + r.w] {
            if x > 0 && x < width {
                edges.push(Boundary {
                    orientation: Orientation::Vertical,
                    pos: x,
                    from: r.y.min(height),
                    to: (r.y + r.h).min(height),
                });
            }
        }
        for y in [r.y, r.y + r.h] {
            if y > 0 && y < height {
                edges.push(Boundary {
                    orientation: Orientation::Horizontal,
                    pos: y,
                    from: r.x.min(width),
                    to: (r.x + r.w).min(width),
                });
            }
        }
    }
    edges.retain(|e| e.to > e.from);
    edges.sort();
    let mut merged: Vec<Boundary> = Vec::new();
    for e in edges {
        match merged.last_mut() {
            Some(m) if m.orientation == e.orientation && m.pos == e.pos && e.from <= m.to => {
                m.to = m.to.max(e.to);
            }
            _ => merged.push(e),
        }
    }
    merged
}

/// Mean `|I(p) - I(p - 1)|` across line `p` (1 <= p < side) over the boundary's extent.
fn line_energy(luma: &Plane, b: &Boundary, p: usize) -> f64 {
    let n = (b.to - b.from) as f64;
    let sum: f64 = (b.from..b.to)
        .map(|t| match b.orientation {
            Orientation::Vertical => (luma.at(p, t) - luma.at(p - 1, t)).abs(),
            Orientation::Horizontal => (luma.at(t, p) - luma.at(t, p - 1)).abs(),
        })
        .sum();
    sum / n
}

/// Energies measured for one boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeamEnergy {
    /// Mean absolute luma step across the boundary line.
    pub line: f64,
    /// The same, averaged over the reference lines at ±3..±6 px that fit in the image.
    pub reference: f64,
    /// `(line + 0.5) / (reference + 0.5)`: about 1 where the boundary is invisible.
    pub score: f64,
}

/// Score one boundary on full-resolution luma. `None` when no reference line fits.
pub fn seam_energy(luma: &Plane, b: &Boundary) -> Option<SeamEnergy> {
    let side = match b.orientation {
        Orientation::Vertical => luma.width,
        Orientation::Horizontal => luma.height,
    };
    if b.pos == 0 || b.pos >= side || b.to <= b.from {
        return None;
    }
    let refs: Vec<f64> = REFERENCE_OFFSETS
        .flat_map(|d| [b.pos.checked_sub(d), Some(b.pos + d)])
        .flatten()
        .filter(|&p| p >= 1 && p < side)
        .map(|p| line_energy(luma, b, p))
        .collect();
    if refs.is_empty() {
        return None;
    }
    let line = line_energy(luma, b, b.pos);
    let reference = refs.iter().sum::<f64>() / refs.len() as f64;
    Some(SeamEnergy {
        line,
        reference,
        score: (line + ENERGY_FLOOR) / (reference + ENERGY_FLOOR),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: usize, y: usize, w: usize, h: usize) -> Rect {
        Rect { y, x, h, w }
    }

    #[test]
    fn check_boundaries_are_inside_and_deduplicated() {
        // 2x2 grid of 64 px windows overlapping by 16 on a 112x112 canvas.
        let ws = [
            rect(0, 0, 64, 64),
            rect(48, 0, 64, 64),
            rect(0, 48, 64, 64),
            rect(48, 48, 64, 64),
        ];
        let b = boundaries(&ws, 112, 112);
        let v = |pos| Boundary {
            orientation: Orientation::Vertical,
            pos,
            from: 0,
            to: 112,
        };
        let h = |pos| Boundary {
            orientation: Orientation::Horizontal,
            pos,
            from: 0,
            to: 112,
        };
        assert_eq!(b, vec![v(48), v(64), h(48), h(64)]);
    }

    #[test]
    fn check_disjoint_extents_stay_separate() {
        let ws = [rect(0, 0, 32, 16), rect(0, 48, 32, 16)];
        let b = boundaries(&ws, 64, 64);
        let verticals: Vec<_> = b
            .iter()
            .filter(|b| b.orientation == Orientation::Vertical)
            .collect();
        assert_eq!(verticals.len(), 2, "{b:?}");
        assert_eq!((verticals[0].from, verticals[0].to), (0, 16));
        assert_eq!((verticals[1].from, verticals[1].to), (48, 64));
    }

    #[test]
    fn check_a_step_on_the_line_scores_high_and_a_ramp_scores_one() {
        let (w, h) = (40, 10);
        let ramp = Plane {
            width: w,
            height: h,
            data: (0..w * h).map(|i| (i % w) as f64 * 2.0).collect(),
        };
        let b = Boundary {
            orientation: Orientation::Vertical,
            pos: 20,
            from: 0,
            to: h,
        };
        let e = seam_energy(&ramp, &b).unwrap();
        assert!((e.score - 1.0).abs() < 1e-12, "{e:?}");
        let mut step = ramp.clone();
        for y in 0..h {
            for x in 20..w {
                step.data[y * w + x] += 30.0;
            }
        }
        let e = seam_energy(&step, &b).unwrap();
        assert!((e.line - 32.0).abs() < 1e-12 && (e.reference - 2.0).abs() < 1e-12);
        assert!((e.score - 32.5 / 2.5).abs() < 1e-12);
    }
}
