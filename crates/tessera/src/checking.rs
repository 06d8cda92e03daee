//! `tessera check` on files: pictures read, windows found (from `--spec`, else the output
//! PNG's own `tessera` chunk, the resolved spec with the planned window size, else none), the
//! pure checks of `tessera-check` run, heatmaps written.

use crate::render::RenderReport;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tessera_check::{
    golden_check, golden_heatmap, guide_check, guide_heatmap, reconcile, CheckReport, GoldenReport,
    GoldenThresholds, SizeMismatch, Thresholds,
};
use tessera_core::{Error, Rect, Result};
use tessera_models::{info, ModelDir};
use tessera_plan::spec::{self, Overrides, SpecFile};
use tessera_plan::Plan;

/// The origin of the windows a check used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSource {
    /// A spec given with `--spec`.
    Spec(PathBuf),
    /// The `tessera` text chunk of the output PNG.
    Chunk(PathBuf),
    /// Neither: the whole image is one window.
    WholeImage,
    /// A render's own plan (`tessera render --check`).
    Render,
}

impl WindowSource {
    pub fn describe(&self, count: usize) -> String {
        match self {
            WindowSource::Spec(p) => format!("{count} from the spec {}", p.display()),
            WindowSource::Chunk(p) => {
                format!("{count} from the `tessera` chunk of {}", p.display())
            }
            WindowSource::WholeImage => "none planned (no --spec, and the output has no \
                 `tessera` chunk): the whole image is one window"
                .into(),
            WindowSource::Render => format!("{count} from the render's plan"),
        }
    }
}

/// The text of the `tessera` chunk (iTXt, zTXt or tEXt) of a PNG; `None` if the file is not a
/// PNG or has no such chunk.
pub fn tessera_chunk(path: &Path) -> Result<Option<String>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let Ok(reader) = decoder.read_info() else {
        return Ok(None);
    };
    let info = reader.info();
    let itxt = info
        .utf8_text
        .iter()
        .filter(|c| c.keyword == "tessera")
        .find_map(|c| c.get_text().ok());
    let ztxt = || {
        info.compressed_latin1_text
            .iter()
            .filter(|c| c.keyword == "tessera")
            .find_map(|c| c.get_text().ok())
    };
    let text = || {
        info.uncompressed_latin1_text
            .iter()
            .find(|c| c.keyword == "tessera")
            .map(|c| c.text.clone())
    };
    Ok(itxt.or_else(ztxt).or_else(text))
}

/// The planned windows (output pixels) of a spec for an output of `size`. Only geometry is
/// used: image regions and the guide picture are dropped (they plan no windows), a canvas
/// size missing from the spec is taken from the output, and the model folder is read only
/// when the spec has no `[tiles] size` (the window then defaults to the model's native size).
pub fn windows_from_spec(mut file: SpecFile, origin: &Path, size: (u32, u32)) -> Result<Vec<Rect>> {
    file.regions.retain(|r| r.image.is_none());
    if let Some(g) = &mut file.guide {
        g.image = None;
    }
    let (ow, oh) = (size.0 as usize, size.1 as usize);
    let overrides = Overrides {
        width: file.canvas.width.is_none().then_some(ow),
        height: file.canvas.height.is_none().then_some(oh),
        ..Default::default()
    };
    let settings = spec::resolve(Some((origin, file)), &overrides)?;
    let native = match settings.tiles.size {
        Some(size) => size,
        None => {
            let model = crate::facts::model_path(&settings);
            ModelDir::open_model(&model, settings.model_config.as_deref())
                .and_then(|dir| info::native_size(&dir))
                .map_err(|e| {
                    Error::input(
                        origin,
                        Some("tiles.size"),
                        format!(
                            "no window size: the spec has no [tiles] size and the model folder {} \
                             (whose native size is the default) cannot be read: {e}",
                            model.display()
                        ),
                        "add `[tiles] size = ...` to the spec, or make its model folder available",
                    )
                })?
        }
    };
    let plan = Plan::new(&settings, native)?;
    if (plan.width, plan.height) != (ow, oh) {
        return Err(Error::input(
            origin,
            Some("canvas"),
            format!(
                "the spec plans a {}x{} canvas but the output is {ow}x{oh}",
                plan.width, plan.height
            ),
            "give the spec the output was rendered from",
        ));
    }
    Ok(plan_windows_px(&plan))
}

