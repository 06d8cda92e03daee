//! Canvas specs: the TOML file format, CLI overrides, and validation into [`Settings`].
//!
//! Every problem is reported with the file, the field and the fix (exit status 2).

use crate::model::parse_dtype;
use crate::scheduler::SchedulerKind;
use crate::tiles::{Mask, Rect};
use crate::{Error, Result};
use candle_core::DType;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The TOML file as written. Unknown keys are errors so typos never pass silently.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Path of a diffusers model folder, relative to the spec file.
    pub model: Option<String>,
    #[serde(default)]
    pub canvas: CanvasTable,
    pub prompt: Option<PromptTable>,
    pub tiles: Option<TilesTable>,
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionTable>,
    pub guide: Option<GuideTable>,
    pub output: Option<OutputTable>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasTable {
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub scheduler: Option<String>,
    pub dtype: Option<String>,
    /// Stream UNet weights stage by stage from disk (low-RAM runs).
    pub stream_weights: Option<bool>,
    /// MiB of attention scores (and feed-forward state) alive at once.
    pub attention_mib: Option<usize>,
    /// A memory budget such as "800M" or "2G": tessera picks settings that fit it.
    pub max_memory: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTable {
    pub text: String,
    pub negative: Option<String>,
    pub guidance: Option<f64>,
}

/// A side given once (square) or as `[w, h]`.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Size {
    Square(usize),
    WidthHeight([usize; 2]),
}

impl Size {
    pub fn wh(self) -> (usize, usize) {
        match self {
            Size::Square(s) => (s, s),
            Size::WidthHeight([w, h]) => (w, h),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TilesTable {
    pub size: Option<Size>,
    pub overlap: Option<usize>,
    pub mask: Option<Mask>,
    /// VAE tile side in pixels; 0 decodes in one piece.
    pub vae: Option<usize>,
}

/// A `[[region]]`: a text region (`prompt`) or an image region (`image`).
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionTable {
    /// `[x, y, w, h]` in pixels.
    pub rect: Option<[usize; 4]>,
    pub prompt: Option<String>,
    pub negative: Option<String>,
    pub guidance: Option<f64>,
    pub mask: Option<Mask>,
    pub weight: Option<f64>,
    pub seed: Option<u64>,
    pub image: Option<String>,
    pub strength: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuideTable {
    pub enabled: Option<bool>,
    pub size: Option<Size>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub image: Option<String>,
    pub strength: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTable {
    pub path: Option<String>,
}

/// Command-line values that override the spec (all optional).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub prompt: Option<String>,
    pub negative: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub dtype: Option<String>,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
    pub vae_tile: Option<usize>,
    pub stream_weights: bool,
    pub attention_mib: Option<usize>,
    pub max_memory: Option<String>,
}

/// A prompt with its negative and guidance scale.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPrompt {
    pub text: String,
    pub negative: String,
    pub guidance: f64,
}

#[derive(Debug, Clone)]
pub enum RegionKind {
    Text {
        prompt: TextPrompt,
        mask: Mask,
        weight: f64,
        seed: Option<u64>,
    },
    Image {
        image: PathBuf,
        strength: f64,
    },
}

/// A region with its rectangle in pixels; `index` is its position among the spec's regions.
#[derive(Debug, Clone)]
pub struct Region {
    pub index: usize,
    pub rect: Rect,
    pub kind: RegionKind,
}

#[derive(Debug, Clone)]
pub struct TileSettings {
    /// Window size in pixels `(w, h)`; `None`: the model's native size.
    pub size: Option<(usize, usize)>,
    /// Overlap in pixels; `None`: a quarter of the window.
    pub overlap: Option<usize>,
    pub mask: Mask,
    /// VAE tile side in pixels; `None`: the VAE runs in one piece.
    pub vae: Option<usize>,
}

/// Default VAE tile side: small enough that a full-size SD VAE tile stays a few hundred MB.
pub const DEFAULT_VAE_TILE: usize = 256;

#[derive(Debug, Clone)]
pub struct GuideSettings {
    /// Guide size in pixels `(w, h)`; `None`: the model's native size at the canvas aspect ratio.
    pub size: Option<(usize, usize)>,
    pub steps: usize,
    pub guidance: f64,
    /// A picture to use as the guide instead of rendering one.
    pub image: Option<PathBuf>,
    /// Fraction of the schedule re-run on the upscaled guide.
    pub strength: f64,
}

/// Everything a render needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The spec file (or `<command line>`), named in errors found later.
    pub origin: PathBuf,
    pub model: PathBuf,
    /// `None`: the model's native size.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: u64,
    pub steps: usize,
    /// `None`: the scheduler named by the model folder's `scheduler_config.json`.
    pub scheduler: Option<SchedulerKind>,
    pub dtype: DType,
    /// Load each UNet stage from disk right before it runs (output is bit-identical).
    pub stream_weights: bool,
    /// Bytes of attention scores (and feed-forward state) alive at once.
    pub attention_budget: usize,
    /// The memory budget in bytes, if any (settings are then fitted to it, see `budget`).
    pub max_memory: Option<u64>,
    /// Keep the VAE decoder loaded from the guide decode to the final decode (true unless a
    /// memory budget needs its weights free during the canvas pass).
    pub keep_decoder: bool,
    /// The global prompt; `None` when a spec has regions and no `[prompt]`.
    pub background: Option<TextPrompt>,
    pub regions: Vec<Region>,
    pub tiles: TileSettings,
    pub guide: Option<GuideSettings>,
    pub output: PathBuf,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
}

pub const DEFAULT_STEPS: usize = 30;
pub const DEFAULT_GUIDANCE: f64 = 7.5;

impl SpecFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(
                path,
                None,
                format!("cannot read the spec: {e}"),
                "check the path of the canvas spec",
            )
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let field = e.span().map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("line {line}: {}", text[span].trim())
            });
            let fix = if message.contains("unknown field") {
                "remove or correct the key; the spec format is in README.md"
            } else {
                "correct the value; the spec format is in README.md"
            };
            Error::input(path, field.as_deref(), message, fix)
        })
    }
}

