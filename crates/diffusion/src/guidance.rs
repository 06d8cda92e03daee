//! Conditioning and classifier-free guidance.

use crate::predictor::{NoisePredictor, Placement};
use crate::scheduler::Scheduler;
use candle_core::{DType, IndexOp, Result, Tensor};

/// What a window is conditioned on: its prompt and negative prompt, encoded, and its guidance.
#[derive(Debug, Clone)]
pub struct Cond {
    /// Text embeddings `[uncond (negative), cond (prompt)]`, (2, tokens, C).
    pub context: Tensor,
    /// Pooled text embeddings `[uncond, cond]` (2, P), for model families that take them.
    pub pooled: Option<Tensor>,
    /// Classifier-free guidance scale; <= 1 skips the unconditional branch.
    pub guidance: f64,
}

impl Cond {
    /// The conditional half alone (batch 1), for guidance <= 1.
    fn conditional(&self) -> Result<(Tensor, Option<Tensor>)> {
        let pooled = self.pooled.as_ref().map(|p| p.i(1..2)).transpose()?;
        Ok((self.context.i(1..2)?, pooled))
    }
}

/// The guided noise prediction for one latent crop, `eps_u + g (eps_c - eps_u)`, in f32.
/// With guidance <= 1 the unconditional branch is skipped, as diffusers does.
pub fn guided_eps(
    predictor: &dyn NoisePredictor,
    sched: &dyn Scheduler,
    latents: &Tensor,
    t: f64,
    cond: &Cond,
    at: &Placement,
) -> Result<Tensor> {
    let dtype = predictor.dtype();
    if cond.guidance <= 1.0 {
        let x = sched.scale_model_input(latents, t)?.to_dtype(dtype)?;
        let (context, pooled) = cond.conditional()?;
        let out = predictor.predict(&x, t, &context.to_dtype(dtype)?, pooled.as_ref(), at)?;
        return out.to_dtype(DType::F32);
    }
    let x = sched.scale_model_input(&Tensor::cat(&[latents, latents], 0)?, t)?;
    let out = predictor
        .predict(
            &x.to_dtype(dtype)?,
            t,
            &cond.context.to_dtype(dtype)?,
            cond.pooled.as_ref(),
            at,
        )?
        .to_dtype(DType::F32)?;
    let (u, c) = (out.i(0..1)?, out.i(1..2)?);
    &u + ((c - &u)? * cond.guidance)?
}
