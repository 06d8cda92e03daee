//! The windowed mixture (Mixture of Diffusers, arXiv 2302.02412): the canvas's noise
//! prediction assembled window by window, each window's guided prediction weighted by its
//! mask. Only one window's network activations are alive at a time; the canvas itself costs
//! two f32 buffers (numerator and denominator of the blend) beside the latent.

use candle_core::{DType, IndexOp, Result, Tensor};
use tessera_core::geometry::{self, Mask, Rect};

/// One network evaluation per step: a latent crop, its conditioning and its blend weights.
#[derive(Debug, Clone)]
pub struct Window {
    /// Where the window sits, in latent cells.
    pub rect: Rect,
    /// Index of its conditioning.
    pub cond: usize,
    /// (h, w) blend weights, in the dtype the reference computes them in (see [`weights`]).
    pub weights: Tensor,
}

impl Window {
    pub fn new(rect: Rect, cond: usize, mask: Mask, weight: f64) -> Result<Self> {
        Ok(Self {
            rect,
            cond,
            weights: weights(rect.h, rect.w, mask, weight)?,
        })
    }
}

/// Blend weights of an `h` x `w` window, in the dtype the reference `mixture_canvas.py` uses and
/// the blend then multiplies in: float64 (NumPy) for the Gaussian and quartic masks, float32
/// (`torch.ones * weight`) for the constant one.
pub fn weights(h: usize, w: usize, mask: Mask, weight: f64) -> Result<Tensor> {
    let host = tessera_nn::runtime::host();
    match mask {
        Mask::Constant => Tensor::full(weight as f32, (h, w), &host),
        _ => Tensor::from_vec(geometry::weights(h, w, mask, weight), (h, w), &host),
    }
}

/// Blend per-window predictions into a canvas prediction: `sum(e_k W_k) / sum(W_k)`, products in
/// the weights' dtype (f64 or f32, as the reference) accumulated into f32 buffers, 0/0 -> 0
/// where nothing covers.
pub struct Blend {
    numerator: Tensor,
    denominator: Tensor,
}

impl Blend {
    /// An empty blend over a latent like `like`.
    pub fn new(like: &Tensor) -> Result<Self> {
        let z = like.zeros_like()?.to_dtype(DType::F32)?;
        Ok(Self {
            numerator: z.clone(),
            denominator: z,
        })
    }

    pub fn add(&mut self, rect: Rect, eps: &Tensor, weights: &Tensor) -> Result<()> {
        let w = weights
            .to_device(eps.device())?
            .unsqueeze(0)?
            .unsqueeze(0)?;
        let weighted = eps
            .to_dtype(w.dtype())?
            .broadcast_mul(&w)?
            .to_dtype(DType::F32)?;
        let w = w.to_dtype(DType::F32)?.broadcast_as(eps.shape())?;
        let (b, c) = (eps.dim(0)?, eps.dim(1)?);
        let ranges = [0..b, 0..c, rect.y..rect.y + rect.h, rect.x..rect.x + rect.w];
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
        covered.where_cond(&eps, &self.numerator.zeros_like()?)
    }
}
