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
//! The library entry points are [`guide_check`] and [`golden_check`]; [`run`] is the CLI.

pub mod colour;
pub mod heatmap;
pub mod metrics;
pub mod report;
pub mod seams;
pub mod windows;

pub use report::{
    CheckReport, DriftResult, GoldenReport, GoldenThresholds, PxRect, SeamResult, Thresholds,
};
pub use windows::WindowSource;

use crate::tiles::Rect;
use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

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

/// `tessera check` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("reference").required(true).args(["guide", "against"])))]
pub struct CheckArgs {
    /// The rendered PNG to check.
    pub output: PathBuf,
    /// The guide it was rendered from (`<output stem>.guide.png`): the output is downscaled to
    /// it and compared, per window and at window boundaries.
    #[arg(long, value_name = "PNG")]
    pub guide: Option<PathBuf>,
    /// Golden-image regression: compare with this reference picture of the same size.
    #[arg(long, value_name = "PNG", conflicts_with_all = ["guide", "spec", "max_seam", "max_drift"])]
    pub against: Option<PathBuf>,
    /// Spec whose window plan to check [default: the output PNG's own `tessera` chunk].
    #[arg(long, value_name = "TOML")]
    pub spec: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Lowest PSNR in dB [default: 20 with --guide, 40 with --against].
    #[arg(long, value_name = "DB")]
    pub min_psnr: Option<f64>,
    /// Lowest SSIM [default: 0.5 with --guide, 0.99 with --against].
    #[arg(long, value_name = "X")]
    pub min_ssim: Option<f64>,
    /// Highest seam score [default: 1.5].
    #[arg(long, value_name = "X")]
    pub max_seam: Option<f64>,
    /// Highest per-window colour drift, ΔE76 [default: 10].
    #[arg(long, value_name = "DE")]
    pub max_drift: Option<f64>,
    /// Highest absolute error of any 8-bit sample (with --against) [default: not enforced].
    #[arg(long, value_name = "N", conflicts_with = "guide")]
    pub max_abs_error: Option<u8>,
    /// Write a difference heatmap (output size, seams coloured by score) to this PNG.
    #[arg(long, value_name = "PNG")]
    pub heatmap: Option<PathBuf>,
}

fn load_rgb(path: &Path) -> Result<RgbImage> {
    if !path.is_file() {
        return Err(Error::input(
            path,
            None,
            "file not found",
            "check the path of the picture",
        ));
    }
    image::open(path).map(|i| i.to_rgb8()).map_err(|e| {
        Error::input(
            path,
            None,
            format!("cannot read the picture: {e}"),
            "give a PNG or JPEG file",
        )
    })
}

fn threshold(flag: &str, v: Option<f64>, default: f64) -> Result<f64> {
    match v {
        Some(v) if !v.is_finite() => Err(Error::input(
            flag,
            None,
            format!("{v} is not a number"),
            "give a finite number",
        )),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

impl CheckArgs {
    pub fn thresholds(&self) -> Result<Thresholds> {
        let d = Thresholds::default();
        Ok(Thresholds {
            min_psnr: threshold("--min-psnr", self.min_psnr, d.min_psnr)?,
            min_ssim: threshold("--min-ssim", self.min_ssim, d.min_ssim)?,
            max_seam: threshold("--max-seam", self.max_seam, d.max_seam)?,
            max_drift: threshold("--max-drift", self.max_drift, d.max_drift)?,
        })
    }

    pub fn golden_thresholds(&self) -> Result<GoldenThresholds> {
        let d = GoldenThresholds::default();
        Ok(GoldenThresholds {
            min_psnr: threshold("--min-psnr", self.min_psnr, d.min_psnr)?,
            min_ssim: threshold("--min-ssim", self.min_ssim, d.min_ssim)?,
            max_abs_error: self.max_abs_error.or(d.max_abs_error),
        })
    }
}

fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("serialisable")
        );
    } else {
        print!("{report}");
    }
}

/// The exit status of a finished check: `Ok` (0) when it passed, else an error (exit 1).
fn verdict(pass: bool, failures: &[String]) -> Result<()> {
    if pass {
        Ok(())
    } else {
        let more = match failures.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Err(Error::Other(format!(
            "check failed: {}{more}",
            failures.first().map_or("", String::as_str)
        )))
    }
}

/// `tessera check`: exit 0 within thresholds, 1 outside, 2 on bad input.
pub fn run(args: &CheckArgs) -> Result<()> {
    let output = load_rgb(&args.output)?;
    if let Some(against) = &args.against {
        let t = args.golden_thresholds()?;
        let reference = load_rgb(against)?;
        let report = golden_check(&output, &reference, &t).map_err(|e| {
            Error::input(
                against,
                None,
                e.0,
                "compare pictures of the same size (a golden image of this render)",
            )
        })?;
        print_report(&report, args.json);
        if let Some(path) = &args.heatmap {
            crate::output::save_png(path, &golden_heatmap(&output, &reference), &[])?;
        }
        return verdict(report.pass, &report.failures);
    }
    let Some(guide_path) = &args.guide else {
        return Err(Error::input(
            &args.output,
            None,
            "nothing to compare with",
            "give --guide GUIDE.png or --against GOLDEN.png",
        ));
    };
    let t = args.thresholds()?;
    let guide = load_rgb(guide_path)?;
    let mismatch = |e: SizeMismatch| {
        Error::input(
            guide_path,
            None,
            e.0,
            "give the guide this output was rendered from (`<output stem>.guide.png`): \
             the same aspect ratio, not larger than the output",
        )
    };
    reconcile(output.dimensions(), guide.dimensions()).map_err(mismatch)?;
    let (windows, source) =
        windows::plan_windows(&args.output, output.dimensions(), args.spec.as_deref())?;
    let mut report = guide_check(&output, &guide, &windows, &t).map_err(mismatch)?;
    report.windows_source = source.describe(windows.len());
    print_report(&report, args.json);
    if let Some(path) = &args.heatmap {
        crate::output::save_png(path, &guide_heatmap(&output, &guide, &report), &[])?;
    }
    verdict(report.pass, &report.failures)
}

/// `tessera render --check`: the guide check of a finished render with default thresholds,
/// printed to stdout. A render without a rendered guide picture is skipped with a note.
pub fn after_render(render: &crate::pipeline::RenderReport) -> Result<Option<CheckReport>> {
    let Some(guide_path) = &render.guide else {
        eprintln!(
            "check: skipped: this render made no guide picture (no [guide] in the spec, or \
             the guide came from `guide.image`), so there is nothing to downscale-compare with"
        );
        return Ok(None);
    };
    let output = load_rgb(&render.output)?;
    let guide = load_rgb(guide_path)?;
    let windows = windows::plan_windows_px(&render.plan);
    let mut report = guide_check(&output, &guide, &windows, &Thresholds::default())
        .map_err(|e| Error::Other(format!("check: {e}")))?;
    report.windows_source = WindowSource::Render.describe(windows.len());
    Ok(Some(report))
}

/// Print a render's check as a table (unless it went out as JSON) and fail if it failed.
pub fn conclude(report: &CheckReport, printed_as_json: bool) -> Result<()> {
    if !printed_as_json {
        print_report(report, false);
    }
    verdict(report.pass, &report.failures)
}
