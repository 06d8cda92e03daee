//! Where the window plan of a checked output comes from: `--spec`, else the output PNG's own
//! `tessera` chunk (the resolved spec, with the planned window size), else none.

use crate::plan::{ModelFacts, Plan};
use crate::spec::{self, Overrides, SpecFile};
use crate::tiles::Rect;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

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
    let facts = match settings.tiles.size {
        Some(size) => ModelFacts::geometry_only(size),
        None => crate::model::ModelDir::open(&settings.model)
            .and_then(|dir| crate::pipeline::model_facts(&dir))
            .map_err(|e| {
                Error::input(
                    origin,
                    Some("tiles.size"),
                    format!(
                        "no window size: the spec has no [tiles] size and the model folder {} \
                         (whose native size is the default) cannot be read: {e}",
                        settings.model.display()
                    ),
                    "add `[tiles] size = ...` to the spec, or make its model folder available",
                )
            })?,
    };
    let plan = Plan::new(&settings, &facts)?;
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
