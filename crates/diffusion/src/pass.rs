//! One denoising pass over a latent canvas: the guide pass and the canvas pass are both this,
//! differing only in size, windows, conditionings, start and image regions.

use crate::guidance::{guided_eps_group, Cond};
use crate::mixture::{Blend, Window};
use crate::noise::{NoiseSource, NoiseState, SeededNoise};
use crate::predictor::{NoisePredictor, Placement};
use crate::scheduler::{self, Scheduler, SchedulerConfig, SchedulerKind};
use candle_core::{IndexOp, Tensor};
use std::cell::RefCell;
use tessera_core::{interrupt, Observer, Rect, Result};

/// An image region: latents held to a reference picture for the first part of the schedule.
pub struct ImageRegion {
    /// Latent cells.
    pub rect: Rect,
    /// The picture's scaled latent mean, (1, C, h, w).
    pub reference: Tensor,
    /// The share of the schedule during which the region is held (its strength).
    pub strength: f64,
}

/// Where a pass starts.
pub enum Start<'a> {
    /// Pure noise (txt2img).
    Noise,
    /// Clean latents re-noised: the last `strength` of the schedule is run on them.
    Latents { latents: &'a Tensor, strength: f64 },
}

/// Everything one pass needs besides the predictor.
pub struct PassSpec<'a> {
    pub scheduler: SchedulerKind,
    pub config: &'a SchedulerConfig,
    pub steps: usize,
    /// The initial Gaussian noise, (1, C, h, w) on the compute device.
    pub noise: &'a Tensor,
    pub start: Start<'a>,
    pub windows: &'a [Window],
    pub conds: &'a [Cond],
    pub image_regions: &'a [ImageRegion],
    /// Seed of the per-step noise of ancestral samplers.
    pub ancestral_seed: u64,
    /// The canvas size in pixels, for windows' placement.
    pub canvas_px: (usize, usize),
    /// At most this many windows share one network evaluation (see [`Pass::group`]).
    pub group: usize,
    /// Continue from this state (a checkpoint) instead of from `start`.
    pub resume: Option<PassState>,
    /// Sees the state after every step (checkpoints, previews); an error stops the pass.
    pub on_step: Option<&'a StepHook<'a>>,
}

/// What sees each step's [`PassState`] (checkpoints, previews); an error stops the pass.
pub type StepHook<'a> = dyn Fn(&PassState) -> Result<()> + 'a;

/// Everything a pass needs to continue bit-exactly where it stopped.
#[derive(Clone)]
pub struct PassState {
    /// Index in the full schedule of the next step to run (`steps` when the pass is done).
    pub next: usize,
    /// The latents after the step before `next`.
    pub latents: Tensor,
    /// The scheduler's multistep history ([`Scheduler::history`]).
    pub history: Vec<Tensor>,
    /// The ancestral noise stream's position.
    pub noise: NoiseState,
}

/// The schedule index a re-noised start begins at: `steps - int(steps * strength)`.
pub fn start_index(steps: usize, strength: f64) -> usize {
    steps - ((steps as f64 * strength) as usize).min(steps)
}

/// Run a pass: build its scheduler, noise the start, denoise through the remaining steps.
pub fn denoise(
    predictor: &dyn NoisePredictor,
    spec: &PassSpec,
    observer: &dyn Observer,
) -> Result<Tensor> {
    let mut sched = scheduler::build(spec.scheduler, spec.config, spec.steps)?;
    let mut ancestral = SeededNoise::new(spec.ancestral_seed);
    let (x, start) = match (&spec.resume, &spec.start) {
        (Some(state), _) => {
            sched.set_begin_index(state.next);
            sched.restore_history(state.history.clone())?;
            ancestral.restore(state.noise);
            (state.latents.clone(), state.next)
        }
        (None, Start::Noise) => ((spec.noise * sched.init_noise_sigma())?, 0),
        (None, Start::Latents { latents, strength }) => {
            let start = start_index(spec.steps, *strength);
            if start == spec.steps {
                return Ok((*latents).clone());
            }
            let t = sched.timesteps()[start];
            (sched.add_noise(latents, spec.noise, t)?, start)
        }
    };
    let regions = spec
        .image_regions
        .iter()
        .map(|r| {
            let latest = latest_timestep(sched.as_ref(), spec.config, spec.steps, r.strength);
            (r.rect, r.reference.clone(), latest)
        })
        .collect::<Vec<_>>();
    let pass = Pass {
        predictor,
        windows: spec.windows,
        conds: spec.conds,
        canvas_px: spec.canvas_px,
        group: spec.group,
        observer,
    };
    let ancestral = RefCell::new(ancestral);
    let mut source = &ancestral;
    pass.run(sched.as_mut(), x, start, &mut source, |i, t, sched, x| {
        let x = apply_image_regions(sched, &regions, spec.noise, t, x)?;
        if let Some(hook) = spec.on_step {
            hook(&PassState {
                next: i + 1,
                latents: x.clone(),
                history: sched.history(),
                noise: ancestral.borrow().state(),
            })?;
        }
        Ok(x)
    })
}