/// A memory size: a number with an optional K/M/G/T suffix (powers of 1024, as cgroups read
/// them; "MB", "MiB" and "M" are all MiB), a bare number is bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim().to_ascii_lowercase());
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| (value * (1u64 << shift) as f64) as u64)
}

/// Resolve a spec (or none: flags alone) plus overrides into validated settings.
pub fn resolve(spec: Option<(&Path, SpecFile)>, o: &Overrides) -> Result<Settings> {
    let (spec_path, spec) = match spec {
        Some((p, s)) => (Some(p.to_path_buf()), s),
        None => (None, SpecFile::default()),
    };
    let origin = spec_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    let base = spec_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bad =
        |field: &str, message: String, fix: &str| Error::input(&origin, Some(field), message, fix);

    let model = match (&o.model, &spec.model) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => base.join(m),
        (None, None) => crate::model::ModelDir::bundled_default(),
    };
    let c = &spec.canvas;
    let width = o.width.or(c.width);
    let height = o.height.or(c.height);
    for (field, v) in [("canvas.width", width), ("canvas.height", height)] {
        if let Some(v) = v {
            check_multiple_of_8(&bad, field, v, false)?;
        }
    }
    let steps = o.steps.or(c.steps).unwrap_or(DEFAULT_STEPS);
    if steps == 0 || steps > 1000 {
        return Err(bad(
            "canvas.steps",
            format!("{steps} steps"),
            "use 1 to 1000 steps",
        ));
    }
    let scheduler = match o.scheduler.as_ref().or(c.scheduler.as_ref()) {
        None => None,
        Some(name) => Some(SchedulerKind::from_name(name).ok_or_else(|| {
            bad(
                "canvas.scheduler",
                format!("unknown scheduler {name:?}"),
                &format!("use one of: {}", SchedulerKind::NAMES.join(", ")),
            )
        })?),
    };
    let dtype_name = o
        .dtype
        .as_ref()
        .or(c.dtype.as_ref())
        .map(String::as_str)
        .unwrap_or("f32");
    let dtype = parse_dtype(dtype_name).ok_or_else(|| {
        bad(
            "canvas.dtype",
            format!("unknown dtype {dtype_name:?}"),
            "use f32, f16 or bf16",
        )
    })?;
    let background = match (&spec.prompt, &o.prompt) {
        // A spec with regions and no [prompt] denoises only its regions (reference semantics).
        (None, None) if !spec.regions.is_empty() => None,
        (p, text) => {
            let p = p.clone().unwrap_or_default();
            Some(TextPrompt {
                text: text.clone().unwrap_or(p.text),
                negative: o.negative.clone().or(p.negative).unwrap_or_default(),
                guidance: check_guidance(&bad, "prompt.guidance", o.guidance.or(p.guidance))?,
            })
        }
    };
    let regions = spec
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| resolve_region(i, r, &base, &bad))
        .collect::<Result<Vec<_>>>()?;
    let mut tiles_table = spec.tiles.clone().unwrap_or_default();
    tiles_table.vae = o.vae_tile.or(tiles_table.vae);
    let tiles = resolve_tiles(Some(&tiles_table), &bad)?;
    let guide = match &spec.guide {
        Some(g) if g.enabled.unwrap_or(true) => Some(resolve_guide(g, steps, &base, &bad)?),
        _ => None,
    };
    let output = match (
        &o.out,
        &spec.output.as_ref().and_then(|t| t.path.as_ref()),
        &spec_path,
    ) {
        (Some(out), _, _) => out.clone(),
        (None, Some(path), _) => base.join(path),
        (None, None, Some(sp)) => sp.with_extension("png"),
        (None, None, None) => PathBuf::from("tessera.png"),
    };
    Ok(Settings {
        origin: origin.clone(),
        model,
        width,
        height,
        seed: o.seed.or(c.seed).unwrap_or(0),
        steps,
        scheduler,
        dtype,
        stream_weights: o.stream_weights || c.stream_weights.unwrap_or(false),
        attention_budget: match o.attention_mib.or(c.attention_mib) {
            Some(0) => {
                return Err(bad(
                    "canvas.attention_mib",
                    "0 MiB of attention".into(),
                    "use at least 1 (MiB), or leave it out for the default",
                ))
            }
            Some(mib) => mib << 20,
            None => crate::model::unet::DEFAULT_ATTENTION_BUDGET,
        },
        max_memory: match o.max_memory.as_ref().or(c.max_memory.as_ref()) {
            Some(text) => Some(parse_bytes(text).ok_or_else(|| {
                bad(
                    "canvas.max_memory",
                    format!("{text:?} is not a memory size"),
                    "write a size such as \"800M\", \"1.5G\" or \"2048MiB\" (K, M, G are powers of 1024)",
                )
            })?),
            None => None,
        },
        keep_decoder: true,
        background,
        regions,
        tiles,
        guide,
        output,
        init_noise: o.init_noise.clone(),
        save_latents: o.save_latents.clone(),
    })
}

