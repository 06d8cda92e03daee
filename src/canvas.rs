//! The canvas scheduler: one scheduler step per timestep over the whole canvas latent, with the
//! noise prediction assembled window by window (Mixture of Diffusers, arXiv 2302.02412).
//!
//! Only one window's UNet activations are alive at a time; the canvas itself costs two f32
//! buffers (numerator and denominator of the blend) beside the latent.

use crate::model::unet::UNet;
use crate::noise::NoiseSource;
use crate::progress::{check_interrupt, Progress};
use crate::scheduler::Scheduler;
use crate::tiles::Rect;
use crate::Result;
use candle_core::{DType, IndexOp, Tensor};

/// Text conditioning of one window: embeddings `[uncond, cond]` (2,77,C) and guidance scale.
#[derive(Debug, Clone)]
pub struct Conditioning {
    pub embeddings: Tensor,
    pub guidance: f64,
}

/// One UNet evaluation per step: a latent crop, its conditioning and its blend weights.
#[derive(Debug, Clone)]
pub struct Window {
    /// Where the window sits, in latent cells.
    pub rect: Rect,
    pub cond: usize,
    /// (h, w) blend weights, in the dtype the reference computes them in (see `tiles::weights`).
    pub weights: Tensor,
}

/// The guided noise prediction for one latent crop, `eps_u + g (eps_c - eps_u)`.
/// With guidance <= 1 the unconditional branch is skipped, as diffusers does.
pub fn guided_eps(
    unet: &UNet,
    sched: &dyn Scheduler,
    latents: &Tensor,
    t: f64,
    cond: &Conditioning,
    dtype: DType,
) -> Result<Tensor> {
    if cond.guidance <= 1.0 {
        let x = sched.scale_model_input(latents, t)?.to_dtype(dtype)?;
        let emb = cond.embeddings.i(1..2)?.to_dtype(dtype)?;
        return Ok(unet.forward(&x, t, &emb)?.to_dtype(DType::F32)?);
    }
    let x = sched.scale_model_input(&Tensor::cat(&[latents, latents], 0)?, t)?;
    let out = unet
        .forward(&x.to_dtype(dtype)?, t, &cond.embeddings.to_dtype(dtype)?)?
        .to_dtype(DType::F32)?;
    let (u, c) = (out.i(0..1)?, out.i(1..2)?);
    Ok((&u + ((c - &u)? * cond.guidance)?)?)
}

/// Blend per-window predictions into a canvas prediction: `sum(e_k W_k) / sum(W_k)`, products in
/// the weights' dtype (f64 or f32, as the reference) accumulated into f32 buffers, 0/0 -> 0
/// where nothing covers.
pub struct Blend {
    numerator: Tensor,
    denominator: Tensor,
}

impl Blend {
    pub fn new(shape: &[usize]) -> Result<Self> {
        let z = Tensor::zeros(shape, DType::F32, &candle_core::Device::Cpu)?;
        Ok(Self {
            numerator: z.clone(),
            denominator: z,
        })
    }

    pub fn add(&mut self, rect: Rect, eps: &Tensor, weights: &Tensor) -> Result<()> {
        let w = weights.unsqueeze(0)?.unsqueeze(0)?;
        let weighted = eps
            .to_dtype(w.dtype())?
            .broadcast_mul(&w)?
            .to_dtype(DType::F32)?;
        let w = w.to_dtype(DType::F32)?.broadcast_as(eps.shape())?;
        let ranges = [
            0..eps.dim(0)?,
            0..eps.dim(1)?,
            rect.y..rect.y + rect.h,
            rect.x..rect.x + rect.w,
        ];
        let (b, c) = (eps.dim(0)?, eps.dim(1)?);
        let region = (0..b, 0..c, rect.y..rect.y + rect.h, rect.x..rect.x + rect.w);
        let n = (self.numerator.i(region.clone())? + weighted)?;
        let d = (self.denominator.i(region)? + w)?;
        self.numerator = self.numerator.slice_assign(&ranges, &n)?;
        self.denominator = self.denominator.slice_assign(&ranges, &d)?;
        Ok(())
    }

    pub fn finish(self) -> Result<Tensor> {
        let eps = (&self.numerator / &self.denominator)?;
        // nan_to_num: cells no window covers (0/0) become 0.
        let covered = self.denominator.gt(0f32)?;
        Ok(covered.where_cond(&eps, &self.numerator.zeros_like()?)?)
    }
}

/// Everything the loop needs besides the latent.
pub struct CanvasJob<'a> {
    pub unet: &'a UNet,
    pub dtype: DType,
    pub conds: &'a [Conditioning],
    pub windows: &'a [Window],
    pub progress: Progress,
}

/// Denoise `latents` (already noised for timestep index `start`) through the remaining
/// timesteps of `sched`. `after_step(i, t, sched, latents)` sees every step and may replace the
/// latents (image regions).
pub fn denoise(
    job: &CanvasJob,
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
    let single = job.windows.len() == 1 && job.windows[0].rect == whole;
    let bar = job
        .progress
        .bar((timesteps.len() * job.windows.len()) as u64, "denoise");
    for (k, &t) in timesteps.iter().enumerate() {
        let i = start + k;
        bar.set_message(format!("step {}/{}", k + 1, timesteps.len()));
        let eps = if single {
            // One window covering everything is plain txt2img: skip the blend so it is exact.
            check_interrupt()?;
            let eps = guided_eps(
                job.unet,
                sched,
                &latents,
                t,
                &job.conds[job.windows[0].cond],
                job.dtype,
            )?;
            bar.inc(1);
            eps
        } else {
            let mut blend = Blend::new(latents.dims())?;
            for win in job.windows {
                check_interrupt()?;
                let r = win.rect;
                let crop = latents
                    .i((.., .., r.y..r.y + r.h, r.x..r.x + r.w))?
                    .contiguous()?;
                let eps = guided_eps(job.unet, sched, &crop, t, &job.conds[win.cond], job.dtype)?;
                blend.add(r, &eps, &win.weights)?;
                bar.inc(1);
            }
            blend.finish()?
        };
        latents = sched.step(&eps, t, &latents, noise)?;
        latents = after_step(i, t, &*sched, latents)?;
    }
    bar.finish_and_clear();
    Ok(latents)
}
