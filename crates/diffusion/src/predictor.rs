//! The noise predictor: what the mixture and the schedulers call, whatever the network behind
//! it (a UNet of one family or another, on one device or another).

use candle_core::{DType, Result, Tensor};
use tessera_nn::unet::{AddedCond, UNet};

/// Where a window sits, in pixels: the size of the whole canvas, the window's offset in it and
/// its size. Model families with size and crop conditioning use it; others ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub canvas: (usize, usize),
    pub offset: (usize, usize),
    pub size: (usize, usize),
}

impl Placement {
    /// A window that is the whole picture.
    pub fn whole(size: (usize, usize)) -> Self {
        Self {
            canvas: size,
            offset: (0, 0),
            size,
        }
    }
}

pub trait NoisePredictor {
    /// The predicted noise for `x` (B, C, h, w) at timestep `t`, given text embeddings
    /// `context` (B, tokens, D) and, for families that take them, pooled embeddings (B, P),
    /// for windows placed at `at`: one placement per window, each window's samples
    /// (B / `at.len()` of them: unconditional and conditional) consecutive in the batch.
    fn predict(
        &self,
        x: &Tensor,
        t: f64,
        context: &Tensor,
        pooled: Option<&Tensor>,
        at: &[Placement],
    ) -> Result<Tensor>;

    /// The dtype inputs are given in.
    fn dtype(&self) -> DType;
}

impl Placement {
    /// SDXL's micro-conditioning `time_ids` for this placement: original size, crop offset and
    /// target size, each `(height, width)`-ordered as diffusers stores them.
    pub fn time_ids(&self) -> [f32; 6] {
        let (c, o, s) = (self.canvas, self.offset, self.size);
        [c.1, c.0, o.1, o.0, s.1, s.0].map(|v| v as f32)
    }
}

/// SD 1.x / 2.x: text conditioning only; SDXL (`text_time`): also the pooled embeddings and
/// the placement as size and crop conditioning.
impl NoisePredictor for UNet {
    fn predict(
        &self,
        x: &Tensor,
        t: f64,
        context: &Tensor,
        pooled: Option<&Tensor>,
        at: &[Placement],
    ) -> Result<Tensor> {
        if !self.takes_added_cond() {
            return self.forward(x, t, context);
        }
        let pooled = pooled.ok_or_else(|| {
            candle_core::Error::Msg("an SDXL UNet needs pooled text embeddings".into())
        })?;
        // Each window's samples (unconditional, conditional) share its placement.
        let b = x.dim(0)?;
        let per_window = b / at.len().max(1);
        let ids: Vec<f32> = at
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.time_ids(), per_window))
            .flatten()
            .collect();
        let ids = Tensor::from_vec(ids, (b, 6), x.device())?;
        let added = AddedCond {
            text_embeds: pooled,
            time_ids: &ids,
        };
        self.forward_added(x, t, context, Some(added))
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}