impl Settings {
    /// The resolved settings written back as a spec (stored in output PNGs, so a render can be
    /// reproduced and checked from its own metadata).
    /// `window` and `overlap` are the planned ones, so the file needs no model to re-plan.
    pub fn to_spec_file(
        &self,
        (width, height): (usize, usize),
        (window, overlap): ((usize, usize), usize),
        scheduler: SchedulerKind,
    ) -> SpecFile {
        let path = |p: &Path| p.display().to_string();
        SpecFile {
            model: Some(path(&self.model)),
            canvas: CanvasTable {
                width: Some(width),
                height: Some(height),
                seed: Some(self.seed),
                steps: Some(self.steps),
                scheduler: Some(scheduler.name().to_string()),
                dtype: Some(format!("{:?}", self.dtype).to_lowercase()),
                stream_weights: Some(self.stream_weights),
                attention_mib: Some(self.attention_budget >> 20),
                max_memory: None,
            },
            prompt: self.background.as_ref().map(|p| PromptTable {
                text: p.text.clone(),
                negative: Some(p.negative.clone()),
                guidance: Some(p.guidance),
            }),
            tiles: Some(TilesTable {
                size: Some(Size::WidthHeight([window.0, window.1])),
                overlap: Some(overlap),
                mask: Some(self.tiles.mask),
                vae: Some(self.tiles.vae.unwrap_or(0)),
            }),
            regions: self
                .regions
                .iter()
                .map(|r| {
                    let rect = Some([r.rect.x, r.rect.y, r.rect.w, r.rect.h]);
                    match &r.kind {
                        RegionKind::Text {
                            prompt,
                            mask,
                            weight,
                            seed,
                        } => RegionTable {
                            rect,
                            prompt: Some(prompt.text.clone()),
                            negative: Some(prompt.negative.clone()),
                            guidance: Some(prompt.guidance),
                            mask: Some(*mask),
                            weight: Some(*weight),
                            seed: *seed,
                            ..Default::default()
                        },
                        RegionKind::Image { image, strength } => RegionTable {
                            rect,
                            image: Some(path(image)),
                            strength: Some(*strength),
                            ..Default::default()
                        },
                    }
                })
                .collect(),
            guide: self.guide.as_ref().map(|g| GuideTable {
                enabled: Some(true),
                size: g.size.map(|(w, h)| Size::WidthHeight([w, h])),
                steps: Some(g.steps),
                guidance: Some(g.guidance),
                image: g.image.as_deref().map(path),
                strength: Some(g.strength),
            }),
            output: Some(OutputTable {
                path: Some(path(&self.output)),
            }),
        }
    }
}

