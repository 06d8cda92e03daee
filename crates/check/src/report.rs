//! Check reports: the numbers, what failed, a human table (`Display`) and JSON (`Serialize`).

use super::seams::Boundary;
use serde::{Serialize, Serializer};
use tessera_core::Rect;

/// A rectangle in pixels, written `x, y, w, h` in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PxRect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

impl From<Rect> for PxRect {
    fn from(r: Rect) -> Self {
        PxRect {
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
        }
    }
}

impl std::fmt::Display for PxRect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{} at ({}, {})", self.w, self.h, self.x, self.y)
    }
}

/// Thresholds of the guide check (`tessera check OUTPUT --guide GUIDE`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Lowest PSNR (dB) of the downscaled output against the guide.
    pub min_psnr: f64,
    /// Lowest mean SSIM (luma) of the downscaled output against the guide.
    pub min_ssim: f64,
    /// Highest seam score (boundary gradient energy / nearby reference energy).
    pub max_seam: f64,
    /// Highest per-window colour drift, ΔE76 between mean Lab colours.
    pub max_drift: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_psnr: 20.0,
            min_ssim: 0.5,
            max_seam: 1.5,
            max_drift: 10.0,
        }
    }
}

/// Thresholds of the golden-image check (`tessera check A --against B`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GoldenThresholds {
    pub min_psnr: f64,
    pub min_ssim: f64,
    /// Largest allowed absolute difference of any 8-bit sample; `None`: reported only.
    pub max_abs_error: Option<u8>,
}

impl Default for GoldenThresholds {
    fn default() -> Self {
        GoldenThresholds {
            min_psnr: 40.0,
            min_ssim: 0.99,
            max_abs_error: None,
        }
    }
}

/// One window boundary and its seam score.
#[derive(Debug, Clone, Serialize)]
pub struct SeamResult {
    #[serde(flatten)]
    pub boundary: Boundary,
    /// `"x=384"` or `"y=512"`.
    pub position: String,
    /// Mean absolute luma step across the line (8-bit levels).
    pub line_energy: Option<f64>,
    /// The same on the reference lines at ±3..±6 px.
    pub reference_energy: Option<f64>,
    /// `(line + 0.5) / (reference + 0.5)`; `None` when no reference line fits.
    pub score: Option<f64>,
    pub pass: bool,
}

/// Colour drift of one window.
#[derive(Debug, Clone, Serialize)]
pub struct DriftResult {
    /// Index among the checked windows (plan order, duplicates removed).
    pub window: usize,
    /// The window in output pixels.
    pub rect: PxRect,
    /// The same area in guide pixels (where the means are taken).
    pub guide_rect: PxRect,
    /// ΔE76 between the mean Lab colour of the downscaled output and of the guide.
    pub delta_e: f64,
    pub pass: bool,
}

fn inf_as_null<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

fn fmt_psnr(p: f64) -> String {
    if p.is_finite() {
        format!("{p:.2} dB")
    } else {
        "inf (identical)".into()
    }
}

fn fmt_ssim(s: Option<f64>) -> String {
    s.map_or("n/a".into(), |s| format!("{s:.4}"))
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "ok"
    } else {
        "FAIL"
    }
}

/// Result of the guide check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// `"guide"`.
    pub mode: &'static str,
    /// All checks within thresholds.
    pub pass: bool,
    /// PSNR (dB, RGB, peak 255) of the downscaled output against the guide; JSON `null` when
    /// the images are identical (infinite PSNR).
    #[serde(serialize_with = "inf_as_null")]
    pub psnr: f64,
    /// Mean SSIM on luma; `None` for guides smaller than 11x11.
    pub ssim: Option<f64>,
    pub output_size: [u32; 2],
    pub guide_size: [u32; 2],
    /// How the output was brought to the guide's size.
    pub downscale: &'static str,
    /// Where the windows came from (`--spec`, the PNG's `tessera` chunk, or the whole image).
    pub windows_source: String,
    pub thresholds: Thresholds,
    pub seams: Vec<SeamResult>,
    pub drift: Vec<DriftResult>,
    /// One line per failed check.
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

