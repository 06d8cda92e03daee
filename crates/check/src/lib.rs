//! `tessera check`: is a render faithful to its guide, free of seams at window boundaries and
//! free of per-window colour drift? And golden-image regression (`--against`).
//!
//! - Fidelity: the output is downscaled to the guide's size by area averaging
//!   ([`metrics::downscale_area`]), then PSNR (RGB, peak 255) and SSIM (luma, scikit-image's
//!   Gaussian-window SSIM) against the guide.
//! - Drift: per planned window, ΔE76 between the mean CIELAB colour of the downscaled output
//!   and of the guide over the window's area.
//! - Seams: per window boundary, the luma gradient energy across the line (full resolution)
//!   over that of reference lines 3..6 px to either side ([`seams`]).
//!
//! The entry points are [`guide_check`] and [`golden_check`]: pure image metrics, with no
//! knowledge of specs, plans or files (the render layer supplies the windows).

pub mod colour;
pub mod heatmap;
pub mod metrics;
pub mod report;
pub mod seams;

pub use report::{
    CheckReport, DriftResult, GoldenReport, GoldenThresholds, PxRect, SeamResult, Thresholds,
};

use image::RgbImage;
use tessera_core::Rect;

/// How the output is brought to the guide's size.
pub const DOWNSCALE: &str = "area average";
/// Largest relative difference of aspect ratio between output and guide that is still the
/// same picture (guides are rounded to multiples of 8 px, a few percent on small guides).
pub const MAX_ASPECT_MISMATCH: f64 = 0.05;

/// Two images that cannot be compared (sizes that cannot be reconciled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMismatch(pub String);

impl std::fmt::Display for SizeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SizeMismatch {}

/// Can a guide of size `guide` be compared with an output of size `output`? The guide must not
/// be larger on either axis and must have the same aspect ratio within 5%.
pub fn reconcile(output: (u32, u32), guide: (u32, u32)) -> std::result::Result<(), SizeMismatch> {
    let (ow, oh) = output;
    let (gw, gh) = guide;
    if ow == 0 || oh == 0 || gw == 0 || gh == 0 {
        return Err(SizeMismatch("an image is empty".into()));
    }
    if gw > ow || gh > oh {
        return Err(SizeMismatch(format!(
            "the guide ({gw}x{gh}) is larger than the output ({ow}x{oh})"
        )));
    }
    let ratio = (gw as f64 / gh as f64) / (ow as f64 / oh as f64);
    if (ratio - 1.0).abs() > MAX_ASPECT_MISMATCH {
        return Err(SizeMismatch(format!(
            "the guide ({gw}x{gh}) and the output ({ow}x{oh}) have different aspect ratios"
        )));
    }
    Ok(())
}

/// A rectangle of the output (pixels) mapped onto the guide, rounded to whole pixels and at
/// least one pixel on each side.
pub fn to_guide_rect(r: Rect, output: (u32, u32), guide: (u32, u32)) -> Rect {
    let map = |v: usize, from: u32, to: u32| {
        ((v as f64 * to as f64 / from as f64).round() as usize).min(to as usize)
    };
    let x0 = map(r.x, output.0, guide.0).min(guide.0 as usize - 1);
    let y0 = map(r.y, output.1, guide.1).min(guide.1 as usize - 1);
    let x1 = map(r.x + r.w, output.0, guide.0).max(x0 + 1);
    let y1 = map(r.y + r.h, output.1, guide.1).max(y0 + 1);
    Rect {
        y: y0,
        x: x0,
        h: y1 - y0,
        w: x1 - x0,
    }
}