type Bad<'a> = dyn Fn(&str, String, &str) -> Error + 'a;

fn check_guidance(bad: &Bad, field: &str, g: Option<f64>) -> Result<f64> {
    let g = g.unwrap_or(DEFAULT_GUIDANCE);
    if !g.is_finite() || g < 0.0 {
        return Err(bad(
            field,
            format!("{g}"),
            "use a number >= 0 (7.5 is usual)",
        ));
    }
    Ok(g)
}

fn check_multiple_of_8(bad: &Bad, field: &str, v: usize, allow_zero: bool) -> Result<()> {
    if !v.is_multiple_of(8) || (v == 0 && !allow_zero) {
        let below = (v / 8 * 8).max(8);
        let fix = format!("use a multiple of 8, e.g. {below} or {}", below + 8);
        return Err(bad(
            field,
            format!("{v} is not a positive multiple of 8"),
            &fix,
        ));
    }
    Ok(())
}

fn check_strength(bad: &Bad, field: &str, s: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&s) {
        return Err(bad(field, format!("{s}"), "use a strength between 0 and 1"));
    }
    Ok(s)
}

fn resolve_region(i: usize, r: &RegionTable, base: &Path, bad: &Bad) -> Result<Region> {
    let f = |name: &str| format!("region[{i}].{name}");
    let [x, y, w, h] = r.rect.ok_or_else(|| {
        bad(
            &f("rect"),
            "missing".into(),
            "give rect = [x, y, width, height] in pixels",
        )
    })?;
    for (name, v) in [("rect x", x), ("rect y", y)] {
        check_multiple_of_8(bad, &f(name), v, true)?;
    }
    for (name, v) in [("rect width", w), ("rect height", h)] {
        check_multiple_of_8(bad, &f(name), v, false)?;
    }
    let rect = Rect { y, x, h, w };
    let kind = match (&r.image, &r.prompt) {
        (Some(_), Some(_)) => {
            return Err(bad(
                &f("image"),
                "a region has both `image` and `prompt`".into(),
                "split it into a text region and an image region",
            ))
        }
        (None, None) => {
            return Err(bad(
                &f("prompt"),
                "a region needs `prompt` or `image`".into(),
                "add prompt = \"...\" (text region) or image = \"file.png\" (image region)",
            ))
        }
        (Some(image), None) => {
            for (name, set) in [
                ("guidance", r.guidance.is_some()),
                ("negative", r.negative.is_some()),
                ("mask", r.mask.is_some()),
                ("weight", r.weight.is_some()),
                ("seed", r.seed.is_some()),
            ] {
                if set {
                    return Err(bad(
                        &f(name),
                        format!("`{name}` does not apply to an image region"),
                        "remove it, or make this a text region with `prompt`",
                    ));
                }
            }
            let image = base.join(image);
            if !image.is_file() {
                return Err(bad(
                    &f("image"),
                    format!("{} not found", image.display()),
                    "give the path of a PNG or JPEG, relative to the spec",
                ));
            }
            RegionKind::Image {
                image,
                strength: check_strength(bad, &f("strength"), r.strength.unwrap_or(0.5))?,
            }
        }
        (None, Some(text)) => {
            if r.strength.is_some() {
                return Err(bad(
                    &f("strength"),
                    "`strength` applies to image regions only".into(),
                    "remove it, or give `image` instead of `prompt`",
                ));
            }
            let weight = r.weight.unwrap_or(1.0);
            if !(weight.is_finite() && weight > 0.0) {
                return Err(bad(
                    &f("weight"),
                    format!("{weight}"),
                    "use a weight > 0 (1.0 is usual)",
                ));
            }
            RegionKind::Text {
                prompt: TextPrompt {
                    text: text.clone(),
                    negative: r.negative.clone().unwrap_or_default(),
                    guidance: check_guidance(bad, &f("guidance"), r.guidance)?,
                },
                mask: r.mask.unwrap_or_default(),
                weight,
                seed: r.seed,
            }
        }
    };
    Ok(Region {
        index: i,
        rect,
        kind,
    })
}

