//! The render, top-down: spec → plan → prompts → guide → canvas → decode → output. Each model
//! lives only while needed (the text encoder for the prompts, the UNet until the decode, the VAE
//! halves as the autoencoder says) and none is loaded twice, unless a memory budget trades a
//! second read of the VAE decoder for its weights' room in the canvas pass. In a batch, a
//! [`Session`] keeps what the next render shares instead (see [`crate::session`]).

pub use crate::facts::open_runtime;
use crate::facts::{model_facts, open_model};
use crate::passes::{Denoiser, Guide, Hooks};
use crate::report::PhaseReport;
use crate::resume::{self, Checkpoint, Phase};
use crate::session::{Keys, Session};
use crate::{imageio, output, preview};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_core::choices::SchedulerKind;
use tessera_core::{Observer, Result};
use tessera_diffusion::autoencoder::Autoencoder;
use tessera_diffusion::pass::PassState;
use tessera_diffusion::Cond;
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

/// A lone render: every model is dropped as soon as it is done with.
pub fn render(settings: &Settings, obs: &dyn Observer) -> Result<RenderReport> {
    render_in(&mut Session::default(), settings, obs)
}

/// A render of a batch: it takes the components `session` holds for it and leaves there those
/// the next render shares (what that is, the batch told the session).
pub fn render_in(
    session: &mut Session,
    settings: &Settings,
    obs: &dyn Observer,
) -> Result<RenderReport> {
    // 1. The model and the plan, fitted to the memory budget; the device.
    let model = open_model(settings)?;
    let rt = session.runtime(settings)?;
    let fitted = budget::fit(settings, &model_facts(&model, &rt)?)?;
    announce_budget(&fitted, obs);
    let (s, plan) = (&fitted.settings, &fitted.plan);
    let rt = rt.with_precision(s.precision);
    obs.note(&format!("device: {}", rt.device_name()));
    let mut phases = PhaseReport::new(fitted.estimate).on_device(&rt);
    let kind = crate::facts::scheduler_kind(&model, s.scheduler)?;
    let writer = checkpoint_writer(s, &model, plan, kind)?;
    let ckpt = open_checkpoint(s, &writer, obs)?;
    let keys = Keys::of(s);
    session.begin(&keys);
    let kept = session.kept_for_next(&keys);
    if !kept.is_empty() {
        obs.note(&format!(
            "kept loaded for the next render: {} (resident through this render, beyond the \
             estimate)",
            kept.join(", ")
        ));
    }
    let next_vae = kept.contains(&"vae");
    let mut vae = Autoencoder::new(&model, &rt, s.tiles.vae)
        .with_scratch(s.vae_scratch)
        .with_halves(session.vae.take(keys.vae.as_ref()).unwrap_or_default())
        .keep_loaded(next_vae);
    // 2-5. Prompts, guide and canvas, unless a checkpoint says they are done.
    let (latents, guide) = match ckpt {
        Some(c) if c.phase == Phase::Decode => (rt.to_device(&c.state.latents)?, guide_picture(s)),
        ckpt => {
            let run = Run {
                model: &model,
                rt: &rt,
                s,
                plan,
                writer: &writer,
                obs,
                keys: &keys,
            };
            let done = run.denoise(session, &mut vae, &mut phases, ckpt.as_ref())?;
            let state = PassState {
                next: s.steps,
                latents: done.0.clone(),
                history: Vec::new(),
                noise: Default::default(),
            };
            let ckpt = Checkpoint {
                phase: Phase::Decode,
                state,
                guide: None,
            };
            writer.write(&ckpt, true)?;
            done
        }
    };
    if let Some(path) = &s.save_latents {
        output::save_tensors(path, &[("latents", &latents)])?;
    }
    // 6. Decode into the picture with its settings, written as the bands come; the
    // checkpoint goes.
    let text = png_text(s, &model, plan, kind);
    phases.run("decode", || {
        output::save_png_rows(&s.output, (plan.width, plan.height), &text, |put| {
            vae.decode_bands(&latents, obs, &mut |_, band| {
                let rgb = imageio::tensor_to_rgb(&band).map_err(candle_core::Error::wrap)?;
                put(rgb.as_raw()).map_err(candle_core::Error::wrap)
            })
        })
    })?;
    let wanted = session.next.vae.clone();
    session
        .vae
        .put(keys.vae.as_ref(), wanted.as_ref(), vae.into_halves());
    session.settle();
    writer.finish()?;
    Ok(RenderReport {
        output: s.output.clone(),
        guide,
        estimate: fitted.estimate,
        plan: fitted.plan.clone(),
        scheduler: kind,
        phases,
        loads: model.loads(),
        device: rt.device_name(),
    })
}