/// Check a rendered `output` against its `guide`.
///
/// `windows` are the planned windows in output pixels (see [`windows::plan_windows`]); an empty
/// slice treats the whole image as one window (no seams, one drift figure) and says so in the
/// report's notes. The report's `windows_source` is left for the caller to describe.
pub fn guide_check(
    output: &RgbImage,
    guide: &RgbImage,
    windows: &[Rect],
    t: &Thresholds,
) -> std::result::Result<CheckReport, SizeMismatch> {
    reconcile(output.dimensions(), guide.dimensions())?;
    let (ow, oh) = output.dimensions();
    let small = metrics::downscale_area(output, guide.width(), guide.height());
    let psnr = metrics::psnr(&small, guide);
    let ssim = metrics::ssim_rgb(&small, guide);
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    if psnr < t.min_psnr {
        failures.push(format!("PSNR {psnr:.2} dB < {:.2}", t.min_psnr));
    }
    match ssim {
        Some(s) if s < t.min_ssim => failures.push(format!("SSIM {s:.4} < {:.3}", t.min_ssim)),
        Some(_) => {}
        None => notes.push("the guide is smaller than 11x11 px: SSIM not computed".into()),
    }

    let whole = Rect {
        y: 0,
        x: 0,
        h: oh as usize,
        w: ow as usize,
    };
    let mut rects: Vec<Rect> = Vec::new();
    for r in windows {
        if !rects.contains(r) {
            rects.push(*r);
        }
    }
    if rects.is_empty() {
        notes.push(
            "no window plan: the whole image is treated as one window (no seams checked)".into(),
        );
        rects.push(whole);
    }

    let luma = metrics::luma(output);
    let seams: Vec<SeamResult> = seams::boundaries(&rects, ow as usize, oh as usize)
        .into_iter()
        .map(|b| {
            let e = seams::seam_energy(&luma, &b);
            let score = e.map(|e| e.score);
            let pass = !matches!(score, Some(s) if s > t.max_seam);
            let position = match b.orientation {
                seams::Orientation::Vertical => format!("x={}", b.pos),
                seams::Orientation::Horizontal => format!("y={}", b.pos),
            };
            if !pass {
                failures.push(format!(
                    "seam at {b}: score {:.3} > {:.2}",
                    score.unwrap_or_default(),
                    t.max_seam
                ));
            }
            SeamResult {
                boundary: b,
                position,
                line_energy: e.map(|e| e.line),
                reference_energy: e.map(|e| e.reference),
                score,
                pass,
            }
        })
        .collect();

    let drift: Vec<DriftResult> = rects
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let g = to_guide_rect(r, output.dimensions(), guide.dimensions());
            let delta_e = colour::drift(&small, guide, g);
            let pass = delta_e <= t.max_drift;
            let rect = PxRect::from(r);
            if !pass {
                failures.push(format!(
                    "window #{i} ({rect}): colour drift ΔE {delta_e:.2} > {:.2}",
                    t.max_drift
                ));
            }
            DriftResult {
                window: i,
                rect,
                guide_rect: g.into(),
                delta_e,
                pass,
            }
        })
        .collect();

    Ok(CheckReport {
        mode: "guide",
        pass: failures.is_empty(),
        psnr,
        ssim,
        output_size: [ow, oh],
        guide_size: [guide.width(), guide.height()],
        downscale: DOWNSCALE,
        windows_source: format!("{} given", windows.len()),
        thresholds: *t,
        seams,
        drift,
        failures,
        notes,
    })
}

/// Golden-image regression: `a` against the reference `b` (same size required).
pub fn golden_check(
    a: &RgbImage,
    b: &RgbImage,
    t: &GoldenThresholds,
) -> std::result::Result<GoldenReport, SizeMismatch> {
    if a.dimensions() != b.dimensions() {
        return Err(SizeMismatch(format!(
            "the images differ in size ({}x{} vs {}x{})",
            a.width(),
            a.height(),
            b.width(),
            b.height()
        )));
    }
    let psnr = metrics::psnr(a, b);
    let ssim = metrics::ssim_rgb(a, b);
    let max_abs_error = metrics::max_abs_error(a, b);
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    if psnr < t.min_psnr {
        failures.push(format!("PSNR {psnr:.2} dB < {:.2}", t.min_psnr));
    }
    match ssim {
        Some(s) if s < t.min_ssim => failures.push(format!("SSIM {s:.4} < {:.3}", t.min_ssim)),
        Some(_) => {}
        None => notes.push("the images are smaller than 11x11 px: SSIM not computed".into()),
    }
    if let Some(m) = t.max_abs_error {
        if max_abs_error > m {
            failures.push(format!("max abs error {max_abs_error} > {m}"));
        }
    }
    Ok(GoldenReport {
        mode: "golden",
        pass: failures.is_empty(),
        psnr,
        ssim,
        max_abs_error,
        size: [a.width(), a.height()],
        thresholds: *t,
        failures,
        notes,
    })
}

/// The heatmap of a guide check (output size): |downscaled output − guide| upscaled, with the
/// report's boundaries coloured by seam score.
pub fn guide_heatmap(output: &RgbImage, guide: &RgbImage, report: &CheckReport) -> RgbImage {
    let small = metrics::downscale_area(output, guide.width(), guide.height());
    heatmap::heatmap(
        &small,
        guide,
        output,
        &report.seams,
        report.thresholds.max_seam,
    )
}

/// The heatmap of a golden check: |a − b| per pixel.
pub fn golden_heatmap(a: &RgbImage, b: &RgbImage) -> RgbImage {
    heatmap::heatmap(a, b, a, &[], 1.5)
}
