//! Noise schedulers, built from a diffusers `scheduler_config.json` the way `from_config` does.
//!
//! Every scheduler works on the whole canvas latent at once (the canvas scheduler calls `step`
//! once per timestep), so multistep solvers keep their history per canvas, not per tile.

pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod schedule;

use crate::noise::NoiseSource;
use candle_core::{Result, Tensor};
use serde::Deserialize;
use std::path::Path;
pub use tessera_core::choices::SchedulerKind;
use tessera_core::Error;

/// The diffusers scheduler config fields tessera honours (unknown fields are ignored, as
/// diffusers does when a config is shared between scheduler classes).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// Karras sigmas; tessera reads it to pick the Karras variant of the folder's scheduler.
    pub use_karras_sigmas: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            use_karras_sigmas: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

/// One denoising schedule, set for a number of inference steps.
pub trait Scheduler {
    /// The timesteps to visit, in order (floats: Euler with linspace spacing interpolates).
    fn timesteps(&self) -> &[f64];
    /// Factor applied to the initial Gaussian noise.
    fn init_noise_sigma(&self) -> f64;
    /// Scale the UNet input for `timestep` (identity for DDIM and DPM++).
    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor>;
    /// Advance `sample` one step given the guided `model_output`; `noise` feeds ancestral samplers.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor>;
    /// Noise clean latents `original` to the level of `timestep` (img2img, image regions).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: f64) -> Result<Tensor>;
    /// Start the schedule at timestep index `index` (img2img / the hi-res pass).
    fn set_begin_index(&mut self, index: usize);
    /// What a resumed pass needs besides the latents and the step: the multistep history
    /// (DPM++ 2M: the previous clean-sample estimate). Empty for one-step schedulers.
    fn history(&self) -> Vec<Tensor>;
    /// Restore what [`Scheduler::history`] returned, after `set_begin_index` (checkpoint resume).
    fn restore_history(&mut self, history: Vec<Tensor>) -> Result<()>;
}

/// One-step schedulers keep no history: only an empty one can be restored.
fn no_history(history: &[Tensor]) -> Result<()> {
    match history.is_empty() {
        true => Ok(()),
        false => candle_core::bail!("this scheduler keeps no history; the checkpoint has some"),
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> tessera_core::Result<Self> {
        tessera_nn::config::read_json(path)
    }
}

/// A scheduler of `kind` set for `steps` inference steps, configured like diffusers'
/// `from_config` (beta schedule, spacing, offset and prediction type come from `config`). The
/// kind alone decides Karras sigmas: a folder's `use_karras_sigmas` is turned into the Karras
/// kind where the folder's own scheduler is chosen, so a sampler named by the user is the one run.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    steps: usize,
) -> tessera_core::Result<Box<dyn Scheduler>> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(Error::Other(format!(
            "{steps} steps: use between 1 and {} (the model's training timesteps)",
            config.num_train_timesteps
        )));
    }
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)),
        SchedulerKind::Euler | SchedulerKind::EulerKarras => {
            Box::new(euler::Euler::new(config, steps, false, kind.karras()))
        }
        SchedulerKind::EulerAncestral | SchedulerKind::EulerAncestralKarras => {
            Box::new(euler::Euler::new(config, steps, true, kind.karras()))
        }
        SchedulerKind::DpmPlusPlus2M | SchedulerKind::DpmPlusPlus2MKarras => {
            Box::new(dpm_solver::DpmSolver2M::new(config, steps, kind.karras()))
        }
    })
}
