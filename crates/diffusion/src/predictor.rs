//! The noise predictor: what the mixture and the schedulers call, whatever the network behind
//! it (a UNet of one family or another, on one device or another).

use candle_core::{DType, Result, Tensor};
use tessera_nn::unet::UNet;

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

/// SD 1.x / 2.x: text conditioning only.
impl NoisePredictor for UNet {
    fn predict(
        &self,
        x: &Tensor,
        t: f64,
        context: &Tensor,
        _: Option<&Tensor>,
        _: &[Placement],
    ) -> Result<Tensor> {
        self.forward(x, t, context)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}
