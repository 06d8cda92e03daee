//! DDIM (eta = 0), as diffusers' `DDIMScheduler`.

use super::schedule::{alphas_cumprod, spaced_timesteps};
use super::{PredictionType, Scheduler, SchedulerConfig};
use crate::noise::NoiseSource;
use candle_core::{Result, Tensor};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    prediction: PredictionType,
    clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = alphas_cumprod(cfg);
        Self {
            timesteps: spaced_timesteps(cfg, steps),
            final_alpha_cumprod: if cfg.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            step_ratio: cfg.num_train_timesteps / steps,
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.then_some(cfg.clip_sample_range),
        }
    }

    fn alpha(&self, t: f64) -> f32 {
        self.alphas_cumprod[t as usize]
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        out: &Tensor,
        t: f64,
        x: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let prev_t = t as i64 - self.step_ratio as i64;
        let a_t = self.alpha(t);
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (sa, sb) = (a_t.sqrt() as f64, (1.0 - a_t).sqrt() as f64);
        let (x0, eps) = match self.prediction {
            PredictionType::Epsilon => (((x - (out * sb)?)? / sa)?, out.clone()),
            PredictionType::VPrediction => (((x * sa)? - (out * sb)?)?, ((out * sa)? + (x * sb)?)?),
            PredictionType::Sample => (out.clone(), ((x - (out * sa)?)? / sb)?),
        };
        let x0 = match self.clip_sample {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        (x0 * a_prev.sqrt() as f64)? + (eps * (1.0 - a_prev).sqrt() as f64)?
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let a = self.alpha(t);
        (original * a.sqrt() as f64)? + (noise * (1.0 - a).sqrt() as f64)?
    }

    fn set_begin_index(&mut self, _index: usize) {}

    fn history(&self) -> Vec<Tensor> {
        Vec::new()
    }

    fn restore_history(&mut self, history: Vec<Tensor>) -> Result<()> {
        super::no_history(&history)
    }
}
