//! The two denoising passes of a render, both through the engine's one pass
//! (`tessera_diffusion::pass::denoise`): the guide at low resolution, then the canvas.

use crate::{imageio, output};
use candle_core::{DType, Tensor};
use std::path::PathBuf;
use tessera_core::{Error, Observer, Result};
use tessera_diffusion::autoencoder::Autoencoder;
use tessera_diffusion::mixture::Window;
use tessera_diffusion::noise::{NoiseSource, SeededNoise};
use tessera_diffusion::pass::{self, ImageRegion, PassSpec, PassState, Start, StepHook};
use tessera_diffusion::scheduler::{SchedulerConfig, SchedulerKind};
use tessera_diffusion::{Cond, NoisePredictor, Placement};
use tessera_models::ModelDir;
use tessera_nn::unet::UNet;
use tessera_nn::Runtime;
use tessera_plan::plan::{GuidePlan, Plan, PlannedWindow};
use tessera_plan::Settings;

/// The denoiser of one render with what both passes share.
pub struct Denoiser<'a> {
    pub rt: &'a Runtime,
    pub settings: &'a Settings,
    pub plan: &'a Plan,
    pub unet: UNet,
    pub scheduler: SchedulerKind,
    pub config: SchedulerConfig,
    pub observer: &'a dyn Observer,
}

/// Where a pass resumes (a checkpoint) and what sees each of its steps (checkpoints, previews).
#[derive(Default, Clone, Copy)]
pub struct Hooks<'h> {
    pub resume: Option<&'h PassState>,
    pub on_step: Option<&'h StepHook<'h>>,
}

/// A guide: its latents at canvas size, and the picture saved beside the output (if rendered).
pub struct Guide {
    pub latents: Tensor,
    pub picture: Option<PathBuf>,
}

impl<'a> Denoiser<'a> {
    /// Load the UNet (resident or streamed, as the settings say), unless an earlier render of
    /// a batch left it `held` (the same weights: see `session`).
    pub fn load(
        model: &ModelDir,
        rt: &'a Runtime,
        settings: &'a Settings,
        plan: &'a Plan,
        observer: &'a dyn Observer,
        held: Option<UNet>,
    ) -> Result<Self> {
        if let Some(note) = rt.conv_note() {
            observer.note(&note);
        }
        let dtype = rt.conv_weight_dtype();
        let mut unet = match (held, settings.stream_weights) {
            (Some(unet), _) => unet,
            (None, true) => model.load_unet_streaming(rt, dtype)?,
            (None, false) => model.load_unet(rt, dtype)?,
        };
        unet.attention_budget = settings.attention_budget;
        check_framing(settings, plan, &unet)?;
        Ok(Self {
            rt,
            settings,
            plan,
            unet,
            scheduler: crate::facts::scheduler_kind(model, settings.scheduler)?,
            config: model.scheduler_config()?,
            observer,
        })
    }

