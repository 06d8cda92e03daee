//! What all schedulers share: the training noise schedule (betas, ᾱ) and the placement of
//! inference timesteps (`timestep_spacing`), computed with diffusers' precision (f32 tensors,
//! f64 NumPy where diffusers uses NumPy).

use super::{BetaSchedule, SchedulerConfig, TimestepSpacing};

/// torch's f32 `linspace`: f32 step, filled from both ends towards the middle.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start as f32];
    }
    let (a, b) = (start as f32, end as f32);
    let step = (b - a) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                a + step * i as f32
            } else {
                b - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// ᾱ_t = Π(1 - β_t) with torch's precision: f32 betas and alphas, the product accumulated in
/// f64 (torch's CPU cumprod accumulator for f32) and stored as f32.
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    let betas: Vec<f32> = match cfg.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                .into_iter()
                .map(|s| s * s)
                .collect()
        }
    };
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|b| {
            acc *= (1.0 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Karras-style sigmas `sqrt((1-ᾱ)/ᾱ)` for every training timestep (f32, as diffusers).
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// Karras et al. (2022) sigmas, ρ = 7, from `sigma_max` down to `sigma_min` (f64, as
/// diffusers' `_convert_to_karras`).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(RHO))
        .collect()
}

/// ln of every training sigma, f32 as NumPy's `log` of diffusers' f32 array.
pub fn log_sigmas(train_sigmas: &[f32]) -> Vec<f32> {
    train_sigmas
        .iter()
        .map(|s| (*s as f64).ln() as f32)
        .collect()
}

/// The (fractional) training timestep of `sigma`: linear in log sigma between the two training
/// sigmas around it, clamped to the ends (diffusers' `_sigma_to_t`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let below = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let low_idx = below.saturating_sub(1).min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_idx] as f64, log_sigmas[low_idx + 1] as f64);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// DDIM / Euler timesteps for `steps` inference steps (descending).
pub fn spaced_timesteps(cfg: &SchedulerConfig, steps: usize) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    match cfg.timestep_spacing {
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Trailing => {
            let ratio = n as f64 / steps as f64;
            (0..steps)
                .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                .collect()
        }
    }
}

/// NumPy's `linspace(a, b, n)`.
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| a + i as f64 * step).collect();
    v[n - 1] = b;
    v
}

/// NumPy's `interp(x, arange(len(ys)), ys)`.
pub fn interp(x: f64, ys: &[f32]) -> f64 {
    let x = x.clamp(0.0, (ys.len() - 1) as f64);
    let i = (x.floor() as usize).min(ys.len() - 2);
    let f = x - i as f64;
    ys[i] as f64 + (ys[i + 1] as f64 - ys[i] as f64) * f
}

/// Index of `t` in `timesteps` the way diffusers' `index_for_timestep` finds it (the second
/// match when there are two, so img2img starting mid-schedule does not repeat a sigma).
pub fn index_for(timesteps: &[f64], t: f64) -> usize {
    let hits: Vec<usize> = (0..timesteps.len())
        .filter(|&i| timesteps[i] == t)
        .collect();
    match hits.len() {
        0 => timesteps
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 - t).abs().total_cmp(&(b.1 - t).abs()))
            .map(|(i, _)| i)
            .unwrap_or(0),
        1 => hits[0],
        _ => hits[1],
    }
}
