//! The spec's types: the TOML file as written, the command line's overrides, and the
//! validated settings.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tessera_core::choices::{DeviceChoice, Precision, SchedulerKind};
use tessera_core::geometry::{Mask, Rect};
use tessera_core::{Error, Result};

/// The TOML file as written. Unknown keys are errors so typos never pass silently.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Path of a diffusers model folder or a single-file checkpoint, relative to the spec file.
    pub model: Option<String>,
    /// For a single-file `model`: the diffusers folder whose configs to use.
    pub config: Option<String>,
    #[serde(default)]
    pub canvas: CanvasTable,
    pub prompt: Option<PromptTable>,
    pub tiles: Option<TilesTable>,
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionTable>,
    pub guide: Option<GuideTable>,
    pub output: Option<OutputTable>,
    /// `[[lora]]` files merged into the model's weights.
    #[serde(default, rename = "lora", skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraTable>,
}

/// A `[[lora]]`: a LoRA file (relative to the spec) and its strength (default 1).
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraTable {
    pub path: String,
    pub weight: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasTable {
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: Option<u64>,
    /// Render one variation per seed (`<stem>-s<seed>.png`).
    pub seeds: Option<Vec<u64>>,
    /// Render this many variations, seeds `seed`, `seed + 1`, ...
    pub count: Option<usize>,
    pub steps: Option<usize>,
    pub scheduler: Option<String>,
    pub dtype: Option<String>,
    /// "cpu", "cuda", "cuda:N", "metal" or "auto" (the first GPU of the build, else the CPU).
    pub device: Option<String>,
    /// Stream UNet weights stage by stage from disk (low-RAM runs).
    pub stream_weights: Option<bool>,
    /// MiB of attention scores (and feed-forward state) alive at once.
    pub attention_mib: Option<usize>,
    /// A memory budget such as "800M" or "2G": tessera picks settings that fit it.
    pub max_memory: Option<String>,
    /// SDXL micro-conditioning of a one-window render: diffusers' `original_size`, `[w, h]`.
    pub original_size: Option<[usize; 2]>,
    /// SDXL micro-conditioning of a one-window render: diffusers' `crops_coords_top_left`,
    /// as `[x, y]` in pixels.
    pub crop: Option<[usize; 2]>,
    /// SDXL on a canvas: tell each window where it sits (default true); false conditions
    /// every window as a whole picture of its own size (crop `(0, 0)`), as other tools do.
    pub window_crops: Option<bool>,
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
    /// Write `<output stem>.preview.png` every this many canvas steps.
    pub preview_every: Option<usize>,
}

/// Command-line values that override the spec (all optional).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    /// `--config DIR`: configs for a single-file checkpoint.
    pub config: Option<PathBuf>,
    /// `--lora FILE[:WEIGHT]`, in addition to the spec's `[[lora]]`.
    pub loras: Vec<String>,
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
    pub device: Option<String>,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
    pub vae_tile: Option<usize>,
    pub stream_weights: bool,
    pub attention_mib: Option<usize>,
    pub max_memory: Option<String>,
    pub preview_every: Option<usize>,
    pub resume: bool,
    pub original_size: Option<[usize; 2]>,
    pub crop: Option<[usize; 2]>,
    pub no_window_crops: bool,
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
    /// The model folder or single-file checkpoint; `None`: the bundled default model.
    pub model: Option<PathBuf>,
    /// The diffusers folder whose configs a single-file checkpoint uses.
    pub model_config: Option<PathBuf>,
    /// LoRA files and their weights, merged into the UNet and text encoder as they load.
    pub loras: Vec<(PathBuf, f64)>,
    /// `None`: the model's native size.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: u64,
    pub steps: usize,
    /// `None`: the scheduler named by the model folder's `scheduler_config.json`.
    pub scheduler: Option<SchedulerKind>,
    pub precision: Precision,
    pub device: DeviceChoice,
    /// Load each UNet stage from disk right before it runs (output is bit-identical).
    pub stream_weights: bool,
    /// Bytes of attention scores (and feed-forward state) alive at once.
    pub attention_budget: usize,
    /// The memory budget in bytes, if any (settings are then fitted to it, see `budget`).
    pub max_memory: Option<u64>,
    /// Keep the VAE decoder loaded from the guide decode to the final decode (true unless a
    /// memory budget needs its weights free during the canvas pass).
    pub keep_decoder: bool,
    /// Bytes of the tiled VAE's whole-image scratch kept in RAM, the rest in files (`None`:
    /// all in RAM; `budget::fit` grants what keeps the VAE phases within the render's peak).
    pub vae_scratch: Option<u64>,
    /// At most this many windows of a step share one UNet evaluation (the planner chooses:
    /// see `budget::fit`).
    pub window_group: usize,
    /// The global prompt; `None` when a spec has regions and no `[prompt]`.
    pub background: Option<TextPrompt>,
    pub regions: Vec<Region>,
    pub tiles: TileSettings,
    pub guide: Option<GuideSettings>,
    pub output: PathBuf,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
    /// Write a preview every this many canvas steps (never changes the output).
    pub preview_every: Option<usize>,
    /// Continue from the output's checkpoint; a checkpoint of another render is an error.
    /// (Without it a matching checkpoint is still continued: the bytes are the same.)
    pub resume: bool,
    /// SDXL size conditioning of a one-window render `(w, h)` (`None`: the render's size).
    pub original_size: Option<(usize, usize)>,
    /// SDXL crop conditioning of a one-window render `(x, y)` (`None`: `(0, 0)`).
    pub crop: Option<(usize, usize)>,
    /// SDXL on a canvas: each window conditioned on its place in the canvas (else as a whole
    /// picture of its own size).
    pub window_crops: bool,
}

pub const DEFAULT_STEPS: usize = 30;
pub const DEFAULT_GUIDANCE: f64 = 7.5;

/// At most this many variations per spec.
pub const MAX_VARIATIONS: usize = 10_000;

impl SpecFile {
    /// The seeds of the spec's variations (`[canvas] seeds` or `count`), if it asks for any.
    pub fn variation_seeds(&self) -> Option<Vec<u64>> {
        let c = &self.canvas;
        let start = c.seed.unwrap_or(0);
        match (&c.seeds, c.count) {
            (Some(seeds), _) => Some(seeds.clone()),
            (None, Some(n)) => Some((0..n as u64).map(|i| start.wrapping_add(i)).collect()),
            (None, None) => None,
        }
    }

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
