//! The render pipeline, top-down: spec → plan → prompts → guide → canvas denoise → decode →
//! output. Each model lives only while needed: the text encoder for the prompts, the UNet
//! until the decode, the VAE halves as `autoencoder` says; none is loaded twice unless a memory
//! budget trades a second read of the VAE decoder for its weights' room in the canvas pass.

use crate::autoencoder::Autoencoder;
pub use crate::autoencoder::{decode, encode_mean};
use crate::budget::MemoryFacts;
use crate::canvas::{self, CanvasJob, Conditioning, Window};
use crate::memory::PhaseReport;
use crate::model::weights::WeightFile;
use crate::model::{unet::UNet, ModelDir};
use crate::noise::{NoiseSource, SeededNoise};
use crate::plan::{GuidePlan, ModelFacts, Plan, PlannedWindow};
use crate::progress::Progress;
use crate::scheduler::{self, Scheduler, SchedulerConfig, SchedulerKind};
use crate::spec::{Settings, TextPrompt};
use crate::{imageio, output, tiles, Error, Result};
use candle_core::{DType, IndexOp, Tensor};
use std::path::PathBuf;

/// What a finished render produced.
#[derive(Debug, Clone)]
pub struct RenderReport {
    pub output: PathBuf,
    pub guide: Option<PathBuf>,
    pub plan: Plan,
    pub scheduler: SchedulerKind,
    pub phases: PhaseReport,
    /// How many times each model component was loaded.
    pub loads: std::collections::BTreeMap<&'static str, usize>,
}

/// Shared state of one render: model folder, settings, scheduler choice, progress.
pub struct Render<'a> {
    pub dir: ModelDir,
    pub settings: &'a Settings,
    pub kind: SchedulerKind,
    pub sched_config: SchedulerConfig,
    pub progress: Progress,
}

pub fn render(settings: &Settings, progress: Progress) -> Result<RenderReport> {
    let dir = ModelDir::open(&settings.model)?;
    let (fitted, plan, chosen) = crate::budget::fit(settings, &model_facts(&dir)?)?;
    let s = &fitted;
    if let Some(budget) = s.max_memory {
        progress.note(budget_note(budget, &chosen, &plan));
    }
    if s.stream_weights || s.max_memory.is_some() {
        crate::memory::release_freed_memory_promptly();
    }
    let mut phases = PhaseReport {
        estimate: Some(plan.memory),
        ..Default::default()
    };
    let conds = phases.run("encode prompts", || {
        encode_prompts(&dir, s.dtype, &plan.prompts)
    })?;
    let r = Render {
        kind: scheduler_kind(&dir, s)?,
        sched_config: dir.scheduler_config()?,
        dir,
        settings: s,
        progress,
    };
    let unet_dtype = conv_dtype(s.dtype, &progress);
    let mut unet = if s.stream_weights {
        r.dir.load_unet_streaming(unet_dtype)?
    } else {
        r.dir.load_unet(unet_dtype)?
    };
    unet.attention_budget = s.attention_budget;
    let mut vae = Autoencoder::new(&r.dir);
    let guide = match &plan.guide {
        Some(g) => Some(phases.run("guide pass", || {
            r.guide_pass(&unet, &mut vae, &plan, g, &conds)
        })?),
        None => None,
    };
    let latents = phases.run("canvas denoise", || {
        r.canvas_pass(&unet, &mut vae, &plan, &conds, guide.as_ref().map(|g| &g.0))
    })?;
    drop(unet);
    if let Some(path) = &s.save_latents {
        output::save_tensors(path, &[("latents", &latents)])?;
    }
    let image = phases.run("decode", || {
        vae.decode(&latents, s.dtype, s.tiles.vae, &progress)
    })?;
    drop(vae);
    output::save_png(
        &s.output,
        &imageio::tensor_to_rgb(&image)?,
        &png_text(s, &plan, r.kind),
    )?;
    Ok(RenderReport {
        output: s.output.clone(),
        guide: guide.and_then(|g| g.1),
        plan,
        scheduler: r.kind,
        phases,
        loads: r.dir.loads(),
    })
}