/// What the denoising part of a render shares.
struct Run<'r> {
    model: &'r ModelDir,
    rt: &'r Runtime,
    s: &'r Settings,
    plan: &'r Plan,
    writer: &'r resume::Writer,
    obs: &'r dyn Observer,
    keys: &'r Keys,
}

impl Run<'_> {
    /// Prompts, guide and canvas, from `ckpt` if given (checkpointing every step): the canvas
    /// latents and the guide picture. The text encoders and the UNet come from `session` when
    /// it holds them, and go back to it when the next render shares them.
    fn denoise(
        &self,
        session: &mut Session,
        vae: &mut Autoencoder,
        phases: &mut PhaseReport,
        ckpt: Option<&Checkpoint>,
    ) -> Result<(Tensor, Option<PathBuf>)> {
        let (s, plan, obs) = (self.s, self.plan, self.obs);
        let key = self.keys.text.as_ref();
        let conds = phases.run("encode prompts", || {
            session.encode_prompts(key, self.model, self.rt, &plan.prompts)
        })?;
        let key = self.keys.unet.as_ref();
        let held = session.unet.take(key);
        let denoiser = Denoiser::load(self.model, self.rt, s, plan, obs, held)?;
        let guide_step = |state: &PassState| {
            let ckpt = Checkpoint {
                phase: Phase::Guide,
                state: state.clone(),
                guide: None,
            };
            self.writer.write(&ckpt, false)
        };
        let guide = match (&plan.guide, ckpt.and_then(|c| c.guide.as_ref())) {
            (Some(_), Some(latents)) => Some(Guide {
                latents: self.rt.to_device(latents)?,
                picture: guide_picture(s),
            }),
            (Some(g), None) => {
                let hooks = Hooks {
                    resume: ckpt.filter(|c| c.phase == Phase::Guide).map(|c| &c.state),
                    on_step: Some(&guide_step),
                };
                Some(phases.run("guide pass", || denoiser.guide(g, &conds, vae, hooks))?)
            }
            (None, _) => None,
        };
        let guide_latents = guide.as_ref().map(|g| g.latents.clone());
        let canvas_step = |state: &PassState| {
            let ckpt = Checkpoint {
                phase: Phase::Canvas,
                state: state.clone(),
                guide: guide_latents.clone(),
            };
            self.writer.write(&ckpt, false)?;
            match s.preview_every {
                Some(n) if state.next.is_multiple_of(n) => {
                    preview::write(&s.output, &state.latents)?;
                    let path = preview::path_for(&s.output);
                    obs.note(&format!(
                        "preview: step {} -> {}",
                        state.next,
                        path.display()
                    ));
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let hooks = Hooks {
            resume: ckpt.filter(|c| c.phase == Phase::Canvas).map(|c| &c.state),
            on_step: Some(&canvas_step),
        };
        let latents = phases.run("canvas denoise", || {
            denoiser.canvas(&conds, guide.as_ref(), vae, hooks)
        })?;
        let wanted = session.next.unet.clone();
        session.unet.put(key, wanted.as_ref(), denoiser.unet);
        Ok((latents, guide.and_then(|g| g.picture)))
    }
}

/// The guide picture an earlier run of this render left beside the output, if any.
fn guide_picture(s: &Settings) -> Option<PathBuf> {
    Some(s.output.with_extension("guide.png")).filter(|p| p.exists())
}

/// The checkpoint writer of a render, with the fingerprint of what determines its bytes.
fn checkpoint_writer(
    s: &Settings,
    model: &ModelDir,
    plan: &Plan,
    kind: SchedulerKind,
) -> Result<resume::Writer> {
    let spec = s.to_spec_file(
        &model.root,
        (plan.width, plan.height),
        (plan.window, plan.overlap),
        kind,
    );
    let spec = toml::to_string(&spec).unwrap_or_default();
    let mut inputs: Vec<&Path> = s.init_noise.iter().map(PathBuf::as_path).collect();
    inputs.extend(plan.guide.as_ref().and_then(|g| g.image.as_deref()));
    inputs.extend(plan.image_regions.iter().map(|r| r.image.as_path()));
    let fingerprint = resume::fingerprint(&spec, &inputs, &model.root)?;
    Ok(resume::Writer::new(&s.output, fingerprint))
}

/// The checkpoint to continue from. With `--resume` a checkpoint of another render is an error
/// (exit 2); without, it is replaced. A matching one is always continued: same bytes, less work.
fn open_checkpoint(
    s: &Settings,
    writer: &resume::Writer,
    obs: &dyn Observer,
) -> Result<Option<Checkpoint>> {
    match resume::load(&writer.path, writer.fingerprint()) {
        Ok(Some(c)) => {
            let (phase, next) = (c.phase, c.state.next);
            obs.note(&format!(
                "resuming from {}: {phase:?} pass, step {next} done",
                writer.path.display()
            ));
            Ok(Some(c))
        }
        Ok(None) => {
            if s.resume {
                obs.note("no checkpoint to resume: rendering from the start");
            }
            Ok(None)
        }
        Err(e) if !s.resume => {
            obs.note(&format!(
                "{e}\nrendering from the start; it will be replaced"
            ));
            Ok(None)
        }
        Err(e) => Err(e),
    }
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
    // In every render, so that its peak follows what is alive: the tiny model's 2048² render
    // peaked 1.20x its 512² one with glibc keeping freed bands, 1.10x without (at some page
    // faults: the demo 6.1 -> 7.3 s).
    crate::report::release_freed_memory_promptly();
}

/// Encode each prompt as `[uncond(negative), cond(text)]`, then drop the text encoders.
pub fn encode_prompts(model: &ModelDir, rt: &Runtime, prompts: &[TextPrompt]) -> Result<Vec<Cond>> {
    Session::default().encode_prompts(None, model, rt, prompts)
}

/// PNG text chunks: the resolved spec (`tessera`), and A1111's `parameters` for PNG-info readers.
fn png_text(
    s: &Settings,
    model: &ModelDir,
    plan: &Plan,
    kind: SchedulerKind,
) -> Vec<(&'static str, String)> {
    // A single-file checkpoint is the model; its --config folder only lends configs.
    let model_path = model.single_file().unwrap_or(&model.root);
    let name = match model.single_file() {
        Some(file) => file.file_stem(),
        None => model.root.file_name(),
    }
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
    let (prompt, negative, guidance) = match &s.background {
        Some(p) => (p.text.as_str(), p.negative.as_str(), p.guidance),
        None => ("", "", tessera_plan::spec::DEFAULT_GUIDANCE),
    };
    let parameters = format!(
        "{prompt}\nNegative prompt: {negative}\nSteps: {}, Sampler: {}, CFG scale: {guidance}, Seed: {}, Size: {}x{}, Model: {name}",
        s.steps, kind.a1111_name(), s.seed, plan.width, plan.height
    );
    let spec = s.to_spec_file(
        model_path,
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
