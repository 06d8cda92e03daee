//! The render, top-down: spec → plan → prompts → guide → canvas → decode → output. Each model
//! lives only while needed (the text encoder for the prompts, the UNet until the decode, the VAE
//! halves as the autoencoder says) and none is loaded twice, unless a memory budget trades a
//! second read of the VAE decoder for its weights' room in the canvas pass.

use crate::facts::{model_facts, model_path};
use crate::passes::{Denoiser, Guide};
use crate::report::PhaseReport;
use crate::{imageio, output};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tessera_core::choices::SchedulerKind;
use tessera_core::{Observer, Result};
use tessera_diffusion::autoencoder::Autoencoder;
use tessera_diffusion::Cond;
use tessera_models::text::TextEncoders;
use tessera_models::ModelDir;
use tessera_nn::Runtime;
use tessera_plan::budget::{self, Estimate, Fitted};
use tessera_plan::spec::TextPrompt;
use tessera_plan::{Plan, Settings};

/// What a finished render produced.
#[derive(Debug, Clone)]
pub struct RenderReport {
    pub output: PathBuf,
    pub guide: Option<PathBuf>,
    pub plan: Plan,
    pub estimate: Estimate,
    pub scheduler: SchedulerKind,
    pub phases: PhaseReport,
    /// How many times each model component was loaded.
    pub loads: BTreeMap<&'static str, usize>,
    /// The device that ran it: `cpu`, `cuda:0`, `metal:0`.
    pub device: String,
}

pub fn render(settings: &Settings, obs: &dyn Observer) -> Result<RenderReport> {
    // 1. The model and the plan, fitted to the memory budget; the device.
    let model = ModelDir::open(model_path(settings))?;
    let rt = open_runtime(settings)?;
    let mut fitted = budget::fit(settings, &model_facts(&model, &rt)?)?;
    if !rt.device.is_cpu() && fitted.settings.max_memory.is_none() {
        // On a GPU without a budget the tiled VAE keeps its stores in device memory: through
        // host RAM a 2048² decode took 62 s instead of 3.7 s (H200, pageable copies).
        fitted.settings.vae_scratch = None;
    }
    announce_budget(&fitted, obs);
    let (s, plan) = (&fitted.settings, &fitted.plan);
    let rt = rt.with_precision(s.precision);
    obs.note(&format!("device: {}", rt.device_name()));
    let mut phases = PhaseReport::new(fitted.estimate);
    // 2. The prompts; the text encoder goes with them.
    let conds = phases.run("encode prompts", || {
        encode_prompts(&model, &rt, &plan.prompts)
    })?;
    // 3. The denoiser and the VAE.
    let denoiser = Denoiser::load(&model, &rt, s, plan, obs)?;
    let mut vae = Autoencoder::new(&model, &rt, s.tiles.vae).with_scratch(s.vae_scratch);
    // 4. The guide: rendered at low resolution (or given), upscaled, encoded.
    let guide: Option<Guide> = match &plan.guide {
        Some(g) => Some(phases.run("guide pass", || denoiser.guide(g, &conds, &mut vae))?),
        None => None,
    };
    // 5. The canvas: every window, every remaining step.
    let latents = phases.run("canvas denoise", || {
        denoiser.canvas(&conds, guide.as_ref(), &mut vae)
    })?;
    let scheduler = denoiser.scheduler;
    drop(denoiser);
    if let Some(path) = &s.save_latents {
        output::save_tensors(path, &[("latents", &latents)])?;
    }
    // 6. Decode, and write the picture with its settings.
    let image = phases.run("decode", || vae.decode(&latents, obs))?;
    drop(vae);
    let text = png_text(s, &model, plan, scheduler);
    output::save_png(&s.output, &imageio::tensor_to_rgb(&image)?, &text)?;
    Ok(RenderReport {
        output: s.output.clone(),
        guide: guide.and_then(|g| g.picture),
        estimate: fitted.estimate,
        plan: fitted.plan.clone(),
        scheduler,
        phases,
        loads: model.loads(),
        device: rt.device_name(),
    })
}

/// The device the settings ask for, at their precision.
pub fn open_runtime(s: &Settings) -> Result<Runtime> {
    Runtime::open(s.device, s.precision)
        .map_err(|e| tessera_core::Error::input(&s.origin, Some("canvas.device"), e.message, e.fix))
}

/// Say what `--max-memory` chose, and make freed memory go back to the kernel at once.
fn announce_budget(fitted: &Fitted, obs: &dyn Observer) {
    let s = &fitted.settings;
    if let Some(budget) = s.max_memory {
        obs.note(&format!(
            "memory budget {}: {}; estimated peak {}",
            crate::report::mib(budget),
            budget::describe_choices(&fitted.chosen),
            crate::report::mib(fitted.estimate.peak())
        ));
    }
    if s.stream_weights || s.max_memory.is_some() {
        crate::report::release_freed_memory_promptly();
    }
}

/// Encode each prompt as `[uncond(negative), cond(text)]`, then drop the text encoders.
pub fn encode_prompts(model: &ModelDir, rt: &Runtime, prompts: &[TextPrompt]) -> Result<Vec<Cond>> {
    let encoders = TextEncoders::load(model, rt)?;
    prompts
        .iter()
        .map(|p| {
            let e = encoders.encode_pair(&p.negative, &p.text)?;
            Ok(Cond {
                context: e.context,
                pooled: e.pooled,
                guidance: p.guidance,
            })
        })
        .collect()
}

/// PNG text chunks: the resolved spec (`tessera`), and A1111's `parameters` for PNG-info readers.
fn png_text(
    s: &Settings,
    model: &ModelDir,
    plan: &Plan,
    kind: SchedulerKind,
) -> Vec<(&'static str, String)> {
    let name = model
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prompt, negative, guidance) = match &s.background {
        Some(p) => (p.text.as_str(), p.negative.as_str(), p.guidance),
        None => ("", "", tessera_plan::spec::DEFAULT_GUIDANCE),
    };
    let parameters = format!(
        "{prompt}\nNegative prompt: {negative}\nSteps: {}, Sampler: {}, CFG scale: {guidance}, Seed: {}, Size: {}x{}, Model: {name}",
        s.steps, kind.name(), s.seed, plan.width, plan.height
    );
    let spec = s.to_spec_file(
        &model.root,
        (plan.width, plan.height),
        (plan.window, plan.overlap),
        kind,
    );
    let spec = toml::to_string(&spec).unwrap_or_default();
    vec![
        ("parameters", parameters),
        ("tessera", spec),
        ("Software", format!("tessera {}", env!("CARGO_PKG_VERSION"))),
    ]
}