fn resolve_tiles(t: Option<&TilesTable>, bad: &Bad) -> Result<TileSettings> {
    let t = t.cloned().unwrap_or_default();
    let size = t.size.map(Size::wh);
    if let Some((w, h)) = size {
        check_multiple_of_8(bad, "tiles.size", w, false)?;
        check_multiple_of_8(bad, "tiles.size", h, false)?;
    }
    if let Some(o) = t.overlap {
        check_multiple_of_8(bad, "tiles.overlap", o, true)?;
        if let Some((w, h)) = size {
            if o >= w.min(h) {
                return Err(bad(
                    "tiles.overlap",
                    format!("{o} px is not smaller than the window"),
                    "use an overlap of about a quarter of the window size",
                ));
            }
        }
    }
    let vae = match t.vae.unwrap_or(DEFAULT_VAE_TILE) {
        0 => None,
        px => {
            check_multiple_of_8(bad, "tiles.vae", px, false)?;
            Some(px)
        }
    };
    Ok(TileSettings {
        size,
        overlap: t.overlap,
        mask: t.mask.unwrap_or_default(),
        vae,
    })
}

fn resolve_guide(g: &GuideTable, steps: usize, base: &Path, bad: &Bad) -> Result<GuideSettings> {
    let size = g.size.map(Size::wh);
    if let Some((w, h)) = size {
        check_multiple_of_8(bad, "guide.size", w, false)?;
        check_multiple_of_8(bad, "guide.size", h, false)?;
    }
    let image = g.image.as_ref().map(|p| base.join(p));
    if let Some(p) = &image {
        if !p.is_file() {
            return Err(bad(
                "guide.image",
                format!("{} not found", p.display()),
                "give the path of a PNG or JPEG, relative to the spec",
            ));
        }
    }
    let guide_steps = g.steps.unwrap_or(steps);
    if guide_steps == 0 || guide_steps > 1000 {
        return Err(bad(
            "guide.steps",
            format!("{guide_steps} steps"),
            "use 1 to 1000 steps",
        ));
    }
    Ok(GuideSettings {
        size,
        steps: guide_steps,
        guidance: check_guidance(bad, "guide.guidance", g.guidance)?,
        image,
        strength: check_strength(bad, "guide.strength", g.strength.unwrap_or(0.6))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(toml: &str) -> String {
        let p = Path::new("poster.toml");
        match SpecFile::parse(toml, p).and_then(|s| resolve(Some((p, s)), &Overrides::default())) {
            Ok(_) => panic!("expected an error for {toml:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn typo_names_the_key_and_line() {
        let e = err_of("[canvas]\nwidht = 512\n");
        assert!(
            e.contains("poster.toml") && e.contains("widht") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_field_and_fix() {
        let e = err_of("[canvas]\nwidth = 500\n");
        assert!(
            e.contains("canvas.width") && e.contains("496 or 504"),
            "{e}"
        );
        let e = err_of("[canvas]\nscheduler = \"heun\"\n");
        assert!(
            e.contains("canvas.scheduler") && e.contains("euler-a"),
            "{e}"
        );
        let e = err_of("[canvas]\ndtype = \"f64\"\n");
        assert!(e.contains("canvas.dtype"), "{e}");
    }

    #[test]
    fn flags_override_spec_and_model_is_relative_to_spec() {
        let p = Path::new("dir/poster.toml");
        let s = SpecFile::parse(
            "model = \"m\"\n[canvas]\nwidth = 64\nseed = 3\n[prompt]\ntext = \"a\"\n",
            p,
        )
        .unwrap();
        let o = Overrides {
            width: Some(128),
            prompt: Some("b".into()),
            ..Default::default()
        };
        let r = resolve(Some((p, s)), &o).unwrap();
        assert_eq!(
            (r.width, r.seed, r.background.unwrap().text.as_str()),
            (Some(128), 3, "b")
        );
        assert_eq!(r.model, Path::new("dir/m"));
        assert_eq!(r.output, Path::new("dir/poster.png"));
    }
}
