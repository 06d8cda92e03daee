//! Euler and Euler-ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` (sigmas interpolated at the inference timesteps).

use super::schedule::{
    alphas_cumprod, index_for, interp, karras_sigmas, log_sigmas, sigma_to_t, spaced_timesteps,
    train_sigmas,
};
use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::NoiseSource;
use candle_core::{Result, Tensor};

pub struct Euler {
    timesteps: Vec<f64>,
    /// One per timestep plus a final 0, stored as f32 like diffusers.
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    ancestral: bool,
    step_index: Option<usize>,
}

impl Euler {
    /// `karras`: the spaced timesteps' sigma range walked on Karras sigmas, each sigma's
    /// timestep found back by `sigma_to_t` (diffusers' `use_karras_sigmas`).
    pub fn new(cfg: &SchedulerConfig, steps: usize, ancestral: bool, karras: bool) -> Self {
        let spaced: Vec<f64> = spaced_timesteps(cfg, steps)
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect();
        let train = train_sigmas(&alphas_cumprod(cfg));
        let spaced_sigmas: Vec<f64> = spaced.iter().map(|&t| interp(t, &train)).collect();
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if karras {
            let logs = log_sigmas(&train);
            let ks = karras_sigmas(spaced_sigmas[steps - 1], spaced_sigmas[0], steps);
            ks.iter()
                .map(|&s| (sigma_to_t(s, &logs) as f32 as f64, s as f32))
                .unzip()
        } else {
            let sigmas = spaced_sigmas.iter().map(|&s| s as f32).collect();
            (spaced, sigmas)
        };
        sigmas.push(0.0);
        let max = sigmas.iter().cloned().fold(0.0f32, f32::max) as f64;
        let init_noise_sigma = match cfg.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: cfg.prediction_type,
            ancestral,
            step_index: None,
        }
    }

    fn index(&self, t: f64) -> usize {
        self.step_index
            .unwrap_or_else(|| index_for(&self.timesteps, t))
    }

    /// The model's estimate of the clean sample at noise level `sigma`.
    fn denoised(&self, out: &Tensor, x: &Tensor, sigma: f32) -> Result<Tensor> {
        let s = sigma as f64;
        match self.prediction {
            PredictionType::Epsilon => x - (out * s)?,
            PredictionType::VPrediction => {
                (out * (-s / (s * s + 1.0).sqrt()))? + (x / (s * s + 1.0))?
            }
            PredictionType::Sample => Ok(out.clone()),
        }
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let s = self.sigmas[self.index(t)];
        sample / ((s * s + 1.0) as f64).sqrt()
    }

    fn step(
        &mut self,
        out: &Tensor,
        t: f64,
        x: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let i = self.index(t);
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = self.denoised(out, x, sigma)?;
        let derivative = ((x - x0)? / sigma as f64)?;
        let prev = if self.ancestral {
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            let down = (next * next - up * up).sqrt();
            let prev = (x + (derivative * (down - sigma) as f64)?)?;
            (prev + (noise.noise(x.shape())? * up as f64)?)?
        } else {
            (x + (derivative * (next - sigma) as f64)?)?
        };
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let s = self.sigmas[self.index(t)] as f64;
        original + (noise * s)?
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn history(&self) -> Vec<Tensor> {
        Vec::new()
    }

    fn restore_history(&mut self, history: Vec<Tensor>) -> Result<()> {
        super::no_history(&history)
    }
}
