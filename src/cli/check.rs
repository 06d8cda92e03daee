//! `tessera check`: a render against its guide, or against a golden image.

use clap::Args;
use std::path::PathBuf;
use tessera::check::{GoldenThresholds, Thresholds};
use tessera::checking::{self, CheckRequest, Outcome, Reference};
use tessera::{Error, Result};

#[derive(Debug, Clone, Args)]
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
    fn request(&self) -> Result<CheckRequest> {
        let reference = match (&self.against, &self.guide) {
            (Some(golden), _) => {
                let d = GoldenThresholds::default();
                Reference::Golden {
                    golden: golden.clone(),
                    thresholds: GoldenThresholds {
                        min_psnr: threshold("--min-psnr", self.min_psnr, d.min_psnr)?,
                        min_ssim: threshold("--min-ssim", self.min_ssim, d.min_ssim)?,
                        max_abs_error: self.max_abs_error.or(d.max_abs_error),
                    },
                }
            }
            (None, Some(guide)) => {
                let d = Thresholds::default();
                Reference::Guide {
                    guide: guide.clone(),
                    spec: self.spec.clone(),
                    thresholds: Thresholds {
                        min_psnr: threshold("--min-psnr", self.min_psnr, d.min_psnr)?,
                        min_ssim: threshold("--min-ssim", self.min_ssim, d.min_ssim)?,
                        max_seam: threshold("--max-seam", self.max_seam, d.max_seam)?,
                        max_drift: threshold("--max-drift", self.max_drift, d.max_drift)?,
                    },
                }
            }
            (None, None) => {
                return Err(Error::input(
                    &self.output,
                    None,
                    "nothing to compare with",
                    "give --guide GUIDE.png or --against GOLDEN.png",
                ))
            }
        };
        Ok(CheckRequest {
            output: self.output.clone(),
            reference,
            heatmap: self.heatmap.clone(),
        })
    }
}

/// Exit 0 within thresholds, 1 outside, 2 on bad input.
pub fn run(args: &CheckArgs) -> Result<()> {
    let outcome = checking::run(&args.request()?)?;
    match &outcome {
        Outcome::Guide(r) => super::print_report(r, args.json),
        Outcome::Golden(r) => super::print_report(r, args.json),
    }
    checking::verdict(outcome.pass(), outcome.failures())
}
