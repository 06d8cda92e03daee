//! DPM-Solver++ 2M (diffusers' `DPMSolverMultistepScheduler` with `dpmsolver++`, order 2,
//! midpoint, lower-order final step, final sigma 0). The history of model outputs is kept for
//! the whole canvas, so the canvas scheduler calls `step` once per timestep.

use super::schedule::{
    alphas_cumprod, index_for, interp, karras_sigmas, linspace, log_sigmas, sigma_to_t,
    train_sigmas,
};
use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::noise::NoiseSource;
use candle_core::{Result, Tensor};

pub struct DpmSolver2M {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: PredictionType,
    previous: Option<Tensor>,
    step_index: Option<usize>,
}

/// (α_t, σ_t, λ_t) of a Karras sigma.
fn alpha_sigma_lambda(sigma: f32) -> (f64, f64, f64) {
    let s = sigma as f64;
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    let sigma_t = s * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

impl DpmSolver2M {
    /// `karras`: Karras sigmas over the whole training range, their timesteps rounded
    /// (diffusers' `use_karras_sigmas`; the spacing then plays no part).
    pub fn new(cfg: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        let train = train_sigmas(&alphas_cumprod(cfg));
        if karras {
            let logs = log_sigmas(&train);
            let ks = karras_sigmas(train[0] as f64, train[train.len() - 1] as f64, steps);
            let timesteps = ks
                .iter()
                .map(|&s| sigma_to_t(s, &logs).round_ties_even())
                .collect();
            let mut sigmas: Vec<f32> = ks.iter().map(|&s| s as f32).collect();
            sigmas.push(0.0);
            return Self {
                timesteps,
                sigmas,
                prediction: cfg.prediction_type,
                previous: None,
                step_index: None,
            };
        }
        let n = cfg.num_train_timesteps;
        let timesteps: Vec<f64> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps + 1)
                .iter()
                .rev()
                .take(steps)
                .map(|t| t.round())
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + cfg.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                    .collect()
            }
        };
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(t, &train) as f32)
            .collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            prediction: cfg.prediction_type,
            previous: None,
            step_index: None,
        }
    }

    fn index(&self, t: f64) -> usize {
        self.step_index
            .unwrap_or_else(|| index_for(&self.timesteps, t))
    }
}

impl Scheduler for DpmSolver2M {
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
        let i = self.index(t);
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[i + 1]);
        // dpmsolver++ works on the predicted clean sample.
        let x0 = match self.prediction {
            PredictionType::Epsilon => ((x - (out * sigma_s)?)? / alpha_s)?,
            PredictionType::VPrediction => ((x * alpha_s)? - (out * sigma_s)?)?,
            PredictionType::Sample => out.clone(),
        };
        let h = lambda_t - lambda_s;
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let last = i + 1 == self.timesteps.len();
        let first_order = (x * (sigma_t / sigma_s))? - (&x0 * coeff)?;
        let prev = match (&self.previous, last) {
            (Some(prev_x0), false) if i > 0 => {
                let (_, _, lambda_prev) = alpha_sigma_lambda(self.sigmas[i - 1]);
                let r0 = (lambda_s - lambda_prev) / h;
                let d1 = ((&x0 - prev_x0)? * (1.0 / r0))?;
                (first_order? - (d1 * (0.5 * coeff))?)?
            }
            _ => first_order?,
        };
        self.previous = Some(x0);
        self.step_index = Some(i + 1);
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let (alpha, sigma, _) = alpha_sigma_lambda(self.sigmas[self.index(t)]);
        (original * alpha)? + (noise * sigma)?
    }

    fn set_begin_index(&mut self, index: usize) {
        self.step_index = Some(index);
    }

    fn history(&self) -> Vec<Tensor> {
        self.previous.iter().cloned().collect()
    }

    fn restore_history(&mut self, history: Vec<Tensor>) -> Result<()> {
        if history.len() > 1 {
            candle_core::bail!(
                "DPM++ 2M keeps one previous estimate, the checkpoint has {}",
                history.len()
            );
        }
        self.previous = history.into_iter().next();
        Ok(())
    }
}