/// A plan's windows in pixels, duplicates removed, in plan order.
pub fn plan_windows_px(plan: &Plan) -> Vec<Rect> {
    let mut out: Vec<Rect> = Vec::new();
    for w in &plan.windows {
        let r = w.rect.scaled(8);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Windows for checking `output` (of `size`): from `spec` if given, else from the output's
/// `tessera` chunk, else none (an empty list: the whole image is one window).
pub fn plan_windows(
    output: &Path,
    size: (u32, u32),
    spec: Option<&Path>,
) -> Result<(Vec<Rect>, WindowSource)> {
    if let Some(path) = spec {
        let file = SpecFile::load(path)?;
        return Ok((
            windows_from_spec(file, path, size)?,
            WindowSource::Spec(path.into()),
        ));
    }
    match tessera_chunk(output)? {
        Some(text) => {
            let file = SpecFile::parse(&text, output)?;
            Ok((
                windows_from_spec(file, output, size)?,
                WindowSource::Chunk(output.into()),
            ))
        }
        None => Ok((Vec::new(), WindowSource::WholeImage)),
    }
}

/// What `tessera check` is asked to do.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The rendered picture.
    pub output: PathBuf,
    pub reference: Reference,
    /// Write a difference heatmap here.
    pub heatmap: Option<PathBuf>,
}

/// What the output is compared with.
#[derive(Debug, Clone)]
pub enum Reference {
    /// Its guide, with the windows of `spec` (else of the output's own chunk).
    Guide {
        guide: PathBuf,
        spec: Option<PathBuf>,
        thresholds: Thresholds,
    },
    /// A golden image of the same size.
    Golden {
        golden: PathBuf,
        thresholds: GoldenThresholds,
    },
}

/// A finished check.
#[derive(Debug, Clone)]
pub enum Outcome {
    Guide(CheckReport),
    Golden(GoldenReport),
}

impl Outcome {
    pub fn pass(&self) -> bool {
        match self {
            Outcome::Guide(r) => r.pass,
            Outcome::Golden(r) => r.pass,
        }
    }

    pub fn failures(&self) -> &[String] {
        match self {
            Outcome::Guide(r) => &r.failures,
            Outcome::Golden(r) => &r.failures,
        }
    }
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

/// Run a check: bad input (missing pictures, sizes that cannot be compared, an unreadable
/// spec) is an input error; a check that fails is a report with `pass: false`.
pub fn run(req: &CheckRequest) -> Result<Outcome> {
    let output = load_rgb(&req.output)?;
    match &req.reference {
        Reference::Golden { golden, thresholds } => {
            let reference = load_rgb(golden)?;
            let report = golden_check(&output, &reference, thresholds).map_err(|e| {
                Error::input(
                    golden,
                    None,
                    e.0,
                    "compare pictures of the same size (a golden image of this render)",
                )
            })?;
            if let Some(path) = &req.heatmap {
                crate::output::save_png(path, &golden_heatmap(&output, &reference), &[])?;
            }
            Ok(Outcome::Golden(report))
        }
        Reference::Guide {
            guide: guide_path,
            spec,
            thresholds,
        } => {
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
                plan_windows(&req.output, output.dimensions(), spec.as_deref())?;
            let mut report =
                guide_check(&output, &guide, &windows, thresholds).map_err(mismatch)?;
            report.windows_source = source.describe(windows.len());
            if let Some(path) = &req.heatmap {
                crate::output::save_png(path, &guide_heatmap(&output, &guide, &report), &[])?;
            }
            Ok(Outcome::Guide(report))
        }
    }
}

/// `tessera render --check`: the guide check of a finished render with default thresholds.
/// `None` when the render made no guide picture (no `[guide]`, or `guide.image`).
pub fn after_render(render: &RenderReport) -> Result<Option<CheckReport>> {
    let Some(guide_path) = &render.guide else {
        return Ok(None);
    };
    let output = load_rgb(&render.output)?;
    let guide = load_rgb(guide_path)?;
    let windows = plan_windows_px(&render.plan);
    let mut report = guide_check(&output, &guide, &windows, &Thresholds::default())
        .map_err(|e| Error::Other(format!("check: {e}")))?;
    report.windows_source = WindowSource::Render.describe(windows.len());
    Ok(Some(report))
}

/// The result of a finished check as an exit status: `Ok` when it passed, else an error
/// (exit 1) naming the first failure.
pub fn verdict(pass: bool, failures: &[String]) -> Result<()> {
    if pass {
        return Ok(());
    }
    let more = match failures.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Err(Error::Other(format!(
        "check failed: {}{more}",
        failures.first().map_or("", String::as_str)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_windows_from_a_spec_with_tiles() {
        let text = "[canvas]\nwidth = 320\nheight = 128\n[tiles]\nsize = 128\noverlap = 32\n";
        let p = Path::new("poster.toml");
        let ws = windows_from_spec(SpecFile::parse(text, p).unwrap(), p, (320, 128)).unwrap();
        let xs: Vec<usize> = ws.iter().map(|r| r.x).collect();
        assert_eq!(xs, vec![0, 96, 192]);
        assert!(ws.iter().all(|r| r.w == 128 && r.h == 128 && r.y == 0));
        let e = windows_from_spec(SpecFile::parse(text, p).unwrap(), p, (640, 256)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("320x128"), "{e}");
    }

    #[test]
    fn check_missing_canvas_size_comes_from_the_output() {
        let text = "[tiles]\nsize = [64, 64]\noverlap = 16\n";
        let p = Path::new("poster.toml");
        let ws = windows_from_spec(SpecFile::parse(text, p).unwrap(), p, (112, 64)).unwrap();
        assert_eq!(ws.len(), 2);
    }
}
