//! GroupNorm computed in f32 whatever the weights' dtype (f16 variance overflows).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let (b, c, h, w) = x.dims4()?;
        let xg = x
            .to_dtype(DType::F32)?
            .reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = xg.mean_keepdim(2)?;
        let centred = xg.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape((b, c, h, w))?;
        let shape = (1, c, 1, 1);
        let wt = self.weight.to_dtype(DType::F32)?.reshape(shape)?;
        let bs = self.bias.to_dtype(DType::F32)?.reshape(shape)?;
        normed
            .broadcast_mul(&wt)?
            .broadcast_add(&bs)?
            .to_dtype(dtype)
    }
}
