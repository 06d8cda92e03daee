//! Settings written back as a spec: stored in output PNGs, so a render can be reproduced and
//! checked from its own metadata.

use super::types::*;
use std::path::Path;
use tessera_core::choices::SchedulerKind;

impl Settings {
    /// The resolved settings written back as a spec (stored in output PNGs, so a render can be
    /// reproduced and checked from its own metadata).
    /// `model` is the folder the render used (the default model when the settings name
    /// none); `window` and `overlap` are the planned ones, so the file needs no model to re-plan.
    pub fn to_spec_file(
        &self,
        model: &Path,
        (width, height): (usize, usize),
        (window, overlap): ((usize, usize), usize),
        scheduler: SchedulerKind,
    ) -> SpecFile {
        let path = |p: &Path| p.display().to_string();
        SpecFile {
            model: Some(path(model)),
            config: self.model_config.as_deref().map(path),
            loras: self
                .loras
                .iter()
                .map(|(p, w)| LoraTable {
                    path: path(p),
                    weight: Some(*w),
                })
                .collect(),
            canvas: CanvasTable {
                width: Some(width),
                height: Some(height),
                seed: Some(self.seed),
                seeds: None,
                count: None,
                steps: Some(self.steps),
                scheduler: Some(scheduler.name().to_string()),
                dtype: Some(self.precision.name().to_string()),
                device: Some(self.device.name()),
                stream_weights: Some(self.stream_weights),
                attention_mib: Some(self.attention_budget >> 20),
                max_memory: None,
                original_size: self.original_size.map(|(w, h)| [w, h]),
                crop: self.crop.map(|(x, y)| [x, y]),
                window_crops: Some(self.window_crops),
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
                preview_every: None,
            }),
        }
    }
}
