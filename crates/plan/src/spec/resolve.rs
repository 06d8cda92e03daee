//! Resolving a spec and the command line's overrides into validated [`Settings`].

use super::types::*;
use std::path::{Path, PathBuf};
use tessera_core::choices::{DeviceChoice, Precision, SchedulerKind};
use tessera_core::geometry::Rect;
use tessera_core::{Error, Result};

use crate::validate::{self, Bad};
use tessera_core::choices::DEFAULT_ATTENTION_BUDGET;
use tessera_core::units::parse_bytes;

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
        (Some(m), _) => Some(m.clone()),
        (None, Some(m)) => Some(base.join(m)),
        (None, None) => None,
    };
    let model_config = match (&o.config, &spec.config) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(m)) => Some(base.join(m)),
        (None, None) => None,
    };
    let mut loras = Vec::new();
    for (i, l) in spec.loras.iter().enumerate() {
        let weight = l.weight.unwrap_or(1.0);
        validate::lora_weight(&bad, &format!("lora[{i}].weight"), weight)?;
        loras.push((base.join(&l.path), weight));
    }
    for arg in &o.loras {
        loras.push(validate::lora_flag(&bad, arg)?);
    }
    let c = &spec.canvas;
    let width = o.width.or(c.width);
    let height = o.height.or(c.height);
    for (field, v) in [("canvas.width", width), ("canvas.height", height)] {
        if let Some(v) = v {
            validate::multiple_of_8(&bad, field, v, false)?;
        }
    }
    let many = |n: usize| n == 0 || n > MAX_VARIATIONS;
    match (&c.seeds, c.count) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "canvas.count",
                "both `seeds` and `count`".into(),
                "give either a list of seeds or a count of variations",
            ))
        }
        (Some(s), None) if many(s.len()) => {
            return Err(bad(
                "canvas.seeds",
                format!("{} seeds", s.len()),
                &format!("list 1 to {MAX_VARIATIONS} seeds"),
            ))
        }
        (None, Some(n)) if many(n) => {
            return Err(bad(
                "canvas.count",
                format!("{n} variations"),
                &format!("ask for 1 to {MAX_VARIATIONS} variations"),
            ))
        }
        _ => {}
    }
    let steps = validate::steps(
        &bad,
        "canvas.steps",
        o.steps.or(c.steps).unwrap_or(DEFAULT_STEPS),
    )?;
    let scheduler = validate::named(
        &bad,
        "canvas.scheduler",
        "scheduler",
        o.scheduler.as_ref().or(c.scheduler.as_ref()),
        SchedulerKind::from_name,
        SchedulerKind::NAMES,
    )?;
    let precision = validate::named(
        &bad,
        "canvas.dtype",
        "dtype",
        o.dtype.as_ref().or(c.dtype.as_ref()),
        Precision::from_name,
        Precision::NAMES,
    )?
    .unwrap_or_default();
    let device = validate::named(
        &bad,
        "canvas.device",
        "device",
        o.device.as_ref().or(c.device.as_ref()),
        DeviceChoice::from_name,
        DeviceChoice::NAMES,
    )?
    .unwrap_or_default();
    let background = match (&spec.prompt, &o.prompt) {
        // A spec with regions and no [prompt] denoises only its regions (reference semantics).
        (None, None) if !spec.regions.is_empty() => None,
        (p, text) => {
            let p = p.clone().unwrap_or_default();
            Some(TextPrompt {
                text: text.clone().unwrap_or(p.text),
                negative: o.negative.clone().or(p.negative).unwrap_or_default(),
                guidance: validate::guidance(
                    &bad,
                    "prompt.guidance",
                    o.guidance.or(p.guidance).unwrap_or(DEFAULT_GUIDANCE),
                )?,
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
    let preview_every = o
        .preview_every
        .or(spec.output.as_ref().and_then(|t| t.preview_every));
    if preview_every == Some(0) {
        return Err(bad(
            "output.preview_every",
            "a preview every 0 steps".into(),
            "give a number of steps of at least 1, or leave it out for no previews",
        ));
    }
    Ok(Settings {
        origin: origin.clone(),
        model,
        model_config,
        loras,
        width,
        height,
        seed: o.seed.or(c.seed).unwrap_or(0),
        steps,
        scheduler,
        precision,
        device,
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
            None => DEFAULT_ATTENTION_BUDGET,
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
        vae_scratch: None,
        window_group: 1,
        background,
        regions,
        tiles,
        guide,
        output,
        init_noise: o.init_noise.clone(),
        save_latents: o.save_latents.clone(),
        preview_every,
        resume: o.resume,
        original_size: match o.original_size.or(c.original_size) {
            Some([w, h]) if w == 0 || h == 0 => {
                return Err(bad(
                    "canvas.original_size",
                    format!("{w}x{h} has a zero side"),
                    "give the size the picture is said to come from, e.g. [1024, 1024]",
                ))
            }
            v => v.map(|[w, h]| (w, h)),
        },
        crop: o.crop.or(c.crop).map(|[x, y]| (x, y)),
        window_crops: !o.no_window_crops && c.window_crops.unwrap_or(true),
    })
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
        validate::multiple_of_8(bad, &f(name), v, true)?;
    }
    for (name, v) in [("rect width", w), ("rect height", h)] {
        validate::multiple_of_8(bad, &f(name), v, false)?;
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
                strength: validate::strength(bad, &f("strength"), r.strength.unwrap_or(0.5))?,
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
                    guidance: validate::guidance(
                        bad,
                        &f("guidance"),
                        r.guidance.unwrap_or(DEFAULT_GUIDANCE),
                    )?,
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
        validate::multiple_of_8(bad, "tiles.size", w, false)?;
        validate::multiple_of_8(bad, "tiles.size", h, false)?;
    }
    if let Some(o) = t.overlap {
        validate::multiple_of_8(bad, "tiles.overlap", o, true)?;
        if let Some(window) = size {
            validate::overlap(bad, "tiles.overlap", o, window)?;
        }
    }
    let vae = match t.vae.unwrap_or(DEFAULT_VAE_TILE) {
        0 => None,
        px => {
            validate::multiple_of_8(bad, "tiles.vae", px, false)?;
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
        validate::multiple_of_8(bad, "guide.size", w, false)?;
        validate::multiple_of_8(bad, "guide.size", h, false)?;
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
    let guide_steps = validate::steps(bad, "guide.steps", g.steps.unwrap_or(steps))?;
    Ok(GuideSettings {
        size,
        steps: guide_steps,
        guidance: validate::guidance(
            bad,
            "guide.guidance",
            g.guidance.unwrap_or(DEFAULT_GUIDANCE),
        )?,
        image,
        strength: validate::strength(bad, "guide.strength", g.strength.unwrap_or(0.6))?,
    })
}