    fn spec<'s>(
        &'s self,
        steps: usize,
        noise: &'s Tensor,
        windows: &'s [Window],
        conds: &'s [Cond],
        canvas_px: (usize, usize),
    ) -> PassSpec<'s> {
        PassSpec {
            scheduler: self.scheduler,
            config: &self.config,
            steps,
            noise,
            start: Start::Noise,
            windows,
            conds,
            image_regions: &[],
            ancestral_seed: self.settings.seed + 1,
            canvas_px,
            group: self.settings.window_group,
            resume: None,
            on_step: None,
        }
    }

    /// The low-res pass: render (or take) the guide, upscale it to the canvas, encode it.
    pub fn guide(
        &self,
        g: &GuidePlan,
        conds: &[Cond],
        vae: &mut Autoencoder,
        hooks: Hooks,
    ) -> Result<Guide> {
        let (s, plan) = (self.settings, self.plan);
        let (image, picture) = match &g.image {
            Some(path) => (imageio::load_picture(path)?, None),
            None => {
                let conds: Vec<Cond> = conds
                    .iter()
                    .map(|c| Cond {
                        guidance: g.guidance.unwrap_or(c.guidance),
                        ..c.clone()
                    })
                    .collect();
                let noise = self
                    .rt
                    .to_device(&self.noise((g.width, g.height), s.seed)?)?;
                let windows = realize_windows(&g.windows)?;
                let spec = PassSpec {
                    resume: self.on_device(hooks.resume)?,
                    on_step: hooks.on_step,
                    ..self.spec(g.steps, &noise, &windows, &conds, (g.width, g.height))
                };
                let latents = pass::denoise(&self.unet, &spec, self.observer)?;
                let guide = vae.decode(&latents, self.observer)?;
                if !s.keep_decoder {
                    vae.release_decoder();
                }
                let path = s.output.with_extension("guide.png");
                output::save_png(&path, &imageio::tensor_to_rgb(&guide)?, &[])?;
                let note = format!("guide: {}x{} -> {}", g.width, g.height, path.display());
                self.observer.note(&note);
                (guide, Some(path))
            }
        };
        // Upscaled and encoded band by band: the canvas-sized picture is never held.
        let upscaled = imageio::Resized::rows_of(&image, (plan.width, plan.height))?;
        let dims = (image.dim(1)?, plan.height, plan.width);
        Ok(Guide {
            latents: vae.encode_mean_rows(dims, &upscaled)?,
            picture,
        })
    }

    /// The canvas pass: every window, every remaining step. Image regions are encoded first,
    /// with the encoder the guide used, which then goes.
    pub fn canvas(
        &self,
        conds: &[Cond],
        guide: Option<&Guide>,
        vae: &mut Autoencoder,
        hooks: Hooks,
    ) -> Result<Tensor> {
        let (s, plan) = (self.settings, self.plan);
        let noise = self.rt.to_device(&initial_noise(s, plan)?)?;
        let start = match (guide, &plan.guide) {
            (Some(guide), Some(g)) => Start::Latents {
                latents: &guide.latents,
                strength: g.strength,
            },
            _ => Start::Noise,
        };
        let skipped = matches!(start, Start::Latents { strength, .. }
            if pass::start_index(s.steps, strength) == s.steps);
        let regions = match skipped {
            // Nothing left to denoise: the guide is the result.
            true => Vec::new(),
            false => plan
                .image_regions
                .iter()
                .map(|r| {
                    let size = (r.rect.w * 8, r.rect.h * 8);
                    Ok(ImageRegion {
                        rect: r.rect,
                        reference: vae.encode_mean(&imageio::load_image(&r.image, size)?)?,
                        strength: r.strength,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        vae.release_encoder();
        let windows = realize_windows(&plan.windows)?;
        let spec = PassSpec {
            start,
            image_regions: &regions,
            resume: self.on_device(hooks.resume)?,
            on_step: hooks.on_step,
            ..self.spec(s.steps, &noise, &windows, conds, (plan.width, plan.height))
        };
        let framed = Framed {
            unet: &self.unet,
            original: s.original_size,
            crop: s.crop,
            window_crops: s.window_crops,
        };
        pass::denoise(&framed, &spec, self.observer)
    }

    /// A checkpoint's state (host tensors) moved to the compute device.
    fn on_device(&self, state: Option<&PassState>) -> Result<Option<PassState>> {
        let Some(state) = state else { return Ok(None) };
        Ok(Some(PassState {
            latents: self.rt.to_device(&state.latents)?,
            history: state
                .history
                .iter()
                .map(|h| self.rt.to_device(h))
                .collect::<candle_core::Result<_>>()?,
            ..state.clone()
        }))
    }

    /// Seeded noise for a picture of `(width, height)` pixels.
    fn noise(&self, (w, h): (usize, usize), seed: u64) -> Result<Tensor> {
        let c = self.unet.config.in_channels;
        Ok(SeededNoise::new(seed).noise(&(1, c, h / 8, w / 8).into())?)
    }
}

/// The UNet with a one-window render's `[canvas] original_size` / `crop` in place of the
/// placement the pass gives its window (SDXL's size and crop conditioning). On a canvas of
/// several windows the pass tells each window where it sits instead, unless `window_crops`
/// is off (each window then a whole picture of its own size).
struct Framed<'a> {
    unet: &'a UNet,
    original: Option<(usize, usize)>,
    crop: Option<(usize, usize)>,
    window_crops: bool,
}

impl NoisePredictor for Framed<'_> {
    fn predict(
        &self,
        x: &Tensor,
        t: f64,
        context: &Tensor,
        pooled: Option<&Tensor>,
        at: &[Placement],
    ) -> candle_core::Result<Tensor> {
        let framed: Vec<Placement> = at
            .iter()
            .map(|at| match (self.original, self.crop, self.window_crops) {
                (None, None, false) => Placement::whole(at.size),
                (original, crop, _) => Placement {
                    canvas: original.unwrap_or(at.canvas),
                    offset: crop.unwrap_or(at.offset),
                    size: at.size,
                },
            })
            .collect();
        self.unet.predict(x, t, context, pooled, &framed)
    }

    fn dtype(&self) -> DType {
        self.unet.dtype
    }
}

/// `original_size` and `crop` need a model with size and crop conditioning and one window.
fn check_framing(s: &Settings, plan: &Plan, unet: &UNet) -> Result<()> {
    let field = match (s.original_size, s.crop) {
        (None, None) => return Ok(()),
        (Some(_), _) => "canvas.original_size",
        (None, Some(_)) => "canvas.crop",
    };
    let bad = |message: String, fix: &str| Err(Error::input(&s.origin, Some(field), message, fix));
    if !unet.takes_added_cond() {
        return bad(
            "the model has no size and crop conditioning (SDXL has)".into(),
            "remove it, or render with an SDXL model",
        );
    }
    if plan.windows.len() > 1 {
        return bad(
            format!(
                "applies to a one-window render; this canvas has {} windows",
                plan.windows.len()
            ),
            "remove it: on a canvas each window is told its own place (original size = the \
             canvas, crop = its offset) automatically",
        );
    }
    Ok(())
}

/// Planned windows with their blend weights.
pub fn realize_windows(planned: &[PlannedWindow]) -> Result<Vec<Window>> {
    planned
        .iter()
        .map(|w| Ok(Window::new(w.rect, w.cond, w.mask, w.weight)?))
        .collect()
}

/// The canvas's initial Gaussian noise, on the host: `--init-noise`, else the seed; regions
/// with their own seed get their own noise.
pub fn initial_noise(s: &Settings, plan: &Plan) -> Result<Tensor> {
    let shape = (1, 4, plan.height / 8, plan.width / 8);
    let mut noise = match &s.init_noise {
        Some(path) => {
            let t = output::load_tensor(path, "noise")?.to_dtype(DType::F32)?;
            if t.dims() != [shape.0, shape.1, shape.2, shape.3] {
                return Err(Error::input(
                    path,
                    Some("noise"),
                    format!(
                        "shape {:?} does not fit a {}x{} canvas",
                        t.dims(),
                        plan.width,
                        plan.height
                    ),
                    format!(
                        "store noise of shape [1, 4, {}, {}] or change the canvas size",
                        shape.2, shape.3
                    ),
                ));
            }
            t
        }
        None => SeededNoise::new(s.seed).noise(&shape.into())?,
    };
    for (r, seed) in &plan.seeded {
        let own = SeededNoise::new(*seed).noise(&(1, 4, r.h, r.w).into())?;
        noise = noise.slice_assign(&[0..1, 0..4, r.y..r.y + r.h, r.x..r.x + r.w], &own)?;
    }
    Ok(noise)
}
