//! The plan: what a spec will compute, derived without running a model. The window grid, the
//! conditionings, image regions and the guide pass, plus counts and a memory estimate
//! (`tessera plan`).

use crate::spec::{RegionKind, Settings, TextPrompt};
use crate::validate;
use std::path::PathBuf;
use tessera_core::geometry::{self, Mask, Rect};
use tessera_core::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedWindow {
    /// Latent cells.
    pub rect: Rect,
    /// Index into [`Plan::prompts`].
    pub cond: usize,
    pub mask: Mask,
    pub weight: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRegion {
    /// Latent cells.
    pub rect: Rect,
    pub image: PathBuf,
    pub strength: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GuidePlan {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// The guide's own canvas: every region scaled down, one window each.
    pub windows: Vec<PlannedWindow>,
    pub image: Option<PathBuf>,
    pub strength: f64,
    /// Guidance used for every prompt in the guide pass (`None`: each prompt's own).
    pub guidance: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Window side in pixels `(w, h)` and overlap in pixels.
    pub window: (usize, usize),
    pub overlap: usize,
    #[serde(skip)]
    pub prompts: Vec<TextPrompt>,
    pub windows: Vec<PlannedWindow>,
    pub image_regions: Vec<ImageRegion>,
    /// Regions whose initial noise comes from their own seed.
    pub seeded: Vec<(Rect, u64)>,
    pub guide: Option<GuidePlan>,
    pub windows_per_step: usize,
    pub unet_evaluations: usize,
}

fn latent(r: Rect) -> Rect {
    Rect {
        y: r.y / 8,
        x: r.x / 8,
        h: r.h / 8,
        w: r.w / 8,
    }
}

/// Windows for a latent rectangle: itself when it fits a window, else a grid inside it.
fn windows_for(area: Rect, tile: (usize, usize), overlap: usize) -> Vec<Rect> {
    geometry::grid(area.h, area.w, (tile.1, tile.0), overlap)
        .into_iter()
        .map(|r| Rect {
            y: r.y + area.y,
            x: r.x + area.x,
            ..r
        })
        .collect()
}

impl Plan {
    /// Plan `s` for a model whose native picture size is `native` `(width, height)`.
    pub fn new(s: &Settings, native: (usize, usize)) -> Result<Self> {
        let bad =
            |field: &str, msg: String, fix: String| Error::input(&s.origin, Some(field), msg, fix);
        let width = s.width.unwrap_or(native.0);
        let height = s.height.unwrap_or(native.1);
        let canvas = Rect {
            y: 0,
            x: 0,
            h: height,
            w: width,
        };
        let guide_size = s.guide.as_ref().and_then(|g| g.size).unwrap_or((0, 0));
        let floor = crate::machine::canvas_floor(width, height)
            .saturating_add(crate::machine::canvas_floor(guide_size.0, guide_size.1));
        if let Some(total) = crate::machine::memory().filter(|&m| floor > m) {
            let mib = |b: u64| format!("{} MiB", b >> 20);
            return Err(bad(
                "canvas.width",
                format!(
                    "a {width}x{height} canvas needs at least {} (its latents and decoded picture, \
                     whatever the settings); this machine has {}",
                    mib(floor),
                    mib(total)
                ),
                "make the canvas (or the guide) smaller, or render on a machine with more memory"
                    .into(),
            ));
        }
        let explicit = s.tiles.size;
        let (tw, th) = explicit.unwrap_or(native);
        if explicit.is_some() && (tw > width || th > height) {
            return Err(bad(
                "tiles.size",
                format!("{tw}x{th} windows are larger than the {width}x{height} canvas"),
                format!("use windows of at most {width}x{height}"),
            ));
        }
        let window = (tw.min(width), th.min(height));
        let overlap = s
            .tiles
            .overlap
            .unwrap_or(window.0.min(window.1) / 4 / 8 * 8);
        let check = |field: &str, message: String, fix: &str| bad(field, message, fix.into());
        validate::overlap(&check, "tiles.overlap", overlap, window)?;
        let lwin = (window.0 / 8, window.1 / 8);
        let lover = overlap / 8;

        let mut prompts = Vec::new();
        let mut windows = Vec::new();
        if let Some(bg) = &s.background {
            prompts.push(bg.clone());
            for rect in windows_for(latent(canvas), lwin, lover) {
                windows.push(PlannedWindow {
                    rect,
                    cond: 0,
                    mask: s.tiles.mask,
                    weight: 1.0,
                });
            }
        }
        let mut image_regions = Vec::new();
        let mut seeded = Vec::new();
        for r in &s.regions {
            if !canvas.contains(&r.rect) {
                return Err(bad(
                    &format!("region[{}].rect", r.index),
                    format!(
                        "[{}, {}, {}, {}] reaches outside the {width}x{height} canvas",
                        r.rect.x, r.rect.y, r.rect.w, r.rect.h
                    ),
                    "keep x + width <= canvas width and y + height <= canvas height".into(),
                ));
            }
            let lr = latent(r.rect);
            match &r.kind {
                RegionKind::Text {
                    prompt,
                    mask,
                    weight,
                    seed,
                } => {
                    prompts.push(prompt.clone());
                    let cond = prompts.len() - 1;
                    for rect in windows_for(lr, lwin, lover) {
                        windows.push(PlannedWindow {
                            rect,
                            cond,
                            mask: *mask,
                            weight: *weight,
                        });
                    }
                    if let Some(seed) = seed {
                        seeded.push((lr, *seed));
                    }
                }
                RegionKind::Image { image, strength } => image_regions.push(ImageRegion {
                    rect: lr,
                    image: image.clone(),
                    strength: *strength,
                }),
            }
        }
        if windows.is_empty() {
            return Err(bad(
                "region",
                "nothing to denoise: no [prompt] and no text region".into(),
                "add a [prompt] table (the background) or a text [[region]]".into(),
            ));
        }
        let guide = s.guide.as_ref().map(|g| {
            let (gw, gh) = g
                .size
                .unwrap_or_else(|| native_aspect(width, height, native));
            let gwindows = guide_windows(&windows, (width, height), (gw, gh));
            GuidePlan {
                width: gw,
                height: gh,
                steps: g.steps,
                windows: gwindows,
                image: g.image.clone(),
                strength: g.strength,
                guidance: Some(g.guidance),
            }
        });
        let hires_steps = match &guide {
            Some(g) => (s.steps as f64 * g.strength) as usize,
            None => s.steps,
        };
        let guide_evals = guide
            .as_ref()
            .filter(|g| g.image.is_none())
            .map_or(0, |g| g.steps * g.windows.len());
        Ok(Plan {
            width,
            height,
            steps: s.steps,
            window,
            overlap,
            prompts,
            windows_per_step: windows.len(),
            unet_evaluations: hires_steps * windows.len() + guide_evals,
            windows,
            image_regions,
            seeded,
            guide,
        })
    }
}

/// The guide's windows: per prompt, the union of its canvas windows scaled to the guide, so
/// every region is one window of its own (scaled) size at guide resolution.
fn guide_windows(
    windows: &[PlannedWindow],
    canvas: (usize, usize),
    guide: (usize, usize),
) -> Vec<PlannedWindow> {
    let mut merged: Vec<PlannedWindow> = Vec::new();
    for w in windows {
        match merged.iter_mut().find(|m| m.cond == w.cond) {
            Some(m) => m.rect = union(m.rect, w.rect),
            None => merged.push(w.clone()),
        }
    }
    let (lw, lh) = (guide.0 / 8, guide.1 / 8);
    // Scale a latent coordinate from the canvas to the guide, rounding to whole cells.
    let scale = |v: usize, from: usize, to: usize| ((v * to) as f64 / from as f64).round() as usize;
    for m in &mut merged {
        let r = m.rect;
        let y = scale(r.y, canvas.1 / 8, lh).min(lh - 1);
        let x = scale(r.x, canvas.0 / 8, lw).min(lw - 1);
        let h = scale(r.h, canvas.1 / 8, lh).clamp(1, lh - y);
        let w = scale(r.w, canvas.0 / 8, lw).clamp(1, lw - x);
        m.rect = Rect { y, x, h, w };
    }
    merged
}

fn union(a: Rect, b: Rect) -> Rect {
    let (y, x) = (a.y.min(b.y), a.x.min(b.x));
    let (y1, x1) = ((a.y + a.h).max(b.y + b.h), (a.x + a.w).max(b.x + b.w));
    Rect {
        y,
        x,
        h: y1 - y,
        w: x1 - x,
    }
}

/// The canvas's aspect ratio at the model's native size: the largest size of that aspect that
/// fits inside the native `(width, height)` (for a square model, the long side is native).
pub fn native_aspect(width: usize, height: usize, native: (usize, usize)) -> (usize, usize) {
    let scale = (native.0 as f64 / width as f64).min(native.1 as f64 / height as f64);
    let side = |v: usize| (((v as f64 * scale) / 8.0).round() as usize).max(1) * 8;
    (side(width), side(height))
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "canvas:            {}x{} px ({}x{} latent)",
            self.width,
            self.height,
            self.width / 8,
            self.height / 8
        )?;
        writeln!(
            f,
            "windows:           {}x{} px, overlap {} px",
            self.window.0, self.window.1, self.overlap
        )?;
        for (i, p) in self.prompts.iter().enumerate() {
            let n = self.windows.iter().filter(|w| w.cond == i).count();
            writeln!(
                f,
                "  prompt {i}: {n:>3} windows  {:?} (guidance {})",
                p.text, p.guidance
            )?;
        }
        for r in &self.image_regions {
            writeln!(
                f,
                "  image region at {:?} px, strength {}",
                r.rect.scaled(8),
                r.strength
            )?;
        }
        if let Some(g) = &self.guide {
            match &g.image {
                Some(p) => writeln!(
                    f,
                    "guide:             {} (strength {})",
                    p.display(),
                    g.strength
                )?,
                None => writeln!(
                    f,
                    "guide:             {}x{} px, {} steps, {} windows; hi-res strength {}",
                    g.width,
                    g.height,
                    g.steps,
                    g.windows.len(),
                    g.strength
                )?,
            }
        }
        writeln!(f, "windows per step:  {}", self.windows_per_step)?;
        writeln!(
            f,
            "UNet evaluations:  {} (each a CFG pair)",
            self.unet_evaluations
        )?;
        Ok(())
    }
}