/// The denoising loop itself, for callers that build their scheduler and start themselves
/// (parity tests replay reference runs through it).
pub struct Pass<'a> {
    pub predictor: &'a dyn NoisePredictor,
    pub windows: &'a [Window],
    pub conds: &'a [Cond],
    pub canvas_px: (usize, usize),
    /// At most this many windows of one shape (and batchable conds) share one network
    /// evaluation: each layer's weights are then used (or, streamed, read) once per group, at
    /// the cost of the group's activations. 1: window by window.
    pub group: usize,
    pub observer: &'a dyn Observer,
}

impl Pass<'_> {
    /// Denoise `latents` (already noised for timestep index `start`) through the remaining
    /// timesteps of `sched`. `after_step(i, t, sched, latents)` sees every step and may replace
    /// the latents (image regions).
    pub fn run(
        &self,
        sched: &mut dyn Scheduler,
        mut latents: Tensor,
        start: usize,
        noise: &mut dyn NoiseSource,
        mut after_step: impl FnMut(usize, f64, &dyn Scheduler, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        sched.set_begin_index(start);
        let timesteps = sched.timesteps()[start..].to_vec();
        let (_, _, lh, lw) = latents.dims4()?;
        let whole = Rect {
            y: 0,
            x: 0,
            h: lh,
            w: lw,
        };
        let single = self.windows.len() == 1 && self.windows[0].rect == whole;
        self.observer
            .begin("denoise", (timesteps.len() * self.windows.len()) as u64);
        let total = start + timesteps.len();
        for (k, &t) in timesteps.iter().enumerate() {
            let step = format!("step {}/{total}", start + k + 1);
            self.observer.status(&step);
            let eps = if single {
                // One window covering everything is plain txt2img: skip the blend so it is exact.
                self.group_eps(
                    &[&self.windows[0]],
                    sched,
                    std::slice::from_ref(&latents),
                    t,
                )?
                .remove(0)
            } else {
                let mut blend = Blend::new(&latents)?;
                let (mut done, windows) = (0, self.windows.len());
                for group in self.groups() {
                    let first = done + 1;
                    done += group.len();
                    self.observer
                        .status(&format!("{step}, windows {first}-{done}/{windows}"));
                    let crops = group
                        .iter()
                        .map(|w| {
                            let r = w.rect;
                            latents
                                .i((.., .., r.y..r.y + r.h, r.x..r.x + r.w))?
                                .contiguous()
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    let eps = self.group_eps(&group, sched, &crops, t)?;
                    for (win, eps) in group.iter().zip(&eps) {
                        blend.add(win.rect, eps, &win.weights)?;
                    }
                }
                blend.finish()?
            };
            latents = sched.step(&eps, t, &latents, noise)?;
            latents = after_step(start + k, t, &*sched, latents)?;
        }
        self.observer.end();
        Ok(latents)
    }

    /// The windows in evaluation groups: consecutive windows of one shape whose conds batch
    /// together, at most `group` of them. The blend still adds them in window order.
    fn groups(&self) -> Vec<Vec<&Window>> {
        let mut groups: Vec<Vec<&Window>> = Vec::new();
        for win in self.windows {
            match groups.last_mut() {
                Some(g)
                    if g.len() < self.group.max(1)
                        && (g[0].rect.h, g[0].rect.w) == (win.rect.h, win.rect.w)
                        && self.conds[g[0].cond].batches_with(&self.conds[win.cond]) =>
                {
                    g.push(win)
                }
                _ => groups.push(vec![win]),
            }
        }
        groups
    }

    fn group_eps(
        &self,
        group: &[&Window],
        sched: &dyn Scheduler,
        crops: &[Tensor],
        t: f64,
    ) -> Result<Vec<Tensor>> {
        interrupt::check()?;
        let at: Vec<Placement> = group
            .iter()
            .map(|w| {
                let r = w.rect.scaled(8);
                Placement {
                    canvas: self.canvas_px,
                    offset: (r.x, r.y),
                    size: (r.w, r.h),
                }
            })
            .collect();
        let conds: Vec<&Cond> = group.iter().map(|w| &self.conds[w.cond]).collect();
        let eps = guided_eps_group(self.predictor, sched, crops, t, &conds, &at)?;
        for _ in group {
            self.observer.advance();
        }
        Ok(eps)
    }
}

/// Image regions follow the reference `mixture_canvas.py`: while `t > latest`, the region's
/// latents are replaced by its reference latents noised to `t` with the initial noise.
pub fn apply_image_regions(
    sched: &dyn Scheduler,
    regions: &[(Rect, Tensor, f64)],
    init_noise: &Tensor,
    t: f64,
    mut x: Tensor,
) -> Result<Tensor> {
    for (r, reference, latest) in regions {
        if t > *latest {
            let ranges = (.., .., r.y..r.y + r.h, r.x..r.x + r.w);
            let noised = sched.add_noise(reference, &init_noise.i(ranges)?.contiguous()?, t)?;
            x = x.slice_assign(
                &[0..1, 0..x.dim(1)?, r.y..r.y + r.h, r.x..r.x + r.w],
                &noised,
            )?;
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
