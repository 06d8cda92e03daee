//! The timestep embedding: sinusoidal projection (computed in f32 as diffusers does) and MLP.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

/// diffusers' `get_timestep_embedding` for one timestep: (1, channels).
pub fn sinusoidal(
    t: f64,
    channels: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = channels / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - shift as f32);
            (t as f32) * exponent.exp()
        })
        .collect();
    let (sin, cos): (Vec<f32>, Vec<f32>) = freqs.iter().map(|f| (f.sin(), f.cos())).unzip();
    let data = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    Tensor::from_vec(data, (1, 2 * half), device)
}

pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, channels: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(channels, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.linear_1.weight().dtype())?;
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(&x)?)?)
    }
}
