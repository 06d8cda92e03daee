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
    /// Whether the unconditional branch runs (diffusers skips it for guidance <= 1).
    pub fn guided(&self) -> bool {
        self.guidance > 1.0
    }

    /// The embeddings the network sees for this cond: both halves, or the conditional alone.
    fn inputs(&self) -> Result<(Tensor, Option<Tensor>)> {
        match self.guided() {
            true => Ok((self.context.clone(), self.pooled.clone())),
            false => {
                let pooled = self.pooled.as_ref().map(|p| p.i(1..2)).transpose()?;
                Ok((self.context.i(1..2)?, pooled))
            }
        }
    }

    /// Whether windows under `self` and `other` can share one network evaluation.
    pub fn batches_with(&self, other: &Cond) -> bool {
        self.guided() == other.guided()
            && self.context.dims() == other.context.dims()
            && self.pooled.as_ref().map(|p| p.dims().to_vec())
                == other.pooled.as_ref().map(|p| p.dims().to_vec())
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
    let mut eps = guided_eps_group(
        predictor,
        sched,
        std::slice::from_ref(latents),
        t,
        &[cond],
        std::slice::from_ref(at),
    )?;
    Ok(eps.remove(0))
}

/// Guided predictions for several crops of one shape in one network evaluation (their batches
/// stacked: `[u1, c1, u2, c2, …]`), so each layer's weights are used once per group of
/// windows rather than once per window. The conds must batch together
/// ([`Cond::batches_with`]).
pub fn guided_eps_group(
    predictor: &dyn NoisePredictor,
    sched: &dyn Scheduler,
    crops: &[Tensor],
    t: f64,
    conds: &[&Cond],
    at: &[Placement],
) -> Result<Vec<Tensor>> {
    let dtype = predictor.dtype();
    let guided = conds[0].guided();
    let copies = if guided { 2 } else { 1 };
    let mut xs = Vec::with_capacity(crops.len() * copies);
    let (mut contexts, mut pooled) = (Vec::new(), Vec::new());
    for (crop, cond) in crops.iter().zip(conds) {
        for _ in 0..copies {
            xs.push(crop.clone());
        }
        let (context, p) = cond.inputs()?;
        contexts.push(context.to_dtype(dtype)?);
        pooled.extend(p);
    }
    let x = sched.scale_model_input(&Tensor::cat(&xs, 0)?, t)?;
    let pooled = match pooled.is_empty() {
        true => None,
        false => Some(Tensor::cat(&pooled, 0)?),
    };
    let out = predictor
        .predict(
            &x.to_dtype(dtype)?,
            t,
            &Tensor::cat(&contexts, 0)?,
            pooled.as_ref(),
            at,
        )?
        .to_dtype(DType::F32)?;
    (0..crops.len())
        .map(|k| match guided {
            false => out.i(k..k + 1),
            true => {
                let (u, c) = (out.i(2 * k..2 * k + 1)?, out.i(2 * k + 1..2 * k + 2)?);
                &u + ((c - &u)? * conds[k].guidance)?
            }
        })
        .collect()
}