/// What `--max-memory` chose, for the user.
fn budget_note(budget: u64, chosen: &[String], plan: &Plan) -> String {
    format!(
        "memory budget {}: {}; estimated peak {}",
        crate::memory::mib(budget),
        crate::budget::describe_choices(chosen),
        crate::memory::mib(plan.memory.peak())
    )
}

impl Render<'_> {
    /// The low-res pass: render (or take) the guide, upscale it to the canvas, encode it.
    /// Returns the canvas-size guide latents and the saved guide picture, if one was rendered.
    fn guide_pass(
        &self,
        unet: &UNet,
        vae: &mut Autoencoder,
        plan: &Plan,
        g: &GuidePlan,
        conds: &[Conditioning],
    ) -> Result<(Tensor, Option<PathBuf>)> {
        let s = self.settings;
        let (image, saved) = match &g.image {
            Some(path) => (imageio::load_image(path, (plan.width, plan.height))?, None),
            None => {
                let conds: Vec<Conditioning> = conds
                    .iter()
                    .map(|c| Conditioning {
                        guidance: g.guidance.unwrap_or(c.guidance),
                        ..c.clone()
                    })
                    .collect();
                let mut sched = scheduler::build(self.kind, &self.sched_config, g.steps)?;
                let shape = (1, 4, g.height / 8, g.width / 8);
                let noise = SeededNoise::new(s.seed).noise(&shape.into())?;
                let x = (noise * sched.init_noise_sigma())?;
                let windows = realize_windows(&g.windows)?;
                let job = self.job(unet, &conds, &windows);
                let latents = canvas::denoise(
                    &job,
                    sched.as_mut(),
                    x,
                    0,
                    &mut SeededNoise::new(s.seed + 1),
                    |_, _, _, x| Ok(x),
                )?;
                let guide = vae.decode(&latents, s.dtype, s.tiles.vae, &self.progress)?;
                if !s.keep_decoder {
                    vae.release_decoder();
                }
                let path = s.output.with_extension("guide.png");
                output::save_png(&path, &imageio::tensor_to_rgb(&guide)?, &[])?;
                self.progress.note(format!(
                    "guide: {}x{} -> {}",
                    g.width,
                    g.height,
                    path.display()
                ));
                (
                    imageio::resize_tensor(&guide, (plan.width, plan.height))?,
                    Some(path),
                )
            }
        };
        Ok((vae.encode_mean(&image, s.tiles.vae)?, saved))
    }

    /// The canvas pass: every window, every remaining step, one scheduler step per timestep.
    /// Image regions are encoded first, with the encoder the guide used, which then goes.
    fn canvas_pass(
        &self,
        unet: &UNet,
        vae: &mut Autoencoder,
        plan: &Plan,
        conds: &[Conditioning],
        guide: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = self.settings;
        let mut sched = scheduler::build(self.kind, &self.sched_config, s.steps)?;
        let noise = initial_noise(s, plan)?;
        let (x, start) = match (guide, &plan.guide) {
            (Some(latents), Some(g)) => {
                let start = s.steps - ((s.steps as f64 * g.strength) as usize).min(s.steps);
                if start == s.steps {
                    vae.release_encoder();
                    return Ok(latents.clone());
                }
                (
                    sched.add_noise(latents, &noise, sched.timesteps()[start])?,
                    start,
                )
            }
            _ => ((&noise * sched.init_noise_sigma())?, 0),
        };
        let regions = plan
            .image_regions
            .iter()
            .map(|r| {
                let image = imageio::load_image(&r.image, (r.rect.w * 8, r.rect.h * 8))?;
                let latest =
                    latest_timestep(sched.as_ref(), &self.sched_config, s.steps, r.strength);
                Ok((r.rect, vae.encode_mean(&image, s.tiles.vae)?, latest))
            })
            .collect::<Result<Vec<_>>>()?;
        vae.release_encoder();
        let windows = realize_windows(&plan.windows)?;
        let job = self.job(unet, conds, &windows);
        let mut ancestral = SeededNoise::new(s.seed + 1);
        canvas::denoise(
            &job,
            sched.as_mut(),
            x,
            start,
            &mut ancestral,
            |_, t, sched, x| apply_image_regions(sched, &regions, &noise, t, x),
        )
    }

    fn job<'a>(
        &self,
        unet: &'a UNet,
        conds: &'a [Conditioning],
        windows: &'a [Window],
    ) -> CanvasJob<'a> {
        CanvasJob {
            unet,
            dtype: conv_dtype(self.settings.dtype, &Progress::default()),
            conds,
            windows,
            progress: self.progress,
        }
    }
}

