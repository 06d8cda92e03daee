//! The render pipeline, top-down: spec → plan → prompts → guide → canvas denoise → decode →
//! output. Each model lives only inside the phase that needs it.

use crate::canvas::{self, CanvasJob, Conditioning, LatentRect, Window};
use crate::model::ModelDir;
use crate::noise::{NoiseSource, SeededNoise};
use crate::progress::Progress;
use crate::scheduler::{self, Scheduler, SchedulerKind};
use crate::spec::Settings;
use crate::{output, Error, Result};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

/// What a finished render produced.
#[derive(Debug, Clone)]
pub struct RenderReport {
    pub output: PathBuf,
    pub width: usize,
    pub height: usize,
    pub scheduler: SchedulerKind,
    pub unet_evaluations: usize,
}

pub fn render(s: &Settings, progress: Progress) -> Result<RenderReport> {
    let dir = ModelDir::open(&s.model)?;
    let (width, height) = canvas_size(&dir, s)?;
    let conds = vec![encode_prompts(&dir, s.dtype, &[(&s.negative, &s.prompt)], s.guidance)?.remove(0)];
    let kind = scheduler_kind(&dir, s)?;
    let mut sched = scheduler::build(kind, &dir.scheduler_config()?, s.steps)?;
    let latents = initial_latents(s, width, height, sched.as_ref())?;
    let whole = LatentRect { y: 0, x: 0, h: height / 8, w: width / 8 };
    let windows = [Window { rect: whole, cond: 0, weights: Tensor::ones((whole.h, whole.w), DType::F64, &Device::Cpu)? }];
    let latents = {
        let unet = dir.load_unet(conv_dtype(s.dtype, &progress))?;
        let job = CanvasJob { unet: &unet, dtype: conv_dtype(s.dtype, &progress), conds: &conds, windows: &windows, progress };
        let mut noise = SeededNoise::new(s.seed.wrapping_add(1));
        canvas::denoise(&job, sched.as_mut(), latents, &mut noise, |_, _, x| Ok(x))?
    };
    if let Some(path) = &s.save_latents {
        output::save_tensors(path, &[("latents", &latents)])?;
    }
    let image = decode(&dir, &latents, s.dtype)?;
    output::save_png(&s.output, &output::tensor_to_rgb(&image)?, &png_text(s, kind, width, height))?;
    Ok(RenderReport { output: s.output.clone(), width, height, scheduler: kind, unet_evaluations: s.steps * windows.len() })
}

/// Canvas size: the settings', else the model's native size.
pub fn canvas_size(dir: &ModelDir, s: &Settings) -> Result<(usize, usize)> {
    let native = crate::model::info::native_size(dir)?;
    Ok((s.width.unwrap_or(native), s.height.unwrap_or(native)))
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
            format!("choose one with --scheduler ({})", SchedulerKind::NAMES.join(", ")),
        )
    })
}

/// candle's CPU conv2d has no bf16 kernel: UNet and VAE then compute in f32 (said once).
pub fn conv_dtype(requested: DType, progress: &Progress) -> DType {
    if requested == DType::BF16 {
        progress.note("note: bf16 convolutions are not available on CPU; the UNet and VAE run in f32");
        DType::F32
    } else {
        requested
    }
}

/// Encode `(negative, prompt)` pairs into `[uncond, cond]` conditionings, then drop the encoder.
pub fn encode_prompts(dir: &ModelDir, dtype: DType, pairs: &[(&str, &str)], guidance: f64) -> Result<Vec<Conditioning>> {
    let tokenizer = dir.tokenizer()?;
    let encoder = dir.load_text_encoder(dtype)?;
    pairs
        .iter()
        .map(|(negative, prompt)| {
            let ids: Vec<Vec<u32>> = vec![tokenizer.encode(negative)?, tokenizer.encode(prompt)?];
            let ids = Tensor::new(ids, &Device::Cpu)?;
            let embeddings = encoder.forward(&ids)?.to_dtype(DType::F32)?;
            Ok(Conditioning { embeddings, guidance })
        })
        .collect()
}

/// Gaussian latents (from `--init-noise` or the seed) times the scheduler's init_noise_sigma.
pub fn initial_latents(s: &Settings, width: usize, height: usize, sched: &dyn Scheduler) -> Result<Tensor> {
    let shape = (1, 4, height / 8, width / 8);
    let noise = match &s.init_noise {
        Some(path) => {
            let t = output::load_tensor(path, "noise")?.to_dtype(DType::F32)?;
            if t.dims() != [shape.0, shape.1, shape.2, shape.3] {
                return Err(Error::input(
                    path,
                    Some("noise"),
                    format!("shape {:?} does not fit a {width}x{height} canvas", t.dims()),
                    format!("store noise of shape [1, 4, {}, {}] or change the canvas size", shape.2, shape.3),
                ));
            }
            t
        }
        None => SeededNoise::new(s.seed).noise(&shape.into())?,
    };
    Ok((noise * sched.init_noise_sigma())?)
}

/// Decode final latents to an image tensor in [-1, 1]; the VAE is dropped afterwards.
pub fn decode(dir: &ModelDir, latents: &Tensor, dtype: DType) -> Result<Tensor> {
    let cfg = dir.vae_config()?;
    // diffusers upcasts VAEs marked force_upcast (SD 1.x/2.x) to f32: their f16 decode overflows.
    let dtype = if cfg.force_upcast || dtype == DType::BF16 { DType::F32 } else { dtype };
    let vae = dir.load_vae(dtype)?;
    let scaled = (latents / cfg.scaling_factor)?.to_dtype(dtype)?;
    Ok(vae.decode(&scaled)?.to_dtype(DType::F32)?)
}

/// PNG text chunks: the resolved settings, and A1111's `parameters` so PNG-info readers show them.
fn png_text(s: &Settings, kind: SchedulerKind, width: usize, height: usize) -> Vec<(&'static str, String)> {
    let model = s.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parameters = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        s.prompt, s.negative, s.steps, kind.name(), s.guidance, s.seed, width, height, model
    );
    let settings = format!(
        "model = {:?}\n[canvas]\nwidth = {width}\nheight = {height}\nseed = {}\nsteps = {}\nscheduler = {:?}\ndtype = {:?}\n[prompt]\ntext = {:?}\nnegative = {:?}\nguidance = {}\n",
        s.model.display().to_string(), s.seed, s.steps, kind.name(), format!("{:?}", s.dtype).to_lowercase(), s.prompt, s.negative, s.guidance
    );
    vec![("parameters", parameters), ("tessera", settings), ("Software", format!("tessera {}", env!("CARGO_PKG_VERSION")))]
}