/// Result of the golden-image check.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenReport {
    /// `"golden"`.
    pub mode: &'static str,
    pub pass: bool,
    /// JSON `null` when identical (infinite PSNR).
    #[serde(serialize_with = "inf_as_null")]
    pub psnr: f64,
    pub ssim: Option<f64>,
    pub max_abs_error: u8,
    pub size: [u32; 2],
    pub thresholds: GoldenThresholds,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.thresholds;
        writeln!(
            f,
            "guide check: output {}x{} downscaled to the guide's {}x{} ({})",
            self.output_size[0],
            self.output_size[1],
            self.guide_size[0],
            self.guide_size[1],
            self.downscale
        )?;
        writeln!(f, "windows: {}", self.windows_source)?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<28} {:>16}  {:<12} result",
            "metric", "value", "threshold"
        )?;
        let psnr_ok = self.psnr >= t.min_psnr;
        writeln!(
            f,
            "  {:<28} {:>16}  {:<12} {}",
            "PSNR (RGB)",
            fmt_psnr(self.psnr),
            format!(">= {:.2}", t.min_psnr),
            verdict(psnr_ok)
        )?;
        let ssim_ok = !matches!(self.ssim, Some(s) if s < t.min_ssim);
        writeln!(
            f,
            "  {:<28} {:>16}  {:<12} {}",
            "SSIM (luma)",
            fmt_ssim(self.ssim),
            format!(">= {:.3}", t.min_ssim),
            if self.ssim.is_none() {
                "skipped"
            } else {
                verdict(ssim_ok)
            }
        )?;
        let worst_seam = self
            .seams
            .iter()
            .filter_map(|s| s.score.map(|v| (v, s)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let seams_ok = self.seams.iter().all(|s| s.pass);
        match worst_seam {
            Some((v, s)) => writeln!(
                f,
                "  {:<28} {:>16}  {:<12} {}",
                format!("worst seam ({} boundaries)", self.seams.len()),
                format!("{v:.3} {}", s.position),
                format!("<= {:.2}", t.max_seam),
                verdict(seams_ok)
            )?,
            None => writeln!(
                f,
                "  {:<28} {:>16}  {:<12} skipped",
                "seams",
                "no boundaries",
                format!("<= {:.2}", t.max_seam)
            )?,
        }
        let worst_drift = self
            .drift
            .iter()
            .max_by(|a, b| a.delta_e.total_cmp(&b.delta_e));
        if let Some(d) = worst_drift {
            writeln!(
                f,
                "  {:<28} {:>16}  {:<12} {}",
                format!("worst drift ({} windows)", self.drift.len()),
                format!("ΔE {:.2} #{}", d.delta_e, d.window),
                format!("<= {:.2}", t.max_drift),
                verdict(self.drift.iter().all(|d| d.pass))
            )?;
        }
        if !self.seams.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "  seams: boundary               extent          score  result"
            )?;
            for s in &self.seams {
                let axis = match s.boundary.orientation {
                    super::seams::Orientation::Vertical => "y",
                    super::seams::Orientation::Horizontal => "x",
                };
                writeln!(
                    f,
                    "    {:<10} {:<15} {:<15} {:>6}  {}",
                    format!("{:?}", s.boundary.orientation).to_lowercase(),
                    s.position,
                    format!("{axis} {}..{}", s.boundary.from, s.boundary.to),
                    s.score.map_or("n/a".into(), |v| format!("{v:.3}")),
                    if s.score.is_none() {
                        "skipped"
                    } else {
                        verdict(s.pass)
                    }
                )?;
            }
        }
        if !self.drift.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "  drift: window  rect (output px)            ΔE76  result"
            )?;
            for d in &self.drift {
                writeln!(
                    f,
                    "    #{:<5} {:<28} {:>6.2}  {}",
                    d.window,
                    d.rect.to_string(),
                    d.delta_e,
                    verdict(d.pass)
                )?;
            }
        }
        write_footer(f, self.pass, &self.failures, &self.notes)
    }
}

impl std::fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.thresholds;
        writeln!(
            f,
            "golden check: {}x{} against the reference",
            self.size[0], self.size[1]
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<16} {:>16}  {:<12} result",
            "metric", "value", "threshold"
        )?;
        writeln!(
            f,
            "  {:<16} {:>16}  {:<12} {}",
            "PSNR (RGB)",
            fmt_psnr(self.psnr),
            format!(">= {:.2}", t.min_psnr),
            verdict(self.psnr >= t.min_psnr)
        )?;
        writeln!(
            f,
            "  {:<16} {:>16}  {:<12} {}",
            "SSIM (luma)",
            fmt_ssim(self.ssim),
            format!(">= {:.3}", t.min_ssim),
            match self.ssim {
                None => "skipped",
                Some(s) => verdict(s >= t.min_ssim),
            }
        )?;
        writeln!(
            f,
            "  {:<16} {:>16}  {:<12} {}",
            "max abs error",
            self.max_abs_error,
            t.max_abs_error
                .map_or("(reported)".into(), |m| format!("<= {m}")),
            match t.max_abs_error {
                None => "-",
                Some(m) => verdict(self.max_abs_error <= m),
            }
        )?;
        write_footer(f, self.pass, &self.failures, &self.notes)
    }
}

fn write_footer(
    f: &mut std::fmt::Formatter<'_>,
    pass: bool,
    failures: &[String],
    notes: &[String],
) -> std::fmt::Result {
    writeln!(f)?;
    for n in notes {
        writeln!(f, "note: {n}")?;
    }
    if pass {
        writeln!(f, "result: PASS")
    } else {
        writeln!(f, "result: FAIL ({} failed)", failures.len())?;
        for x in failures {
            writeln!(f, "  - {x}")?;
        }
        Ok(())
    }
}