/// Image regions follow the reference `mixture_canvas.py`: while `t > latest`, the region's
/// latents are replaced by its reference latents noised to `t` with the initial noise.
pub fn apply_image_regions(
    sched: &dyn Scheduler,
    regions: &[(tiles::Rect, Tensor, f64)],
    init_noise: &Tensor,
    t: f64,
    mut x: Tensor,
) -> Result<Tensor> {
    for (r, reference, latest) in regions {
        if t > *latest {
            let ranges = (.., .., r.y..r.y + r.h, r.x..r.x + r.w);
            let noised = sched.add_noise(reference, &init_noise.i(ranges)?.contiguous()?, t)?;
            x = x.slice_assign(&[0..1, 0..4, r.y..r.y + r.h, r.x..r.x + r.w], &noised)?;
        }
    }
    Ok(x)
}

/// The last timestep at which an image region of `strength` is still overridden (reference
/// formula, including its use of `steps_offset`).
pub fn latest_timestep(
    sched: &dyn Scheduler,
    cfg: &SchedulerConfig,
    steps: usize,
    strength: f64,
) -> f64 {
    let offset = cfg.steps_offset;
    let init_ts = ((steps as f64 * (1.0 - strength)) as usize + offset).min(steps);
    let t_start = (steps + offset).saturating_sub(init_ts).min(steps - 1);
    sched.timesteps()[t_start]
}

/// Planned windows with their blend weights.
pub fn realize_windows(planned: &[PlannedWindow]) -> Result<Vec<Window>> {
    planned
        .iter()
        .map(|w| {
            Ok(Window {
                rect: w.rect,
                cond: w.cond,
                weights: tiles::weights(w.rect.h, w.rect.w, w.mask, w.weight)?,
            })
        })
        .collect()
}

/// Model facts for planning, from configs and weight headers only.
pub fn model_facts(dir: &ModelDir) -> Result<ModelFacts> {
    let unet = dir.unet_config()?;
    let info = crate::model::info::inspect(dir)?;
    let open = |component, stem| -> Result<WeightFile> {
        let path = dir.weights(component, stem)?;
        Ok(WeightFile::open(&path)?)
    };
    // Each UNet tensor belongs to the layer with the longest matching prefix (the head, "",
    // takes conv_in, the time embedding and the tail's norm and conv_out).
    let prefixes = unet.layer_prefixes();
    let mut per_layer = vec![0u64; prefixes.len()];
    for (name, n) in open("unet", "diffusion_pytorch_model")?.numels() {
        let layer = (0..prefixes.len())
            .filter(|&i| name.starts_with(&format!("{}.", prefixes[i])) || prefixes[i].is_empty())
            .max_by_key(|&i| prefixes[i].len())
            .unwrap_or(0);
        per_layer[layer] += n;
    }
    let (mut vae_encoder, mut vae_decoder) = (0, 0);
    for (name, n) in open("vae", "diffusion_pytorch_model")?.numels() {
        match name.starts_with("decoder.") || name.starts_with("post_quant_conv.") {
            true => vae_decoder += n,
            false => vae_encoder += n,
        }
    }
    Ok(ModelFacts {
        native_size: (info.native_size[0], info.native_size[1]),
        memory: MemoryFacts {
            text_encoder_params: info.text_encoder.parameters,
            unet_params: info.unet.parameters,
            unet_largest_layer_params: per_layer.into_iter().max().unwrap_or(0),
            unet_channels: unet.block_out_channels[0],
            unet_heads: unet.heads(0),
            vae_encoder_params: vae_encoder,
            vae_decoder_params: vae_decoder,
            vae_channels: {
                let ch = dir.vae_config()?.block_out_channels;
                ch.get(1).or(ch.first()).copied().unwrap_or(0)
            },
        },
    })
}

/// The scheduler the settings name, else the one the model folder's config names.
pub fn scheduler_kind(dir: &ModelDir, s: &Settings) -> Result<SchedulerKind> {
    if let Some(kind) = s.scheduler {
        return Ok(kind);
    }
    let class = dir.scheduler_config()?.class_name.unwrap_or_default();
    SchedulerKind::from_class_name(&class).ok_or_else(|| {
        Error::input(
            dir.path("scheduler/scheduler_config.json"),
            Some("_class_name"),
            format!("scheduler {class:?} is not implemented"),
            format!(
                "choose one with --scheduler ({})",
                SchedulerKind::NAMES.join(", ")
            ),
        )
    })
}

/// candle's CPU conv2d has no bf16 kernel: UNet and VAE then compute in f32 (said once).
pub fn conv_dtype(requested: DType, progress: &Progress) -> DType {
    if requested == DType::BF16 {
        progress
            .note("note: bf16 convolutions are not available on CPU; the UNet and VAE run in f32");
        DType::F32
    } else {
        requested
    }
}

/// Encode each prompt as `[uncond(negative), cond(text)]`, then drop the text encoder.
pub fn encode_prompts(
    dir: &ModelDir,
    dtype: DType,
    prompts: &[TextPrompt],
) -> Result<Vec<Conditioning>> {
    let tokenizer = dir.tokenizer()?;
    let encoder = dir.load_text_encoder(dtype)?;
    prompts
        .iter()
        .map(|p| {
            let ids: Vec<Vec<u32>> =
                vec![tokenizer.encode(&p.negative)?, tokenizer.encode(&p.text)?];
            let ids = Tensor::new(ids, &candle_core::Device::Cpu)?;
            let embeddings = encoder.forward(&ids)?.to_dtype(DType::F32)?;
            Ok(Conditioning {
                embeddings,
                guidance: p.guidance,
            })
        })
        .collect()
}

/// The canvas's initial Gaussian noise: `--init-noise`, else the seed; regions with their own
/// seed get their own noise.
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

/// PNG text chunks: the resolved spec (`tessera`), and A1111's `parameters` for PNG-info readers.
fn png_text(s: &Settings, plan: &Plan, kind: SchedulerKind) -> Vec<(&'static str, String)> {
    let model = s
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prompt, negative, guidance) = match &s.background {
        Some(p) => (p.text.as_str(), p.negative.as_str(), p.guidance),
        None => ("", "", crate::spec::DEFAULT_GUIDANCE),
    };
    let parameters = format!(
        "{prompt}\nNegative prompt: {negative}\nSteps: {}, Sampler: {}, CFG scale: {guidance}, Seed: {}, Size: {}x{}, Model: {model}",
        s.steps, kind.name(), s.seed, plan.width, plan.height
    );
    let spec = s.to_spec_file((plan.width, plan.height), (plan.window, plan.overlap), kind);
    let spec = toml::to_string(&spec).unwrap_or_default();
    vec![
        ("parameters", parameters),
        ("tessera", spec),
        ("Software", format!("tessera {}", env!("CARGO_PKG_VERSION"))),
    ]
}
